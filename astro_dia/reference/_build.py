"""
`build_reference` (private; public through `astro_dia.reference`).
"""

import time
import warnings

import numpy as np
from astropy import units as u
from astropy.nddata import CCDData, StdDevUncertainty

from ..registration import RegistrationError, RegistrationWarning, register
from ..registration._inputs import output_header, read_frame
from ..registration._stars import find_stars, isolated
from ._combine import SCALE_STARS, clipped_mean, flux_scale, sky_offset
from ._measure import choose_frames, frame_statistics

__all__ = []

BACKGROUNDS = ("scale", "offset", "none")


class ReferenceWarning(RegistrationWarning):
    """A frame was left out of the reference, or the reference needs a look."""


def _scale_stars(frame, stars, saturation):
    """Bright isolated unsaturated stars of the best frame, for flux scales."""
    ok = isolated(stars.x, stars.y, 3 * stars.fwhm)
    if saturation is not None:
        ok &= stars.peak + stars.sky < 0.8 * saturation
    margin = 4 * stars.fwhm
    ny, nx = frame.shape
    ok &= ((stars.x > margin) & (stars.x < nx - 1 - margin) & (stars.y > margin)
           & (stars.y < ny - 1 - margin))
    index = np.flatnonzero(ok)[:SCALE_STARS]
    return np.column_stack([stars.x[index], stars.y[index]])


def build_reference(frames, *, n_frames=None, max_fwhm_ratio=1.25, max_background_ratio=2.0,
                    background="scale", sigma=3.0, max_bad_fraction=0.5, method="auto",
                    names=None, saturation=None, threshold=5.0):
    """
    Build a reference image from the best of a series of frames.

    The frames are measured (`frame_statistics`: FWHM from photutils fits
    of bright isolated stars, sigma-clipped sky), chosen by seeing and sky,
    registered with `astro_dia.registration.register` (bilinear
    resampling) to the sharpest, matched to its background, and combined by
    a weighted mean with outliers rejected. See :ref:`reference-building`.

    Parameters
    ----------
    frames : sequence of `~astropy.nddata.CCDData` or `~astropy.nddata.NDData`
        Calibrated frames of one field, in one unit; their uncertainties,
        if any (all or none), are propagated.
    n_frames : int, optional
        Combine the ``n_frames`` sharpest usable frames. None (default):
        all usable frames with FWHM within ``max_fwhm_ratio`` of the
        sharpest.
    max_fwhm_ratio : float, optional
        See ``n_frames``.
    max_background_ratio : float, optional
        Frames whose sky exceeds this times the median sky of all frames
        (bright moon, twilight) are not used.
    background : {'scale', 'offset', 'none'}, optional
        Background matching to the best frame, ``scale * frame + offset``:
        ``'scale'`` (default) measures the scale from the aperture fluxes
        of bright isolated stars and the offset from the sigma-clipped
        median difference of the pixels; ``'offset'`` the offset only
        (frames of one exposure time and transparency); ``'none'`` neither.
    sigma : float or None, optional
        Rejection threshold (see Notes); None rejects nothing.
    max_bad_fraction : float, optional
        A reference pixel is masked when more than this fraction of the
        combined frames have it masked (bad, or outside the frame), or when
        no value is left.
    method : {'auto', 'wcs', 'stars'}, optional
        Registration method (see `~astro_dia.registration.register`).
    names : sequence of str, optional
        Frame names for the header; default each frame's FILENAME (or
        ORIGFILE) card, else ``'frame <index>'``.
    saturation : float, optional
        Saturation level for star selection; default the SATURATE card.
    threshold : float, optional
        Star detection threshold in sky standard deviations.

    Returns
    -------
    `~astropy.nddata.CCDData`
        On the best frame's grid and in its unit, with its WCS; the
        uncertainty (`~astropy.nddata.StdDevUncertainty`) propagated from
        the inputs' (none when the inputs have none); the mask; and in the
        header NCOMBINE, REFBEST (the best frame), REFFRnnn (the frames
        combined), REFFWnnn, REFSCnnn, REFOFnnn (their FWHM, scale and
        offset), REFFWHM (the effective FWHM measured on the reference),
        REFBKG, REFSIGMA, REFMAXBD and REFTIME (seconds).

    Raises
    ------
    astro_dia.registration.RegistrationError
        No usable frame, or inputs of mixed units or uncertainty.

    Notes
    -----
    A value is rejected when it departs from the median of its pixel's
    stack by more than ``sigma`` times ``sqrt(variance + (1.4826 MAD)**2)``:
    cosmic rays, satellite trails, and bad rows or columns of one frame do
    not survive (with three or more frames). The mean weighs each frame by
    the inverse of its sky variance (one weight per frame), and its
    variance is propagated from the inputs' variances.

    Examples
    --------
    >>> from astro_dia.simulate import make_image_pair
    >>> frames = [make_image_pair(shape=(96, 96), seed=1, shift=(0.1 * k, -0.2 * k),
    ...                           density=60, target_sky=100.0, kernel_sigma=0.5)[1]
    ...           for k in range(3)]
    >>> reference = build_reference(frames)
    >>> reference.header["NCOMBINE"], reference.unit
    (3, Unit("adu"))
    """
    start = time.perf_counter()
    frames = list(frames)
    if len(frames) == 0:
        raise RegistrationError("build_reference needs at least one frame")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, not {background!r}")
    if n_frames is not None and int(n_frames) < 1:
        raise ValueError(f"n_frames must be 1 or more, not {n_frames}")
    units = {str(getattr(frame, "unit", None)) for frame in frames}
    if len(units) > 1:
        raise RegistrationError(f"the frames are in different units ({sorted(units)}); "
                                "convert them to one unit first")
    with_uncertainty = {getattr(frame, "uncertainty", None) is not None for frame in frames}
    if len(with_uncertainty) > 1:
        raise RegistrationError("some frames have an uncertainty and some not: give all "
                                "frames one (e.g. ccdproc.create_deviation) or none")
    table = frame_statistics(frames, names=names, threshold=threshold, saturation=saturation)
    chosen = choose_frames(table, n_frames, max_fwhm_ratio, max_background_ratio)
    if not chosen:
        raise RegistrationError("no frame is usable as a reference: no stars could be measured "
                                "(lower `threshold`) or every sky is too bright")
    best_index = chosen[0]
    best = read_frame(frames[best_index], "best frame")
    level = saturation
    if level is None and best.meta is not None and "SATURATE" in best.meta:
        level = float(best.meta["SATURATE"])
    best_stars = find_stars(best.data, best.mask, threshold=threshold, saturation=level)
    scale_xy = _scale_stars(best, best_stars, level)
    radius = 1.5 * best_stars.fwhm
    best_pair = (best.data, best.mask)

    used, stack, variances, masks, scales, offsets = [], [], [], [], [], []
    for index in chosen:
        if index == best_index:
            data, variance, mask = best.data.astype(np.float64), best.variance, best.mask
        else:
            try:
                registered = register(frames[index], frames[best_index], method=method,
                                      threshold=threshold, saturation=saturation)
            except RegistrationError as error:
                warnings.warn(f"{table['name'][index]} left out of the reference: {error}",
                              ReferenceWarning)
                continue
            data = np.asarray(registered.data, np.float64)
            mask = np.asarray(registered.mask, bool)
            variance = (None if registered.uncertainty is None else
                        np.asarray(registered.uncertainty.represent_as(StdDevUncertainty)
                                   .array, np.float64) ** 2)
            data = np.where(mask, 0.0, data)
        scale = 1.0
        if background == "scale" and index != best_index and len(scale_xy):
            scale = flux_scale(best_pair, (data, mask), scale_xy, radius)
            if not np.isfinite(scale):
                warnings.warn(f"{table['name'][index]}: no star gave a flux scale; scale 1 "
                              "used", ReferenceWarning)
                scale = 1.0
        offset = 0.0
        if background != "none" and index != best_index:
            offset = sky_offset(best_pair, (data, mask), scale)
            offset = offset if np.isfinite(offset) else 0.0
        used.append(index)
        stack.append(scale * data + offset)
        variances.append(None if variance is None else np.where(mask, 0.0, scale ** 2 * variance))
        masks.append(mask)
        scales.append(scale)
        offsets.append(offset)

    if len(used) < 3 and sigma is not None:
        warnings.warn(f"only {len(used)} frame(s) combined: outliers (cosmic rays, bad "
                      "columns) cannot be rejected with fewer than three", ReferenceWarning)
    sky_sigma = np.asarray(table["sky_sigma"], float)[used] * np.abs(scales)
    weights = 1.0 / np.maximum(sky_sigma, 1e-30) ** 2
    mask_stack = np.array(masks)
    has_var = variances[0] is not None
    mean, var, n_used, _ = clipped_mean(np.array(stack), np.array(variances) if has_var
                                        else None, mask_stack, weights, sigma)
    mask = (mask_stack.sum(axis=0) > max_bad_fraction * len(used)) | (n_used == 0)
    mean = np.where(n_used == 0, np.nan, mean)

    fwhm = find_stars(np.where(mask, 0.0, np.nan_to_num(mean)), mask,
                      threshold=threshold).fwhm
    header = output_header(best)
    for key in list(header.keys()):
        if key.startswith("REG"):
            header.remove(key, ignore_missing=True, remove_all=True)
    names_used = [str(table["name"][i]) for i in used]
    header["NCOMBINE"] = (len(used), "frames combined into the reference")
    header["REFBEST"] = (names_used[0], "best frame: the reference's grid")
    header["REFFWHM"] = (round(float(fwhm), 4), "[pix] effective FWHM of the reference")
    header["REFBKG"] = (background, "background matching: scale * frame + offset")
    header["REFSIGMA"] = (-1.0 if sigma is None else float(sigma), "rejection threshold")
    header["REFMAXBD"] = (float(max_bad_fraction), "masked if bad in more than this fraction")
    for k, index in enumerate(used, start=1):
        header[f"REFFR{k:03d}"] = (names_used[k - 1], "frame combined")
        header[f"REFFW{k:03d}"] = (round(float(table["fwhm"][index]), 4), "[pix] its FWHM")
        header[f"REFSC{k:03d}"] = (round(scales[k - 1], 6), "its scale to the best frame")
        header[f"REFOF{k:03d}"] = (round(offsets[k - 1], 4), "its offset to the best frame")
    header["REFTIME"] = (round(time.perf_counter() - start, 2), "[s] time to build")
    header.add_history(f"astro_dia.reference: {len(used)} frames registered to "
                       f"{names_used[0]}, background '{background}', clipped weighted mean")
    uncertainty = None if var is None else StdDevUncertainty(np.sqrt(var))
    unit = best.unit if best.unit is not None else u.dimensionless_unscaled
    return CCDData(mean, unit=unit, uncertainty=uncertainty, mask=mask, meta=header,
                   wcs=best.wcs)
