"""
Rows and columns of a difference image that hold a line defect (private).

A charge smear or bleed along the readout direction from a saturated star,
a bad row or column of one frame: the difference then has a band of one
sign across the image, on which a PSF fit finds a "source" wherever it
looks. `line_defects` finds the rows and columns whose median of ``D / sigma``
over their valid pixels is far from 0, and `mask_line_defects` masks them
(flag MASKED) in a fit read back for detection and photometry, so that the
sources on them are flagged at that epoch instead of varying.
"""

import warnings

import numpy as np

from ..flags import MASKED

__all__ = []

#: Least |median of D / sigma| of a defective row or column ...
LINE_MEDIAN = 0.3
#: ... and least significance of that median (its error: 1.2533 / sqrt(n)).
LINE_SIGMA = 8.0
#: Fewest valid pixels of a row or column that is judged.
MIN_LINE_PIXELS = 50


def _bad_lines(z, valid, axis):
    """Indices along the other axis whose median z departs from 0.

    ``z`` is NaN where not ``valid``. The median of a line exceeds a bound
    only if at least half of its values do (for an even count, half may
    leave the mean of the two middle values on either side), so the
    medians are computed only for the lines where at least half the values
    lie beyond the line's bound on one side: the same lines, without a
    median of every row and column.
    """
    count = valid.sum(axis=axis)
    error = 1.2533 / np.sqrt(np.maximum(count, 1))
    bound = np.expand_dims(np.maximum(LINE_MEDIAN, LINE_SIGMA * error), axis)
    with np.errstate(invalid="ignore"):
        above = (z > bound).sum(axis=axis)
        below = (z < -bound).sum(axis=axis)
    half = count // 2
    possible = np.flatnonzero((count >= MIN_LINE_PIXELS)
                              & ((above >= half) | (below >= half)))
    if not possible.size:
        return possible
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # lines with no valid pixel
        median = np.nanmedian(np.take(z, possible, axis=1 - axis), axis=axis)
    keep = (np.isfinite(median) & (np.abs(median) > LINE_MEDIAN)
            & (np.abs(median) > LINE_SIGMA * error[possible]))
    return possible[keep]


def line_defects(difference):
    """
    The defective rows and columns of a difference image.

    Parameters
    ----------
    difference : `~astropy.nddata.CCDData`
        With an uncertainty (standard deviation) and a mask.

    Returns
    -------
    rows, columns : ndarray of int
    """
    data = np.asarray(difference.data, float)
    sigma = np.asarray(difference.uncertainty.array, float)
    valid = np.isfinite(data) & (sigma > 0)
    if difference.mask is not None:
        valid &= ~np.asarray(difference.mask, bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(valid, data / np.where(valid, sigma, 1.0), np.nan)
    return _bad_lines(z, valid, 1), _bad_lines(z, valid, 0)


def mask_line_defects(result, lines=None):
    """
    Mask the line defects of a fit's difference image in place.

    Parameters
    ----------
    result : `~astro_dia.DifferenceResult`
    lines : (rows, columns), optional
        Those found before (`line_defects`); by default they are found here.

    Returns
    -------
    rows, columns : ndarray of int
        The lines masked.
    """
    rows, columns = line_defects(result.difference) if lines is None else lines
    if len(rows) or len(columns):
        mask = np.zeros(result.difference.shape, bool)
        mask[rows, :] = True
        mask[:, columns] = True
        existing = result.difference.mask
        result.difference.mask = mask if existing is None else (np.asarray(existing, bool)
                                                                 | mask)
        result.flags = np.where(mask, result.flags | MASKED, result.flags).astype(
            result.flags.dtype)
        result.difference.flags = result.flags
    return rows, columns
