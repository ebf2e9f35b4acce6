"""Validation and normalisation of input images at the public boundary (private)."""

import warnings
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.nddata import NDData
from astropy.utils.exceptions import AstropyUserWarning

from ..exceptions import DIAError

__all__ = []

#: Largest allowed disagreement of the two WCS, in target pixels.
WCS_TOLERANCE = 0.1


@dataclass
class Image:
    """A validated image: float64 data, a full bad-pixel mask, and what came with it."""

    data: np.ndarray
    bad: np.ndarray
    input_mask: np.ndarray
    unit: object
    meta: object
    uncertainty: object
    wcs: object
    source: NDData


def as_image(obj, name):
    """
    Validate one input image and copy it into an `Image`.

    Non-finite pixels are added to the bad-pixel mask (with a warning if
    they were not masked already). The input is never modified.

    Raises
    ------
    TypeError
        If ``obj`` is not an NDData (CCDData included).
    ValueError
        If the data are not a non-empty 2-D numeric array.
    """
    if not isinstance(obj, NDData):
        raise TypeError(
            f"{name} must be a CCDData or NDData, got {type(obj).__name__}; wrap an array "
            f"as CCDData(array, unit='adu')")
    data = np.asarray(obj.data)
    if data.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got data of shape {data.shape}")
    if data.size == 0:
        raise ValueError(f"{name} is empty (shape {data.shape})")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise TypeError(f"{name} data must be numeric, got dtype {data.dtype}")
    # float64 in native byte order, whatever came in (int, float16, big-endian FITS).
    data = data.astype(np.float64, copy=True)
    input_mask = _input_mask(obj.mask, data.shape, name)
    nonfinite = ~np.isfinite(data)
    bad = input_mask | nonfinite
    # Checked before the warning, so that an unusable image gives one clear error.
    if bad.all():
        raise DIAError(f"every pixel of the {name} is masked or not finite; nothing to fit")
    unmasked_nonfinite = int((nonfinite & ~input_mask).sum())
    if unmasked_nonfinite:
        warnings.warn(
            f"the {name} has {unmasked_nonfinite} NaN or infinite pixels that are not in its "
            "mask; they are masked and left out of the fit", AstropyUserWarning)
    unit = obj.unit if obj.unit is not None else u.dimensionless_unscaled
    return Image(data=data, bad=bad, input_mask=input_mask, unit=unit, meta=obj.meta,
                 uncertainty=obj.uncertainty, wcs=obj.wcs, source=obj)


def _input_mask(mask, shape, name):
    """The input mask as a new bool array of the data's shape (a scalar is broadcast)."""
    if mask is None:
        return np.zeros(shape, bool)
    mask = np.asarray(mask)
    if mask.ndim != 0 and mask.shape != shape:
        raise ValueError(
            f"the {name} mask has shape {mask.shape} but its data {shape}; give a boolean mask "
            "of the data's shape (True for bad pixels)")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.number)):
        raise TypeError(f"the {name} mask must be boolean (True for bad pixels), got dtype "
                        f"{mask.dtype}")
    return np.broadcast_to(mask.astype(bool), shape).copy()


def check_pair(reference, target):
    """
    Check that two images can be differenced; convert the reference's unit.

    Returns
    -------
    reference : `Image`
        The reference, converted to the target's unit when needed.

    Raises
    ------
    ValueError
        Shape or WCS mismatch.
    astropy.units.UnitsError
        Units that cannot be converted into each other.
    """
    if reference.data.shape != target.data.shape:
        raise ValueError(
            f"reference and target must be on the same pixel grid, got shapes "
            f"{reference.data.shape} and {target.data.shape}; resample one onto the other "
            "first (e.g. with the reproject package)")
    reference_unit, target_unit = reference.source.unit, target.source.unit
    if (reference_unit is None) != (target_unit is None):
        missing, other, unit = (("reference", "target", target_unit) if reference_unit is None
                                else ("target", "reference", reference_unit))
        raise u.UnitsError(
            f"the {missing} has no unit but the {other} is in {unit}; give both images a "
            f"unit, e.g. CCDData(data, unit='{unit}')")
    if reference.unit != target.unit:
        if not reference.unit.is_equivalent(target.unit):
            raise u.UnitsError(
                f"the reference unit {reference.unit} cannot be converted to the target unit "
                f"{target.unit}; convert one of them first (e.g. ccdproc.gain_correct)")
        factor = reference.unit.to(target.unit)
        reference.data = reference.data * factor
        reference.unit = target.unit
    _check_wcs(reference.wcs, target.wcs, target.data.shape)
    return reference


def _check_wcs(reference_wcs, target_wcs, shape):
    if reference_wcs is None or target_wcs is None:
        return
    ny, nx = shape
    x = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2])
    y = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
    try:
        world = reference_wcs.pixel_to_world_values(x, y)
        x2, y2 = target_wcs.world_to_pixel_values(*world)
    except Exception as exc:  # a WCS that cannot be evaluated is not comparable
        raise ValueError(f"the reference and target WCS cannot be compared: {exc}") from exc
    offset = float(np.nanmax(np.hypot(np.asarray(x2) - x, np.asarray(y2) - y)))
    if not np.isfinite(offset) or offset > WCS_TOLERANCE:
        raise ValueError(
            f"the reference and target WCS disagree by up to {offset:.3g} pixels (tolerance "
            f"{WCS_TOLERANCE}); the images must be on the same pixel grid: resample one onto "
            "the other (e.g. reproject), or drop a wrong WCS")


def footprint_touches(bad, kernel_size):
    """
    Valid-region pixels whose kernel footprint touches a ``bad`` pixel.

    Parameters
    ----------
    bad : (ny, nx) bool ndarray
    kernel_size : int

    Returns
    -------
    touched : (ny - 2h, nx - 2h) bool ndarray
    """
    h = kernel_size // 2
    ny, nx = bad.shape
    if not bad.any():     # the common case: no box sums over a frame of zeros
        return np.zeros((ny - 2 * h, nx - 2 * h), bool)
    # Integer box sums of the kernel's size along each axis, from cumulative
    # sums: exact, and only over the windows that lie inside the frame.
    rows = np.zeros((ny + 1, nx), np.int32)
    np.cumsum(bad, axis=0, out=rows[1:])
    rows = rows[kernel_size:] - rows[:-kernel_size]
    boxes = np.zeros((rows.shape[0], nx + 1), np.int32)
    np.cumsum(rows, axis=1, out=boxes[:, 1:])
    return (boxes[:, kernel_size:] - boxes[:, :-kernel_size]) > 0


def parse_memory(value):
    """
    A memory budget in bytes, from an int, a string such as ``'2GB'`` or a Quantity.

    Returns
    -------
    int or None
        None when ``value`` is None (no budget).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"max_memory must be a number of bytes, a string such as '2GB' or "
                        f"a Quantity in bytes, got {value!r}")
    try:
        if isinstance(value, str):
            value = u.Quantity(value)
        if isinstance(value, u.Quantity):
            value = value.to_value(u.byte)
        value = float(value)
    except (TypeError, ValueError, u.UnitsError) as exc:
        raise ValueError(f"max_memory must be a number of bytes, a string such as '2GB' or "
                         f"a Quantity in bytes, got {value!r}") from exc
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return int(value)


def check_exclude(exclude, shape):
    """The ``exclude`` argument of `~astro_dia.DifferenceImager.fit` as a bool array."""
    array = np.asarray(exclude)
    if array.shape != tuple(shape):
        raise ValueError(f"exclude must have the image shape {tuple(shape)}, got shape "
                         f"{array.shape}")
    if array.dtype != bool:
        raise TypeError(f"exclude must be a boolean array (True = leave out of the fit), got "
                        f"dtype {array.dtype}; use e.g. exclude=array > 0")
    return array


def positive_number(value, name):
    """
    ``value`` as a finite, positive float, or the error that names ``name``.

    A non-number (or a bool) is a `TypeError`, zero, a negative number, NaN
    or infinity a `ValueError`.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number (finite), got {value!r}")
    return number


def check_clip(clip):
    """The imager's ``clip`` (outlier threshold in sigma, at least 3) or None."""
    if clip is None:
        return None
    if isinstance(clip, bool):
        raise TypeError(f"clip must be a number of sigma or None, got {clip!r}")
    try:
        value = float(clip)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"clip must be a number of sigma or None, got {clip!r}") from exc
    if not np.isfinite(value) or value < 3:
        raise ValueError(
            f"clip must be finite and at least 3 (sigma), got {clip!r}: a lower threshold "
            "rejects good pixels of a Gaussian tail; use clip=None to turn rejection off")
    return value


def check_saturation(saturation):
    """The imager's ``saturation``: a scalar Quantity, a positive float, or None."""
    if saturation is None:
        return None
    if isinstance(saturation, bool):
        raise TypeError(f"saturation must be a Quantity, a float or None, got {saturation!r}")
    if isinstance(saturation, u.Quantity):
        if not saturation.isscalar:
            raise ValueError(f"saturation must be a scalar, got shape {saturation.shape}")
        value = float(saturation.value)
    else:
        try:
            value = float(saturation)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"saturation must be a Quantity, a float or None, got "
                            f"{saturation!r}") from exc
        saturation = value
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"saturation must be positive and finite, got {saturation!r}")
    return saturation
