"""
Checks and conversions of the images given to `register` (private).

An image arrives as `~astropy.nddata.CCDData`, `~astropy.nddata.NDData` or
(for the reference, which only lends its grid and stars) a 2-D array. It
is read into an `_Frame`: float pixels, a boolean mask (never None), the
variance (or None) and enough to rebuild the uncertainty of the same class
and unit on output. Nothing here modifies the caller's objects.
"""

import copy
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import (InverseVariance, NDData, StdDevUncertainty,
                            VarianceUncertainty)

from ..exceptions import DIAError

__all__ = []


class RegistrationError(DIAError):
    """Two frames could not be registered; the message names the problem and the fix."""


@dataclass
class _Frame:
    """One image, read for registration."""

    data: np.ndarray
    mask: np.ndarray
    variance: np.ndarray | None
    unit: u.UnitBase | None
    uncertainty_class: type | None
    wcs: object
    meta: object
    name: str

    @property
    def shape(self):
        return self.data.shape


def _variance(uncertainty, shape, name):
    """The variance array of an NDUncertainty, or None."""
    if uncertainty is None:
        return None
    array = np.asarray(uncertainty.array, dtype=np.float64)
    if array.shape != shape:
        raise RegistrationError(f"the {name}'s uncertainty has shape {array.shape}, its data "
                                f"{shape}: give an uncertainty of the data's shape")
    if isinstance(uncertainty, StdDevUncertainty):
        return array ** 2
    if isinstance(uncertainty, VarianceUncertainty):
        return array.copy()
    if isinstance(uncertainty, InverseVariance):
        with np.errstate(divide="ignore"):
            return 1.0 / array
    raise RegistrationError(f"the {name}'s uncertainty is a {type(uncertainty).__name__}; "
                            "use a StdDevUncertainty, VarianceUncertainty or InverseVariance")


def read_frame(image, name, *, need_nddata=True):
    """
    Read ``image`` into an `_Frame`, checking shape and finiteness.

    Parameters
    ----------
    image : `~astropy.nddata.NDData` or array
    name : str
        ``'image'`` or ``'reference'``, for messages.
    need_nddata : bool
        Refuse plain arrays (the image to register must carry its unit).
    """
    if isinstance(image, NDData):
        data = np.asarray(image.data)
        mask = image.mask
        uncertainty = image.uncertainty
        unit, wcs, meta = image.unit, image.wcs, image.meta
    elif need_nddata:
        raise RegistrationError(f"the {name} is a {type(image).__name__}; give a CCDData "
                                "(or NDData) so that its unit, mask and uncertainty are kept")
    else:
        data, mask, uncertainty, unit, wcs, meta = np.asarray(image), None, None, None, None, {}
    if data.ndim != 2:
        raise RegistrationError(f"the {name} has {data.ndim} dimensions (shape {data.shape}); "
                                "register 2-D images, one at a time")
    if min(data.shape) < 16:
        raise RegistrationError(f"the {name} is {data.shape[0]} x {data.shape[1]} pixels; "
                                "registration needs at least 16 x 16")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise RegistrationError(f"the {name}'s data are of type {data.dtype}; give real numbers")
    mask = (np.zeros(data.shape, bool) if mask is None
            else np.array(np.broadcast_to(np.asarray(mask, dtype=bool), data.shape)))
    dtype = data.dtype if data.dtype in (np.float32, np.float64) else np.float64
    data = np.array(data, dtype=dtype)
    nonfinite = ~np.isfinite(data)
    if np.any(nonfinite & ~mask):
        count = int(np.sum(nonfinite & ~mask))
        raise RegistrationError(f"the {name} has {count} NaN or infinite pixels outside its "
                                "mask: mask them (mask = ~np.isfinite(data)) before registering")
    data[nonfinite] = 0.0
    variance = _variance(uncertainty, data.shape, name)
    if variance is not None:
        bad_variance = ~np.isfinite(variance) | (variance < 0)
        mask |= bad_variance
        variance[bad_variance] = 0.0
    uncertainty_class = type(uncertainty) if uncertainty is not None else None
    if wcs is not None and not getattr(wcs, "has_celestial", False):
        wcs = None
    return _Frame(data, mask, variance, unit, uncertainty_class, wcs, meta, name)


def saturation_level(frame, saturation):
    """The saturation level: ``saturation``, else the SATURATE or SATLEVEL keyword, or None."""
    if saturation is not None:
        return float(saturation)
    meta = frame.meta or {}
    for key in ("SATURATE", "SATLEVEL"):
        if key in meta:
            value = meta[key]
            value = value[0] if isinstance(value, tuple) else value
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def celestial_wcs(frame):
    """The frame's 2-D celestial WCS, or None."""
    wcs = frame.wcs
    if wcs is None or getattr(wcs, "naxis", 2) != 2:
        return None
    return wcs


def rebuild_uncertainty(frame, variance):
    """An uncertainty of the frame's class (and unit) holding ``variance``."""
    if variance is None or frame.uncertainty_class is None:
        return None
    if frame.uncertainty_class is StdDevUncertainty:
        return StdDevUncertainty(np.sqrt(variance), copy=False)
    if frame.uncertainty_class is VarianceUncertainty:
        return VarianceUncertainty(variance, copy=False)
    with np.errstate(divide="ignore"):
        return InverseVariance(1.0 / variance, copy=False)


def output_header(frame):
    """A copy of the frame's meta as a FITS header, without its WCS cards."""
    meta = frame.meta
    if isinstance(meta, fits.Header):
        header = meta.copy()
    else:
        header = fits.Header()
        for key, value in (meta or {}).items():
            try:
                header[key] = copy.deepcopy(value)
            except (ValueError, KeyError, TypeError):
                continue
    if frame.wcs is not None:
        for key in frame.wcs.to_header(relax=True):
            header.remove(key, ignore_missing=True, remove_all=True)
    for key in ("WCSAXES", "CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2",
                "CD1_1", "CD1_2", "CD2_1", "CD2_2", "PC1_1", "PC1_2", "PC2_1", "PC2_2",
                "CDELT1", "CDELT2", "CUNIT1", "CUNIT2"):
        header.remove(key, ignore_missing=True, remove_all=True)
    return header
