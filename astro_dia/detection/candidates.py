"""
Candidates of change on a difference image: `find_transients`.

Peaks of the significance image (`~astro_dia.detection.significance_image`)
above a threshold, of either sign, are found as photutils
`~photutils.detection.find_peaks` finds them (each pixel above the
threshold compared with its box), centred to a fraction of a pixel with
`~photutils.centroids.centroid_quadratic` and measured by a PSF fit with
free position (`~astro_dia.photometry.differential_photometry`), on the
target's and the reference's photometric scale. Each row gets the flags of
`astro_dia.detection.flags`; the SHARP test is in
``astro_dia.detection._sharpness``.
"""

import warnings

import numpy as np
from astropy import units as u
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning

from .. import flags as pixel_flags
from ..photometry.measure import photometry_prepared
from ..photometry.psf import gaussian_psf, render_psf
from ._sharpness import is_sharp, is_star_residual, peak_excess, star_flux
from .flags import DETECTION_FLAGS
from .significance import compute_significance, matched_filter, robust_scatter

__all__ = ["find_transients"]

#: Opposite-sign lobe, relative to |snr|, that marks a dipole (and at least 0.8 threshold).
DIPOLE_RATIO = 0.3
#: Excess significance (in its own sigma) under a broader filter that marks a source extended.
EXTENDED_SIGMA = 3.0
#: ... and the relative excess, allowing for a PSF model a few per cent off.
EXTENDED_RELATIVE = 0.05


#: Peaks whose boxes are compared at once in `_peaks` (bounds its memory).
_PEAK_CHUNK = 20_000


def _filled(significance):
    """The significance with its undefined pixels set to 0."""
    return np.where(np.isfinite(significance), significance, 0.0)


def _peaks(significance, threshold, box_size, border, filled=None):
    """
    Integer peak positions and signs of |S| > threshold (a positive threshold).

    The peaks of photutils `~photutils.detection.find_peaks` on S and on
    -S (undefined pixels set to 0 and excluded, the image padded with 0
    beyond its edges): pixels above the threshold that equal the largest
    value of the ``box_size`` box round them, ties included, in row-major
    order, the brightenings first. Only the pixels above the threshold,
    few on a difference image, are compared with their boxes, instead of
    filtering the whole image twice. ``filled``: `_filled` of the
    significance, when computed already.
    """
    filled = _filled(significance) if filled is None else filled
    empty = np.zeros(0, int)
    low = box_size // 2
    high = box_size - 1 - low
    padded = None
    xs, ys, signs = [], [], []
    for sign in (1, -1):
        # Undefined pixels (0) are never above a positive threshold.
        above = filled > threshold if sign > 0 else filled < -threshold
        if above.all() and np.all(filled == filled.flat[0]):
            return empty, empty, empty      # find_peaks finds no peak on a flat image
        if border:
            above[:border] = above[-border:] = False
            above[:, :border] = above[:, -border:] = False
        y, x = np.nonzero(above)
        if not y.size:
            continue
        if padded is None:
            padded = np.pad(filled, ((low, high), (low, high)))
            boxes = np.lib.stride_tricks.sliding_window_view(padded, (box_size, box_size))
        keep = np.zeros(y.size, bool)
        for start in range(0, y.size, _PEAK_CHUNK):
            part = slice(start, start + _PEAK_CHUNK)
            local = boxes[y[part], x[part]]
            extreme = local.max(axis=(1, 2)) if sign > 0 else local.min(axis=(1, 2))
            keep[part] = filled[y[part], x[part]] == extreme
        xs.append(x[keep])
        ys.append(y[keep])
        signs.append(np.full(int(keep.sum()), sign))
    if not xs:
        return empty, empty, empty
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(signs)


def _centroids(significance, x, y, signs, filled=None):
    """Sub-pixel centres of the peaks (quadratic fit to S in a 5 x 5 box around each)."""
    from photutils.centroids import centroid_quadratic, centroid_sources

    filled = _filled(significance) if filled is None else filled
    xc, yc = x.astype(float), y.astype(float)
    for sign in (1, -1):
        members = np.flatnonzero(signs == sign)
        if not members.size:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            cx, cy = centroid_sources(filled if sign > 0 else -filled, x[members], y[members],
                                      box_size=5, centroid_func=centroid_quadratic)
        good = np.isfinite(cx) & np.isfinite(cy) & (np.hypot(cx - x[members],
                                                              cy - y[members]) <= 1.5)
        xc[members[good]], yc[members[good]] = cx[good], cy[good]
    return xc, yc


def _box_any(image, x, y, half):
    """Whether any True pixel of ``image`` lies within ``half`` pixels (box) of each position."""
    ny, nx = image.shape
    out = np.zeros(len(x), bool)
    for i, (xi, yi) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        out[i] = image[max(yi - half, 0):yi + half + 1, max(xi - half, 0):xi + half + 1].any()
    return out


def _opposite_lobe(significance, x, y, signs, radius, filled=None):
    """Largest significance of the opposite sign within ``radius`` pixels of each peak."""
    filled = _filled(significance) if filled is None else filled
    ny, nx = filled.shape
    half = int(np.ceil(radius))
    dy, dx = np.mgrid[-half:half + 1, -half:half + 1]
    disc = np.hypot(dx, dy) <= radius
    lobes = np.zeros(len(x))
    for i, (xi, yi, sign) in enumerate(zip(x, y, signs)):
        yy, xx = yi + dy[disc], xi + dx[disc]
        inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        lobes[i] = max(0.0, float(np.max(-sign * filled[yy[inside], xx[inside]])))
    return lobes


def _extended(arrays, psf_image, fwhm, significance, x, y, signs, inputs=None):
    """Whether a filter twice the PSF's area finds each peak more significant than a point.

    ``inputs``: the `FilterInputs` of ``arrays``, transformed once for both filters.
    """
    broad = np.sqrt(2.0) * fwhm
    size = 2 * int(np.ceil(2.5 * broad)) + 1
    kernel = render_psf(gaussian_psf(broad), size)
    pad = (size - psf_image.shape[0]) // 2
    point = np.pad(psf_image, max(pad, 0))
    if pad < 0:
        kernel = np.pad(kernel, -pad)
    kernel = kernel / kernel.sum()
    rho = float((point * kernel).sum() / np.sqrt((point ** 2).sum() * (kernel ** 2).sum()))
    broad_s = matched_filter(*arrays, kernel, inputs)
    s_point = significance[y, x] * signs
    s_broad = broad_s[y, x] / robust_scatter(broad_s) * signs
    excess = s_broad - rho * s_point
    return (excess > EXTENDED_SIGMA * np.sqrt(1 - rho ** 2)) & (excess > EXTENDED_RELATIVE
                                                                 * rho * s_point)


def _kernel_half(fit):
    kernel = getattr(fit, "kernel", None)
    return 0 if kernel is None else np.shape(kernel)[0] // 2


def _flags(fit, difference, significance, arrays, psf_filter, threshold, x, y, xi, yi, signs,
           snr, box, filled=None):
    """The DETECTION_FLAGS of each candidate (``box``: the photometry's fit box)."""
    shape = significance.shape
    half = box[0] // 2
    edge_margin = half + _kernel_half(fit)
    ny, nx = shape
    flags = np.zeros(len(x), np.int64)
    edge = (x < edge_margin) | (y < edge_margin) | (x > nx - 1 - edge_margin) | (
        y > ny - 1 - edge_margin)
    flags[edge] |= DETECTION_FLAGS["EDGE"]
    masked = ~arrays[2]
    flags[_box_any(masked, x, y, half)] |= DETECTION_FLAGS["MASKED"]
    pixel_bits = getattr(fit, "flags", None)
    if pixel_bits is None:
        pixel_bits = getattr(difference, "flags", None)
    if pixel_bits is not None:
        saturated = (np.asarray(pixel_bits) & pixel_flags.SATURATED) != 0
        flags[_box_any(saturated, x, y, half)] |= DETECTION_FLAGS["SATURATED"]
    lobes = _opposite_lobe(significance, xi, yi, signs, 2.0 * psf_filter.fwhm, filled)
    dipole = lobes >= np.maximum(DIPOLE_RATIO * np.abs(snr), 0.8 * threshold)
    flags[dipole] |= DETECTION_FLAGS["DIPOLE"]
    return flags, lobes


def _measure(result, psf_filter, x, y, arrays, box):
    """
    Free-position PSF fit of every candidate: positions, fluxes and photutils flags.

    `differential_photometry` on the pixels of ``arrays`` (data, variance,
    good) and, when the filter's PSF is the photometry's target PSF, with it.
    """
    positions = QTable({"x": x, "y": y})
    data, variance, good = arrays
    target = psf_filter.photometry_target
    with warnings.catch_warnings():
        # A candidate table is made without P's error when there is none; that
        # is said once in the table's meta, not per call.
        warnings.simplefilter("ignore", AstropyUserWarning)
        table = photometry_prepared(result, positions, psf_filter.photometry_psf,
                                    pixels=(data, np.sqrt(variance), ~good), target=target,
                                    fit_shape=box if target is not None else None,
                                    kernel=psf_filter.photometry_kernel,
                                    fixed_positions=False, position_bounds=1.5)
    return table


def find_transients(result, threshold=5.0, *, reference_psf=None, box_size=None,
                    calibrate=True, max_candidates=None):
    """
    Candidates of change (brightening or fading point sources) on a difference image.

    Peaks of ``|S|``, the significance image of `significance_image`,
    above ``threshold`` are found (the peaks of photutils
    `~photutils.detection.find_peaks`), centred to a fraction of a pixel
    and measured by a PSF fit with free position
    (`~astro_dia.photometry.differential_photometry`).

    Parameters
    ----------
    result : `~astro_dia.DifferenceResult` or `~astropy.nddata.CCDData`
        The fit, or a difference image (see `significance_image`).
    threshold : float, optional
        Detection threshold on ``|S|``, in sigma.
    reference_psf : `astropy.modeling.Model`, optional
        The reference PSF; by default a Gaussian measured on the model (see
        `significance_image`).
    box_size : int, optional
        Side of the box in which a peak must be the maximum; by default
        twice the FWHM plus one, so one source gives one peak.
    calibrate : bool, optional
        Calibrate the significance to unit robust scatter (default).
    max_candidates : int, optional
        Keep only the most significant ones.

    Returns
    -------
    candidates : `~astropy.table.QTable`
        One row per candidate, most significant first: ``id`` (from 1),
        ``x``, ``y`` (0-based pixels, sub-pixel), ``skycoord`` (with a
        WCS), ``snr`` (signed significance at the peak), ``flux``,
        ``flux_err`` (PSF fit, target scale), ``flux_ref``,
        ``flux_ref_err`` (divided by P), ``sign`` (+1 brightening, -1
        fading), ``flags`` (``astro_dia.detection.DETECTION_FLAGS``),
        ``opposite_snr`` (the largest opposite-sign significance within two
        FWHM), ``phot_flags`` (``astro_dia.photometry.PHOTOMETRY_FLAGS``
        of the fit), ``peak_excess`` and ``peak_excess_snr`` (how far the
        brightest pixel exceeds a PSF fit, see Notes). ``meta`` holds the
        threshold, the FWHM and scatter of the significance.

    Raises
    ------
    ValueError
        For a non-positive threshold, and as `significance_image`.

    Notes
    -----
    The flags say why a candidate may not be a real change: EDGE and
    MASKED (the fit box reaches the border or a masked pixel), DIPOLE (an
    opposite-sign lobe of at least 0.3 ``|snr|`` within two FWHM),
    SATURATED (a saturated pixel in the fit box), EXTENDED (a filter twice
    the PSF's area finds more signal than a point source gives), SHARP and
    STAR_RESIDUAL (a sharp residual on a star of the model more than 5
    times brighter: a core matched imperfectly, not a change; only when
    ``result`` is a fit, which holds the model).

    SHARP marks a candidate sharper than the target PSF, which a transient
    or a variable star cannot be: a cosmic ray, a hot pixel, another
    defect. The target PSF is fitted (linear least squares, inverse-variance
    weights) at the candidate's position over the photometry fit box, and
    of the 3 x 3 pixels there the one whose excess over the fit is the most
    significant is kept: ``peak_excess_snr`` is that excess over the
    pixel's standard deviation (divided by the significance's scatter when
    ``calibrate``), ``peak_excess`` the same excess in units of the fit's
    brightest pixel. SHARP needs ``peak_excess_snr > 5``, so that noise
    does not mark faint sources, and ``peak_excess > 0.5``, so that a PSF
    model a little too broad does not mark bright ones. A real point
    source has ``peak_excess`` near 0; a hot pixel 11, 4.4 and 1.5 under
    Gaussian PSFs of FWHM 4.5, 3 and 2 pixels, a cosmic ray of two or three
    pixels somewhat less. Defects of the reference reach the difference
    spread by the kernel, and are flagged only when bright.

    Examples
    --------
    >>> from astro_dia import DifferenceImager
    >>> from astro_dia.detection import find_transients
    >>> from astro_dia.photometry import gaussian_psf
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, target, truth = make_image_pair(seed=3)
    >>> result = DifferenceImager(kernel_size=11, flat=1).fit(reference, target)
    >>> candidates = find_transients(result, 5.0, reference_psf=gaussian_psf(2.355 * 1.5))
    >>> candidates.colnames[:6]
    ['id', 'x', 'y', 'snr', 'flux', 'flux_err']
    """
    threshold = float(threshold)
    if not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"threshold must be positive and finite, got {threshold}")
    computed = compute_significance(result, reference_psf, calibrate_scatter=calibrate)
    return transients_in(result, computed, threshold, box_size=box_size, calibrate=calibrate,
                         max_candidates=max_candidates)


def transients_in(result, computed, threshold, *, box_size=None, calibrate=True,
                  max_candidates=None):
    """
    `find_transients` on a significance already computed (private).

    ``computed`` is what ``compute_significance(result, reference_psf,
    calibrate_scatter=calibrate)`` returned, so that a caller that needs
    the significance image too computes it once.
    """
    threshold = float(threshold)
    if not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"threshold must be positive and finite, got {threshold}")
    significance, scatter, psf_filter, fit, difference, arrays, inputs = computed
    if box_size is None:
        box_size = 2 * int(np.ceil(psf_filter.fwhm)) + 1
    filled = _filled(significance)
    xi, yi, signs = _peaks(significance, threshold, int(box_size), border=0, filled=filled)
    snr = significance[yi, xi] if len(xi) else np.zeros(0)
    order = np.argsort(-np.abs(snr), kind="stable")
    if max_candidates is not None:
        order = order[:int(max_candidates)]
    xi, yi, signs, snr = xi[order], yi[order], signs[order], snr[order]
    x, y = _centroids(significance, xi, yi, signs, filled)
    unit = difference.unit
    box = psf_filter.fit_box
    flags, lobes = _flags(fit, difference, significance, arrays, psf_filter, threshold, x, y,
                          xi, yi, signs, snr, box, filled)
    if len(x):
        extended = _extended(arrays, psf_filter.image, psf_filter.fwhm, significance, xi, yi,
                             signs, inputs)
        flags[extended] |= DETECTION_FLAGS["EXTENDED"]
        fitted = _measure(result, psf_filter, x, y, arrays, box)
        fx, fy = np.asarray(fitted["x"], float), np.asarray(fitted["y"], float)
        ok = np.isfinite(fx) & np.isfinite(fy)
        x, y = np.where(ok, fx, x), np.where(ok, fy, y)
    excess, excess_snr = peak_excess(arrays, psf_filter.psf, x, y, signs, box[0] // 2,
                                     scatter if calibrate else 1.0)
    flags[is_sharp(excess, excess_snr)] |= DETECTION_FLAGS["SHARP"]
    model = getattr(getattr(fit, "model", None), "data", None)
    if model is not None and len(x):
        model_flux = star_flux(model, arrays[2], x, y, psf_filter.fwhm)
        flux = np.asarray(u.Quantity(fitted["flux"]).value, float)
        flags[is_star_residual(excess, excess_snr, flux, model_flux)] |= DETECTION_FLAGS[
            "STAR_RESIDUAL"]
    table = QTable()
    table["id"] = np.arange(1, len(x) + 1)
    table["x"] = x
    table["y"] = y
    if difference.wcs is not None and len(x):
        table["skycoord"] = difference.wcs.pixel_to_world(x, y)
    table["snr"] = snr
    if len(x):
        for name in ("flux", "flux_err", "flux_ref", "flux_ref_err"):
            table[name] = fitted[name]
    else:
        for name in ("flux", "flux_err", "flux_ref", "flux_ref_err"):
            table[name] = np.zeros(0) * unit
    table["sign"] = signs.astype(np.int8)
    table["flags"] = flags
    table["opposite_snr"] = lobes
    table["phot_flags"] = (np.asarray(fitted["flags"], np.int64) if len(x)
                           else np.zeros(0, np.int64))
    table["peak_excess"] = excess
    table["peak_excess_snr"] = excess_snr
    table.meta.update({"threshold": threshold, "psf_fwhm": psf_filter.fwhm,
                       "significance_scatter": scatter, "calibrated": bool(calibrate)})
    return table
