"""Exceptions and warnings raised by astro_dia."""

from astropy.utils.exceptions import AstropyUserWarning

__all__ = ["DIAError", "KernelFitWarning", "ConvergenceWarning", "NoiseModelWarning",
           "FitQualityWarning", "SaturationWarning"]


class DIAError(ValueError):
    """Base class for astro_dia errors about data that cannot be differenced."""


class KernelFitWarning(AstropyUserWarning):
    """The kernel fit finished, but its result needs a careful look."""


class ConvergenceWarning(KernelFitWarning):
    """The solver stopped at its iteration limit before meeting its tolerance."""


class NoiseModelWarning(AstropyUserWarning):
    """The noise model had to estimate something the header did not say."""


class FitQualityWarning(KernelFitWarning):
    """The normalised residuals of the fit do not scatter as the noise model predicts."""


class SaturationWarning(AstropyUserWarning):
    """An image looks saturated, but no saturation level was given or found in its header.

    Its maximum is shared by a plateau of pixels (flat-topped star cores),
    which the fit would treat as linear. Pass ``saturation=`` to
    `~astro_dia.DifferenceImager`, or add a SATURATE keyword to the header.
    """
