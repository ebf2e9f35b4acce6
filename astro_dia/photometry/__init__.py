"""
Photometry on difference images, and light curves.

Differential fluxes are measured on ``result.difference`` (a `~astro_dia.DifferenceResult`)
at given positions, by fitting the target PSF (the reference PSF convolved
with the fitted kernel and normalised, paper section 3.2): at fixed
positions by linear least squares (blends jointly), at free positions with
photutils `~photutils.psf.PSFPhotometry`; or by aperture sums. Dividing by the
photometric scale factor P puts them on the reference's scale.
`light_curve` differences a series of targets against one reference and
measures the same positions in each.
"""

from .aperture import aperture_photometry_difference
from .flags import PHOTOMETRY_FLAGS, decode_flags
from .lightcurve import light_curve, observation_time
from .measure import differential_photometry
from ._psf_stars import find_psf_stars
from .psf import build_reference_psf, gaussian_psf, moffat_psf, render_psf, target_psf

__all__ = ["gaussian_psf", "moffat_psf", "build_reference_psf", "find_psf_stars",
           "render_psf", "target_psf", "differential_photometry", "aperture_photometry_difference", "light_curve",
           "observation_time", "PHOTOMETRY_FLAGS", "decode_flags"]
