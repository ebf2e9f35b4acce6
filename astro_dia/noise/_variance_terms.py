"""
The resolved noise model of one image and the refit of a subtracted sky.

This module owns `VarianceTerms`, a noise model resolved to numbers in the
data unit (the affine variance of `astro_dia.noise` with its floor, masked
pixels and provenance settings), and `refine_sky`, the re-estimate of a
subtracted sky level from a fit's residuals. Both are public through
`astro_dia.noise`, which defines the models that produce and refine them.
The variance formula itself is `astro_dia.model._model.variance_at`, the one the
fit uses.
"""

from dataclasses import dataclass, field

import numpy as np

from ..model._model import variance_at

__all__ = ["VarianceTerms", "refine_sky"]


@dataclass
class VarianceTerms:
    """
    The noise model of one image, resolved to numbers in its data unit.

    The variance of a pixel with model value ``M`` is
    ``max(constant + slope * max(M + offset, 0), minimum)``.

    Parameters
    ----------
    constant : float or (M, N) ndarray
        Constant variance term (read noise), in the data unit squared.
    slope : float or (M, N) ndarray
        Photon-noise slope, in the data unit.
    offset : float
        Sky level added back to the model before the photon term (the data
        unit); zero unless the data were sky-subtracted.
    minimum : float or (M, N) ndarray
        Floor of the variance, so that weights stay finite.
    bad : (M, N) bool ndarray or None
        Pixels the model cannot describe (e.g. a flat of zero), to be masked.
    estimate_scale : bool
        If true the variance is known only up to a constant factor, which is
        estimated from the residuals after the fit (the uniform model).
    settings : dict
        The resolved scalar settings, with where each came from, for the
        provenance keywords.
    """

    constant: object = 0.0
    slope: object = 0.0
    offset: float = 0.0
    minimum: object = 0.0
    bad: object = None
    estimate_scale: bool = False
    settings: dict = field(default_factory=dict)

    def variance(self, model):
        """
        Evaluate the variance at ``model``.

        Parameters
        ----------
        model : ndarray
            Model image in the data unit, broadcastable with the terms.

        Returns
        -------
        variance : ndarray
        """
        return variance_at(np.asarray(model, dtype=float), self.constant, self.slope,
                           self.minimum, self.offset)

    def cropped(self, region):
        """Return the terms restricted to ``region`` (a tuple of slices)."""

        def crop(value):
            return value[region] if np.ndim(value) == 2 else value

        return VarianceTerms(constant=crop(self.constant), slope=crop(self.slope),
                             offset=self.offset, minimum=crop(self.minimum),
                             bad=None if self.bad is None else self.bad[region],
                             estimate_scale=self.estimate_scale,
                             settings=dict(self.settings))


def refine_sky(terms, model, residual, mask):
    """
    Re-estimate a subtracted sky level from the residuals of a fit.

    Solves ``sum(D**2) = sum(constant + slope * (M + S))`` for ``S`` over
    the fitted pixels whose residual is within five sigma.

    Parameters
    ----------
    terms : `VarianceTerms`
        Terms (on the same pixels as ``model``) whose ``offset`` is the
        current estimate.
    model, residual : ndarray
        Model and ``target - model``.
    mask : bool ndarray
        The fitted pixels.

    Returns
    -------
    sky : float
    """
    variance = terms.variance(model)
    keep = mask & (np.abs(residual) < 5 * np.sqrt(variance))
    constant = np.broadcast_to(terms.constant, model.shape)[keep]
    slope = np.broadcast_to(terms.slope, model.shape)[keep]
    excess = residual[keep] ** 2 - constant - slope * model[keep]
    return max(float(np.sum(excess) / np.sum(slope)), 0.0)
