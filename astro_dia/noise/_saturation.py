"""Saturation plateaus of frames that carry no saturation level (private).

Real frames often have no SATURATE keyword. Their saturated stars still
show: the frame's maximum is shared by many pixels, a flat top over one or
several star cores, at the largest value the file's integer pixels can hold
(65535 for 16-bit data stored with BZERO = 32768) or at a ceiling of the
detector's electronics below it (about 65300 adu on some CCDs). Pixels of
an unsaturated frame carry noise, so its maximum is one pixel, or at most a
few of an integer frame.

`find_plateau` finds such a plateau from the values alone; `warn_if_saturated`
is what `astro_dia.fitting._inputs.prepare_inputs` calls for an image whose level is
unknown.
"""

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std

from ._header import SATURATION_KEYWORDS, keyword_list
from ..exceptions import SaturationWarning

__all__ = []

#: Pixels that must share the frame's maximum to make a plateau ...
MIN_PLATEAU_PIXELS = 5
#: ... or, at the largest value of the file's integer type, that no noise reaches.
MIN_CEILING_PIXELS = 2
#: Relative tolerance within which a pixel shares the maximum.
PLATEAU_RTOL = 1e-4
#: How far above the frame's median the plateau must lie, in robust sigma.
PLATEAU_CONTRAST = 20.0
#: Most pixels used for the median and scatter of the frame.
_SAMPLE_PIXELS = 2 ** 16


@dataclass(frozen=True)
class Plateau:
    """A flat top of pixels at a frame's maximum (private record)."""

    level: float          # the frame's maximum, in its data unit
    n_pixels: int         # pixels within the tolerance of it, in groups of two or more
    n_groups: int         # those groups (8-connected flat tops)
    median: float         # the frame's median, for the message
    at_ceiling: bool      # the level is the largest value of the file's integer type


def storage_maximum(dtype, meta):
    """
    Largest value the image's integer pixels can hold, or None.

    Parameters
    ----------
    dtype : `numpy.dtype`
        dtype of the image's data as given; an integer dtype settles it.
    meta : dict-like or None
        The header: BITPIX > 0 with BZERO and BSCALE give the stored range
        of data that were read as floats.

    Returns
    -------
    maximum : float or None
    """
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    if meta is None:
        return None
    try:
        bitpix = int(meta.get("BITPIX", 0))
        bzero = float(meta.get("BZERO", 0.0))
        bscale = float(meta.get("BSCALE", 1.0))
    except (TypeError, ValueError, AttributeError):
        return None
    if bitpix not in (8, 16, 32, 64):
        return None
    # FITS BITPIX 8 is unsigned; 16, 32 and 64 are signed.
    largest = 255 if bitpix == 8 else 2 ** (bitpix - 1) - 1
    return bzero + bscale * largest


def find_plateau(data, bad, *, ceiling=None):
    """
    The flat tops of pixels at a frame's maximum, if there are any.

    Parameters
    ----------
    data : (M, N) ndarray
        The frame.
    bad : (M, N) bool ndarray
        Pixels to ignore (masked or non-finite).
    ceiling : float, optional
        The largest value of the file's integer type (`storage_maximum`),
        in the unit of ``data``.

    Returns
    -------
    plateau : `Plateau` or None
        None unless at least `MIN_PLATEAU_PIXELS` good pixels within
        `PLATEAU_RTOL` of the maximum (`MIN_CEILING_PIXELS` when the maximum
        is ``ceiling``) form flat tops, groups of two or more touching
        pixels (isolated hot pixels do not), and the maximum lies
        `PLATEAU_CONTRAST` robust sigma above the frame's median.
    """
    level = float(np.max(data, where=~bad, initial=-np.inf))
    if not np.isfinite(level):
        return None
    tolerance = PLATEAU_RTOL * abs(level)
    at_ceiling = ceiling is not None and abs(level - ceiling) <= tolerance
    needed = MIN_CEILING_PIXELS if at_ceiling else MIN_PLATEAU_PIXELS
    near = np.flatnonzero(data >= level - tolerance)     # few pixels: the cheap test first
    near = near[~bad.ravel()[near]]
    if near.size < needed:
        return None
    n_pixels, n_groups = _flat_tops(near, data.shape)
    if n_pixels < needed:
        return None
    step = max(1, int(np.ceil(np.sqrt(data.size / _SAMPLE_PIXELS))))
    sample = data[::step, ::step][~bad[::step, ::step]]
    median = float(np.median(sample))
    scatter = float(mad_std(sample, func=np.median))   # no NaN left: the plain median
    if level - median <= PLATEAU_CONTRAST * scatter:
        return None
    return Plateau(level=level, n_pixels=n_pixels, n_groups=n_groups, median=median,
                   at_ceiling=at_ceiling)


def _flat_tops(indices, shape):
    """Pixels and groups of the 8-connected groups of two or more among flat ``indices``."""
    from scipy import ndimage

    rows, columns = np.unravel_index(indices, shape)
    # Label within the bounding box of these pixels only.
    box = np.zeros((np.ptp(rows) + 1, np.ptp(columns) + 1), bool)
    box[rows - rows.min(), columns - columns.min()] = True
    labels, _ = ndimage.label(box, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels[rows - rows.min(), columns - columns.min()])[1:]
    tops = sizes[sizes >= 2]
    return int(tops.sum()), int(tops.size)


def warn_if_saturated(image, name, unit):
    """
    Warn when an image without a saturation level shows a saturation plateau.

    Parameters
    ----------
    image : `astro_dia.fitting._validation.Image`
        The prepared image; its ``data`` are in ``unit`` (the target's).
    name : str
        ``'reference'`` or ``'target'``, for the message.
    unit : `~astropy.units.UnitBase`
        The target's unit, that of ``saturation=``.

    Warns
    -----
    `~astro_dia.exceptions.SaturationWarning`
        Naming the level, the number of pixels and the fix.
    """
    source_unit = image.source.unit
    factor = source_unit.to(unit) if source_unit is not None else 1.0
    ceiling = storage_maximum(np.asarray(image.source.data).dtype, image.meta)
    plateau = find_plateau(image.data, image.bad,
                           ceiling=None if ceiling is None else ceiling * factor)
    if plateau is None:
        return None
    where = (f"in {plateau.n_groups} separate groups" if plateau.n_groups > 1
             else "in one group")
    what = (", the largest value its integer pixels can hold" if plateau.at_ceiling
            else "")
    warnings.warn(
        f"the {name} looks saturated: {plateau.n_pixels} pixels {where} share its maximum, "
        f"{plateau.level:.8g} {unit}{what} (median {plateau.median:.6g}), but no saturation "
        f"level was given and its header has no {keyword_list(SATURATION_KEYWORDS)} "
        f"keyword, so they are fitted as if linear. Pass saturation={plateau.level:.8g} "
        f"(in {unit}; a little lower to mask the nonlinear pixels below it too) to "
        f"DifferenceImager (--saturation on the command line), or add a SATURATE keyword "
        f"to the {name}'s header",
        SaturationWarning, stacklevel=4)
    return plateau
