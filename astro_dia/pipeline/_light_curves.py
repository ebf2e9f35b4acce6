"""
Light curves of a series (private): the sources, their PSF and reference fluxes.

``reference_sources`` (of `astro_dia.photometry`) lists the reference's
stars, `series_psf` builds the effective
PSF of the reference from its bright isolated stars
(`~astro_dia.photometry.build_reference_psf`), `reference_fluxes` measures
the sources on the reference with it, and `variability` sums each light
curve up: its weighted mean and the chi^2 per degree of freedom about it.
"""

import warnings

import numpy as np
from astropy.nddata import StdDevUncertainty
from astropy.stats import sigma_clipped_stats
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning

from ..photometry import build_reference_psf, gaussian_psf

__all__ = []

#: Stars used for the ePSF: the brightest isolated unsaturated ones, at most.
N_PSF_STARS = 40
#: Fewest stars for an ePSF; with fewer a Gaussian of the measured FWHM is used.
MIN_PSF_STARS = 8


def series_psf(reference, sources, fwhm):
    """
    The reference's effective PSF, or a Gaussian when too few stars allow none.

    Returns
    -------
    psf : `astropy.modeling.Model`
    kind : str
        ``'epsf'`` or ``'gaussian'``.
    """
    good = sources[np.asarray(sources["isolated"]) & ~np.asarray(sources["saturated"])]
    size = int(2 * np.ceil(2.5 * fwhm) + 1)
    if len(good) >= MIN_PSF_STARS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyUserWarning)   # builder convergence
                return build_reference_psf(reference, good[:N_PSF_STARS], size=size), "epsf"
        except ValueError:
            pass
    return gaussian_psf(fwhm), "gaussian"


def reference_fluxes(reference, x, y, psf, fwhm):
    """
    PSF fluxes of the sources on the reference (photutils, fixed positions).

    The sky is the sigma-clipped median of the reference; the error comes
    from the reference's uncertainty, or the sky's scatter without one.

    Returns
    -------
    flux, flux_err : ndarray
        In the reference's unit (values).
    """
    from photutils.psf import PSFPhotometry

    data = np.asarray(reference.data, float)
    bad = ~np.isfinite(data)
    if reference.mask is not None:
        bad |= np.asarray(reference.mask, bool)
    _, median, std = sigma_clipped_stats(data, mask=bad, maxiters=5)
    if reference.uncertainty is not None:
        error = np.asarray(reference.uncertainty.represent_as(StdDevUncertainty).array, float)
    else:
        error = np.full(data.shape, std)     # the sky's scatter alone
    bad |= ~(error > 0)
    size = int(2 * np.ceil(1.5 * fwhm) + 1)
    model = psf.copy()
    model.x_0.fixed = model.y_0.fixed = True
    init = QTable({"x": np.asarray(x, float), "y": np.asarray(y, float)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        photometry = PSFPhotometry(model, (size, size), aperture_radius=1.5 * fwhm)
        table = photometry(np.where(bad, 0.0, data - median), mask=bad,
                           error=np.where(bad, 1.0, error), init_params=init)
    return (np.asarray(table["flux_fit"], float), np.asarray(table["flux_err"], float))


def variability(light_curves, ids):
    """
    Weighted mean and chi^2 per degree of freedom of each light curve.

    Parameters
    ----------
    light_curves : `~astropy.table.QTable`
        With ``id``, ``flux``, ``flux_err`` and ``flags`` (rows with flags
        are left out).
    ids : array_like
        The sources to sum up.

    Returns
    -------
    summary : `~astropy.table.QTable`
        ``id``, ``n_good`` (epochs used), ``mean_flux`` (weighted),
        ``chi2_dof`` (about the weighted mean; NaN below two epochs),
        ``chi2_robust`` (the same without the epoch farthest from the mean;
        NaN below three) and ``amplitude`` (range of the good fluxes).
    """
    source = np.asarray(light_curves["id"])
    flux = np.asarray(getattr(light_curves["flux"], "value", light_curves["flux"]), float)
    err = np.asarray(getattr(light_curves["flux_err"], "value", light_curves["flux_err"]),
                     float)
    good = (np.asarray(light_curves["flags"]) == 0) & np.isfinite(flux) & (err > 0)
    rows = []
    for i in ids:
        use = good & (source == i)
        n = int(use.sum())
        if n == 0:
            rows.append((i, 0, np.nan, np.nan, np.nan, np.nan))
            continue
        chi2, mean = _chi2_dof(flux[use], err[use])
        if n > 2:
            # without the epoch farthest from the mean (in sigma)
            worst = np.argmax(np.abs(flux[use] - mean) / err[use])
            keep = np.arange(n) != worst
            robust = _chi2_dof(flux[use][keep], err[use][keep])[0]
        else:
            robust = np.nan
        rows.append((i, n, mean, chi2, robust, float(np.ptp(flux[use]))))
    return QTable(rows=rows, names=("id", "n_good", "mean_flux", "chi2_dof", "chi2_robust",
                                    "amplitude"))


def _chi2_dof(flux, err):
    """chi^2 per degree of freedom about the weighted mean (NaN below two points), and the mean."""
    weight = 1.0 / err ** 2
    mean = float(np.sum(weight * flux) / np.sum(weight))
    if len(flux) < 2:
        return np.nan, mean
    return float(np.sum(weight * (flux - mean) ** 2) / (len(flux) - 1)), mean
