"""
Background matching and the clipped, weighted combination of registered frames (private).

Background matching puts every frame on the photometric scale and sky of
the best frame, ``frame -> scale * frame + offset``:

- ``scale`` is the median ratio of aperture fluxes (local sky from an
  annulus) of bright isolated stars, best frame over this one;
- ``offset`` the sigma-clipped median of ``best - scale * frame`` over the
  pixels good in both.

The combination is a weighted mean with one weight per frame,
``1 / (scale**2 * sky_sigma**2)`` (the inverse of its sky variance after
matching), not per pixel: per-pixel inverse variances from a Poisson model
would favour frames whose stars fluctuate low and bias the stars' fluxes.
Before it, each value is compared with the median of the pixel's stack and
rejected beyond ``sigma`` times ``sqrt(variance + (1.4826 MAD)**2)`` (its
own noise and the stack's scatter, which grows at star cores where the
frames' PSFs differ), after whole rows and columns that stand out from
the stack (`line_defects`) are masked in their frame; with fewer than
three frames nothing can be rejected. The variance of the mean is
``sum w**2 v / (sum w)**2`` over the values kept: propagated from the
inputs' variances, not from the scatter.
"""

import warnings

import numpy as np
from astropy.stats import SigmaClip, sigma_clipped_stats
from astropy.utils.exceptions import AstropyUserWarning

__all__ = []

#: Bright isolated stars whose flux ratio sets a frame's scale.
SCALE_STARS = 50


def flux_scale(best, frame, xy, radius):
    """Median flux ratio best / frame of the stars at ``xy`` (NaN when none is usable)."""
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture

    def fluxes(data, mask):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            sky = ApertureStats(data, CircularAnnulus(xy, 2 * radius, 3 * radius), mask=mask,
                                sigma_clip=SigmaClip(3.0)).median
            stats = ApertureStats(data, CircularAperture(xy, radius), mask=mask)
            bad = ApertureStats(mask.astype(float), CircularAperture(xy, radius)).max
        flux = stats.sum - sky * stats.sum_aper_area.value
        return np.where(bad > 0, np.nan, flux)

    ratio = fluxes(*best) / fluxes(*frame)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if len(ratio) == 0:
        return float("nan")
    return float(sigma_clipped_stats(ratio, sigma=3.0)[1])


def sky_offset(best, frame, scale):
    """Sigma-clipped median of ``best - scale * frame`` over pixels good in both."""
    (bd, bm), (fd, fm) = best, frame
    good = ~(bm | fm)
    if not np.any(good):
        return float("nan")
    return float(sigma_clipped_stats(bd[good] - scale * fd[good], sigma=3.0, maxiters=10)[1])


def line_defects(data, mask, centre, sigma):
    """
    Bad rows and columns of each frame, as a mask of the stack's shape.

    A bad column of one frame is not always rejected pixel by pixel: at a
    bright star's core the stack's scatter (from the frames' different
    PSFs) can exceed it. Along a whole column, though, it stands out: the
    median over the column of ``frame - centre`` is far from those of the
    other columns (a star adds to a few pixels of a column, not to its
    median). Columns (rows) whose median departs from the median of all
    by more than ``max(sigma, 5)`` robust standard deviations of those
    medians are masked in that frame.
    """
    bad = np.zeros(data.shape, bool)
    limit = max(float(sigma), 5.0)
    residual = np.where(mask, np.nan, data - centre)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN lines
        for k in range(data.shape[0]):
            for axis in (0, 1):   # 0: medians of columns, 1: of rows
                line = np.nanmedian(residual[k], axis=axis)
                good = np.isfinite(line)
                if good.sum() < 5:
                    continue
                level = np.median(line[good])
                spread = 1.4826 * np.median(np.abs(line[good] - level))
                flagged = good & (np.abs(line - level) > limit * max(spread, 1e-30))
                if axis == 0:
                    bad[k][:, flagged] = True
                else:
                    bad[k][flagged, :] = True
    return bad


def clipped_mean(data, variance, mask, weights, sigma):
    """
    Weighted mean of a stack with outliers rejected.

    Parameters
    ----------
    data : (n, ny, nx) array
    variance : (n, ny, nx) array or None
    mask : (n, ny, nx) bool array
        True where a value is bad (not used).
    weights : (n,) array
    sigma : float or None
        Rejection threshold; None rejects nothing.

    Returns
    -------
    mean, variance_of_mean : (ny, nx) arrays (NaN where no value is kept;
        the variance None when ``variance`` is)
    n_used : (ny, nx) int array
    n_rejected : (ny, nx) int array
    """
    values = np.where(mask, np.nan, data)
    keep = ~mask
    n = data.shape[0]
    if sigma is not None and n >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN stacks
            centre = np.nanmedian(values, axis=0)
            keep &= ~line_defects(data, mask, centre, sigma)
            values = np.where(keep, data, np.nan)
            centre = np.nanmedian(values, axis=0)
            mad = 1.4826 * np.nanmedian(np.abs(values - centre), axis=0)
        noise2 = mad ** 2 + (variance if variance is not None else 0.0)
        outlier = keep & (np.abs(data - centre) > sigma * np.sqrt(noise2))
        keep &= ~outlier
    w = weights[:, None, None] * keep
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.sum(w * np.where(keep, data, 0.0), axis=0) / total
        var = (None if variance is None
               else np.sum(w ** 2 * np.where(keep, variance, 0.0), axis=0) / total ** 2)
    empty = total == 0
    mean[empty] = np.nan
    if var is not None:
        var[empty] = np.nan
    return mean, var, keep.sum(axis=0), (~mask).sum(axis=0) - keep.sum(axis=0)
