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
from astropy.stats import mad_std, sigma_clipped_stats
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning

from ..photometry import build_reference_psf, gaussian_psf
from ..photometry._linear import fit_fixed_positions
from ..photometry._psf_stars import epsf_size

__all__ = []

#: Stars used for the ePSF: the brightest isolated unsaturated ones, at most.
N_PSF_STARS = 40
#: Fewest constant stars measured at an epoch to recalibrate its scale.
MIN_CALIBRATORS = 5
#: Fewest stars for an ePSF; with fewer a Gaussian of the measured FWHM is used.
MIN_PSF_STARS = 8
#: The ePSF is kept when the PSF fluxes of the stars it was built from agree
#: with their aperture fluxes: median ratio within this of 1 ...
EPSF_MEDIAN_TOLERANCE = 0.1
#: ... and robust scatter of the ratio below this. An ePSF of a few dozen
#: stars can come out checkerboarded (measured on a 180 x 180 simulated
#: series: its own stars' ratios spread over 0.4-2.7, once a median of
#: 0.26); on the stacked pyDIA bulge reference, where faint neighbours fall
#: in the apertures, the ePSF gave 0.999 with a scatter of 0.10 (a Gaussian
#: 0.845 and 0.12).
EPSF_SCATTER_TOLERANCE = 0.25


def reference_sky(reference):
    """
    The reference's bad pixels and sky: its sigma-clipped median and standard deviation.

    Computed once for `series_psf`, `psf_flux_agreement` and
    `reference_fluxes` (and the ePSF builder), which subtract the same sky.

    Returns
    -------
    bad : (M, N) bool ndarray
        Non-finite or masked pixels.
    median, std : float
    """
    data = np.asarray(reference.data, float)
    bad = ~np.isfinite(data)
    if reference.mask is not None:
        bad |= np.asarray(reference.mask, bool)
    _, median, std = sigma_clipped_stats(data, mask=bad, maxiters=5)
    return bad, float(median), float(std)


def series_psf(reference, sources, fwhm, sky=None):
    """
    The reference's effective PSF, or a Gaussian when too few stars allow none.

    An ePSF that does not measure its own stars' fluxes as apertures do
    (`psf_flux_agreement`: median ratio off by more than
    `EPSF_MEDIAN_TOLERANCE` or scatter above `EPSF_SCATTER_TOLERANCE`) is
    replaced by the Gaussian too.

    ``sky`` is `reference_sky` (computed here without it).

    Returns
    -------
    psf : `astropy.modeling.Model`
    kind : str
        ``'epsf'`` or ``'gaussian'``.
    """
    sky = reference_sky(reference) if sky is None else sky
    good = sources[np.asarray(sources["isolated"]) & ~np.asarray(sources["saturated"])]
    size = epsf_size(fwhm)
    if len(good) >= MIN_PSF_STARS:
        stars = good[:N_PSF_STARS]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyUserWarning)   # builder convergence
                epsf = build_reference_psf(reference, stars, size=size, background=sky[1])
        except ValueError:
            epsf = None
        if epsf is not None:
            median, scatter = psf_flux_agreement(reference, stars, epsf, fwhm, sky=sky)
            if abs(median - 1) <= EPSF_MEDIAN_TOLERANCE and scatter <= EPSF_SCATTER_TOLERANCE:
                return epsf, "epsf"
    return gaussian_psf(fwhm), "gaussian"


def psf_flux_agreement(reference, stars, psf, fwhm, *, n_stars=20, sky=None):
    """
    How well ``psf`` measures the stars it was built from: PSF over aperture flux.

    The ``n_stars`` first (brightest) of ``stars``, in apertures of 3 FWHM
    (photutils) and by PSF photometry as `reference_fluxes` measures them,
    both less the same sky, the sigma-clipped median of the reference
    (``sky``: `reference_sky`, computed here without it).

    Returns
    -------
    median, scatter : float
        The median ratio and its robust (MAD) standard deviation; NaN when
        no star has a positive aperture flux.
    """
    from photutils.aperture import CircularAperture, aperture_photometry

    stars = stars[:int(n_stars)]
    x, y = np.asarray(stars["x"], float), np.asarray(stars["y"], float)
    data = np.asarray(reference.data, float)
    sky = reference_sky(reference) if sky is None else sky
    bad, median = sky[0], sky[1]
    aperture = CircularAperture(np.column_stack([x, y]), 3 * fwhm)
    total = np.asarray(aperture_photometry(np.where(bad, median, data), aperture)[
        "aperture_sum"], float)
    aperture_flux = total - median * aperture.area
    psf_flux, _ = reference_fluxes(reference, x, y, psf, fwhm, sky=sky)
    ok = np.isfinite(psf_flux) & (aperture_flux > 0)
    if not ok.any():
        return float("nan"), float("nan")
    ratio = psf_flux[ok] / aperture_flux[ok]
    return float(np.median(ratio)), float(mad_std(ratio))


def reference_fluxes(reference, x, y, psf, fwhm, sky=None):
    """
    PSF fluxes of the sources on the reference (fixed positions, each source on its own).

    The sky is the sigma-clipped median of the reference (``sky``:
    `reference_sky`, computed here without it); the error comes from the
    reference's uncertainty, or the sky's scatter without one. Each source
    is fitted in a box of ``2 ceil(1.5 fwhm) + 1`` pixels, its neighbours
    left out of its model: the weighted linear least-squares flux
    (``astro_dia.photometry._linear``, ``jointly=False``) that photutils'
    `~photutils.psf.PSFPhotometry` reaches iteratively (within 1e-3 of the
    error), in a fraction of its time.

    Returns
    -------
    flux, flux_err : ndarray
        In the reference's unit (values).
    """
    data = np.asarray(reference.data, float)
    bad, median, std = reference_sky(reference) if sky is None else sky
    if reference.uncertainty is not None:
        error = np.asarray(reference.uncertainty.represent_as(StdDevUncertainty).array, float)
    else:
        error = np.full(data.shape, std)     # the sky's scatter alone
    bad = bad | ~(error > 0)
    size = int(2 * np.ceil(1.5 * fwhm) + 1)
    x, y = np.asarray(x, float), np.asarray(y, float)
    flux, flux_err = np.full(len(x), np.nan), np.full(len(x), np.nan)
    ny, nx = data.shape
    half = size // 2
    # A box with a pixel on the image (PSFPhotometry measures no other).
    near = (np.isfinite(x) & np.isfinite(y) & (np.ceil(x - 0.5) >= -half)
            & (np.ceil(x - 0.5) < nx + half) & (np.ceil(y - 0.5) >= -half)
            & (np.ceil(y - 0.5) < ny + half))
    if near.any():
        fitted = fit_fixed_positions(psf, np.where(bad, 0.0, data - median),
                                     np.where(bad, 1.0, error), bad, x[near], y[near],
                                     (size, size), jointly=False)
        flux[near], flux_err[near] = fitted["flux"], fitted["flux_err"]
    return flux, flux_err


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


def _calibrator_rows(light_curves, calibrators, column):
    """
    ``id``, ``epoch``, ``flux`` and ``column`` as arrays, and the rows to use.

    The rows of the calibrator stars that are unflagged, with a finite flux
    and a positive ``column``.
    """
    ids = np.asarray(light_curves["id"])
    epoch = np.asarray(light_curves["epoch"], int)
    flux = np.asarray(light_curves["flux"], float)
    other = np.asarray(light_curves[column], float)
    use = (np.isin(ids, calibrators) & (np.asarray(light_curves["flags"]) == 0)
           & np.isfinite(flux) & (other > 0))
    return ids, epoch, flux, other, use


def ensemble_scale(light_curves, calibrators, n_epochs):
    """
    Each epoch's photometric scale error, measured on the reference's constant stars.

    A fit's P, the kernel's sum, can differ from the flux ratio of the
    frame's stars by about a per cent (see :ref:`real_frames`): every star
    of that epoch then shows ``c F`` of differential flux, ``F`` its
    reference flux. The stars in ``calibrators`` (unsaturated reference
    stars, assumed constant in the main) give ``c`` per epoch: the median
    over them of ``(f - median_epochs(f)) / F``, its error from their
    scatter (1.2533 MAD / sqrt(n)). The median over the epochs of ``c`` is
    0 by construction: the fits are trusted on average.

    Parameters
    ----------
    light_curves : `~astropy.table.QTable`
        With ``id``, ``epoch``, ``flux``, ``flags``, ``reference_flux``.
    calibrators : array_like
        The ids of the stars to use.
    n_epochs : int

    Returns
    -------
    scale, scale_err : (n_epochs,) ndarray
        ``c`` and its error per epoch (0 and NaN without five calibrators).
    """
    ids, epoch, flux, reference, use = _calibrator_rows(light_curves, calibrators,
                                                        "reference_flux")
    fractions = _per_epoch(ids, epoch, use, n_epochs,
                           lambda rows: (flux[rows] - np.median(flux[rows])) / reference[rows])
    scale = np.zeros(n_epochs)
    scale_err = np.full(n_epochs, np.nan)
    for e, values in enumerate(fractions):
        if len(values) >= MIN_CALIBRATORS:
            values = np.asarray(values)
            scale[e] = np.median(values)
            scale_err[e] = 1.2533 * 1.4826 * np.median(np.abs(values - scale[e])) / np.sqrt(
                len(values))
    measured = np.isfinite(scale_err)
    if measured.any():
        scale[measured] -= np.median(scale[measured])
    return scale, scale_err


def apply_ensemble_scale(light_curves, scale, scale_err):
    """
    Correct the differential fluxes in place for each epoch's scale error.

    ``f = (f_measured - c F) / (1 + c)``, with ``F`` the source's reference
    flux; the error adds ``F sigma_c`` in quadrature. Epochs without a
    measured ``c`` are left as they are.
    """
    epoch = np.asarray(light_curves["epoch"], int)
    c = scale[epoch]
    c_err = np.nan_to_num(scale_err[epoch])
    reference = np.nan_to_num(np.asarray(light_curves["reference_flux"], float))
    flux = np.asarray(light_curves["flux"], float)
    err = np.asarray(light_curves["flux_err"], float)
    light_curves["flux"] = (flux - c * reference) / (1 + c)
    light_curves["flux_err"] = np.hypot(err, reference * c_err) / (1 + c)
    light_curves["ensemble_scale"] = c
    return light_curves


def ensemble_error_scale(light_curves, calibrators, n_epochs):
    """
    Each epoch's factor on the photometric errors, measured on the constant stars.

    Next to stars the difference image holds more than its noise (a kernel
    that matches the cores imperfectly, neighbours' residuals in a crowded
    field), which the pixel uncertainties do not carry. For each epoch the
    residuals of the ``calibrators`` about their weighted means, in units
    of their errors, have a robust standard deviation (MAD); that, and
    never less than 1, is the epoch's factor.

    Returns
    -------
    factor : (n_epochs,) ndarray
        1 where fewer than ``MIN_CALIBRATORS`` stars were measured.
    """
    ids, epoch, flux, err, use = _calibrator_rows(light_curves, calibrators, "flux_err")
    residuals = _per_epoch(
        ids, epoch, use, n_epochs,
        lambda rows: (flux[rows] - _chi2_dof(flux[rows], err[rows])[1]) / err[rows])
    factor = np.ones(n_epochs)
    for e, values in enumerate(residuals):
        if len(values) >= MIN_CALIBRATORS:
            factor[e] = max(1.0, float(mad_std(values)))
    return factor


def _per_epoch(ids, epoch, use, n_epochs, measure):
    """
    ``measure(rows)`` of each star with three or more usable epochs, gathered by epoch.

    Returns a list (one per epoch) of the values of all stars at that epoch.
    """
    gathered = [[] for _ in range(n_epochs)]
    for star in np.unique(ids[use]):
        rows = use & (ids == star)
        if rows.sum() < 3:
            continue
        for e, value in zip(epoch[rows], measure(rows)):
            gathered[e].append(value)
    return gathered


#: Light curves clean at fewer than this share of the epochs are ``mostly_masked``.
MIN_CLEAN_SHARE = 0.5


def rank_variability(summary, n_epochs):
    """
    The `variability` summary, most variable first.

    By ``chi2_robust`` (one cosmic ray does not make a variable); after
    them the ``mostly_masked`` light curves (clean at fewer than
    `MIN_CLEAN_SHARE` of the ``n_epochs``: what is left of them is what the
    masks of defects and smears missed; on the pyDIA night a star 10 px from
    a saturated star's smear kept 8 clean epochs of 101 and ranked fourth),
    and last those ``near_saturated`` (the column must be there). Adds the
    ``mostly_masked`` column; returns a new table.
    """
    chi2 = np.asarray(summary["chi2_robust"], float)
    rank = np.where(np.isfinite(chi2), chi2, -np.inf)
    summary = summary.copy()
    summary["mostly_masked"] = np.asarray(summary["n_good"]) < MIN_CLEAN_SHARE * n_epochs
    order = np.lexsort((-rank, np.asarray(summary["mostly_masked"]),
                        np.asarray(summary["near_saturated"])))
    return summary[order]
