"""
The master flat of the CCD and EMCCD noise models (private).

This module owns the flat :math:`F` of paper eq. 6 and 7: loading it from an
argument (a `~astropy.nddata.CCDData`, an array or ``flat=1``) or from a
FITS file named in the header, normalising it to mean one as
`ccdproc.flat_correct` does and flagging its unusable pixels (`load_flat`);
and, for frames that ccdproc flat-corrected with a propagated uncertainty
but no flat named (`flat_recoverable`), recovering the flat from that
uncertainty (`flat_from_uncertainty`, re-exported by `astro_dia.noise`).
"""

import os
import warnings

import numpy as np
from astropy import units as u
from astropy.nddata import CCDData, NDData
from astropy.stats import sigma_clipped_stats

from ._detector import uncertainty_variance
from ._header import FLAT_KEYWORDS, find_keyword, keyword_list

__all__ = []

#: Header keys of ccdproc's log of `ccdproc.flat_correct`.
CCDPROC_FLAT_KEYS = ("flat_correct", "flatcor")


def load_flat(explicit, image, shape, model_name):
    """The master flat as (normalised array or 1.0, bad-pixel mask, source)."""
    source = "argument"
    flat = explicit
    if flat is None:
        keyword, value = find_keyword(image.meta, FLAT_KEYWORDS)
        if keyword is None or not isinstance(value, str):
            raise ValueError(
                f"noise_model={model_name!r} needs the master flat F of eq. 6/7: pass flat= "
                "as a CCDData or array (flat=1 for a flat-fielded image with uniform "
                f"response), or name its FITS file in one of the header keywords "
                f"{keyword_list(FLAT_KEYWORDS)}")
        if not os.path.isfile(value):
            raise ValueError(
                f"header keyword {keyword} names the master flat {value!r}, but no such file "
                "exists; pass flat= explicitly")
        flat = CCDData.read(value, unit=u.dimensionless_unscaled)
        source = f"header {keyword}"
    if isinstance(flat, NDData):
        flat = np.asarray(flat.data, dtype=float)
    if np.ndim(flat) == 0:
        value = float(flat)
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"flat must be positive and finite, got {flat}")
        return 1.0, None, "uniform (flat=1)" if source == "argument" else source
    flat = np.asarray(flat, dtype=float)
    if flat.shape != shape:
        raise ValueError(f"flat must have the image shape {shape}, got {flat.shape}")
    bad = ~np.isfinite(flat) | (flat <= 0)
    if bad.all():
        raise ValueError("flat has no positive finite pixel")
    # Normalise by the mean, as ccdproc.flat_correct does.
    flat = np.where(bad, 1.0, flat) / np.mean(flat[~bad])
    return flat, (bad if bad.any() else None), source


def flat_recoverable(image):
    """True for an image ccdproc flat-corrected, with an uncertainty and no flat named."""
    if getattr(image, "uncertainty", None) is None:
        return False
    keyword, value = find_keyword(image.meta, FLAT_KEYWORDS)
    if keyword is not None and isinstance(value, str):
        return False
    found, _ = find_keyword(image.meta, tuple(key.upper() for key in CCDPROC_FLAT_KEYS))
    return found is not None


def _fill_from_neighbours(values):
    """Replace NaNs by the median of their finite 3 x 3 neighbours, growing inwards."""
    values = values.copy()
    ny, nx = values.shape
    for _ in range(max(ny, nx)):
        missing = np.isnan(values)
        if not missing.any() or missing.all():
            break
        padded = np.pad(values, 1, constant_values=np.nan)
        rows, cols = np.nonzero(missing)
        neighbours = np.stack([padded[rows + dy, cols + dx]
                               for dy in range(3) for dx in range(3)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
            values[rows, cols] = np.nanmedian(neighbours, axis=0)
    return values


def flat_from_uncertainty(image, electrons_per_unit, *, mask=None):
    """
    Recover the master flat that ccdproc divided out, from the uncertainty it propagated.

    `ccdproc.create_deviation` gives a raw pixel of ``R`` counts the
    variance ``(g R + rn**2) / g**2``; `ccdproc.flat_correct` divides data
    and deviation by the normalised flat ``F``. With the flat-fielded value
    ``I = R' / F`` (``R'`` the counts after bias subtraction) the
    propagated variance obeys, pixel by pixel,

    .. math::

        \\sigma^2 F^2 - \\frac{I}{g} F - A = 0,

    where ``A`` (the data unit squared) is the constant part: the read
    noise, plus the bias level when the deviation was created before the
    bias was subtracted. Each pixel gives ``F`` for a given ``A``; ``A``
    is the one value that makes the mean of ``F`` one, as ccdproc
    normalises the flat.

    Parameters
    ----------
    image : `~astropy.nddata.CCDData`
        The flat-fielded image with its propagated ``uncertainty``.
    electrons_per_unit : float
        ``g``: electrons per data unit (1 for data in electrons).
    mask : (M, N) bool ndarray, optional
        Pixels to leave out.

    Returns
    -------
    flat : (M, N) ndarray
        The response, mean one. Where the master flat's own noise enters
        the propagated variance noticeably (the pixels of stars, more than
        three sigma above the sky) and where the uncertainty is not
        finite, it is the median of the neighbouring sky pixels.
    constant : float
        ``A``, in the data unit squared.

    Raises
    ------
    ValueError
        If too few pixels have a finite uncertainty, or the uncertainty is
        smaller than the photon noise of the data (it then did not come
        from ccdproc's propagation).
    """
    variance = uncertainty_variance(image)
    data = np.asarray(image.data, dtype=float)
    good = np.isfinite(variance) & np.isfinite(data)
    if mask is not None:
        good &= ~mask
    if good.sum() < 100:
        raise ValueError(
            "cannot recover the master flat from the target's uncertainty: fewer than 100 "
            "unmasked pixels have a finite uncertainty; pass flat= explicitly")
    _, sky, _ = sigma_clipped_stats(data[good], sigma=3.0, maxiters=10)
    sky_sigma = float(np.sqrt(np.median(variance[good])))
    faint = good & (data < sky + 3 * sky_sigma)
    counts = data[good] / electrons_per_unit
    var = variance[good]

    def flat_at(constant):
        # all good pixels, as ccdproc normalises the flat by its mean over the image
        return (counts + np.sqrt(np.maximum(counts ** 2 + 4 * var * constant, 0.0))) / (2 * var)

    if np.mean(flat_at(0.0)) > 1.02:
        raise ValueError(
            "cannot recover the master flat from the target's uncertainty: it is smaller than "
            "the photon noise of the data, so it is not the one ccdproc propagated "
            "(create_deviation, then flat_correct); pass flat= explicitly")
    low, high = 0.0, float(np.median(var))
    for _ in range(200):
        if np.mean(flat_at(high)) >= 1.0:
            break
        low, high = high, 2 * high
    for _ in range(100):
        middle = 0.5 * (low + high)
        if np.mean(flat_at(middle)) < 1.0:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(high, 1.0):
            break
    constant = 0.5 * (low + high)
    flat = np.full(data.shape, np.nan)
    flat[good] = flat_at(constant)
    flat[~faint] = np.nan
    flat = _fill_from_neighbours(flat)
    flat = np.where(np.isfinite(flat), flat, 1.0)
    return flat / np.mean(flat), float(constant)
