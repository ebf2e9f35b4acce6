"""
Yardsticks of a fit: the metrics of paper section 3.2 and an independent P.

Owns the fit-quality and photometric metrics of the validation experiments
(``_fit_quality``) and `flux_ratio`, the scale factor from aperture
photometry of stars, independent of any kernel fit (``_flux_ratio``).
"""

from ._fit_quality import (FluxRatio, flux_ratio, mean_fit_bias, mean_fit_variance,
                           mean_photometric_bias, mean_photometric_variance,
                           mean_squared_error, minimum_flux_variance, signal_to_noise)

__all__ = ["signal_to_noise", "mean_squared_error", "mean_fit_bias", "mean_fit_variance",
           "minimum_flux_variance", "mean_photometric_bias", "mean_photometric_variance",
           "flux_ratio", "FluxRatio"]
