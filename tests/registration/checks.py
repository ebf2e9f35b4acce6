"""
Independent checks of a registered frame, with photutils and scipy alone.

Shared by the tests and ``benchmarks/validate_registration.py``:

- `bright_isolated`: bright, unsaturated stars of the reference with no
  neighbouring peak (brighter than a fraction of theirs) within a few
  FWHM, away from the edges;
- `centroid_offsets`: 2-D Gaussian centroids (`photutils.centroids.centroid_2dg`)
  of those stars in the registered frame minus those in the reference,
  optionally after matching the two frames' seeing (`match_seeing`);
- `flux_ratio`: aperture fluxes (local sky from an annulus) of the stars in
  the registered frame over those in the original image, at the positions
  the true (or fitted) transform gives there;
- `sky_noise_ratio`: the scatter of the sky pixels (stars masked, the sky's
  slow variations removed) over the propagated uncertainty of the same pixels;
- `resampled_sky_noise`, `sky_correlation`, `resampled_variance` and
  `injected_noise_ratio`: how registration changes a real sky's noise,
  against white noise and against the sky's own correlations.
"""

import warnings

import numpy as np
from astropy.stats import SigmaClip, mad_std, sigma_clipped_stats
from astropy.utils.exceptions import AstropyUserWarning
from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture
from photutils.background import Background2D, MedianBackground
from photutils.centroids import centroid_2dg, centroid_sources
from photutils.detection import DAOStarFinder, find_peaks
from photutils.segmentation import detect_sources
from scipy import ndimage
from scipy.spatial import cKDTree


def _values(image):
    data = np.asarray(image.data, float)
    mask = np.zeros(data.shape, bool) if image.mask is None else np.asarray(image.mask, bool)
    return data, mask | ~np.isfinite(data)


def bright_isolated(reference, fwhm, *, saturation=None, n_stars=40, isolation=3.0,
                    min_peak=30.0, fraction=None):
    """
    ``(n, 2)`` x, y of bright isolated unsaturated stars of ``reference``.

    Stars are `DAOStarFinder` detections peaking above ``min_peak`` sky
    standard deviations, the brightest ``n_stars``. Isolated: no neighbour
    within ``isolation * fwhm`` pixels, where a neighbour is any other local
    maximum of the sky-subtracted image above 3 standard deviations
    (`photutils.detection.find_peaks`, which unlike the finder keeps
    blended and elongated peaks) and, when ``fraction`` is given, only one
    peaking above ``fraction`` times the star's peak.
    """
    data, mask = _values(reference)
    _, sky, std = sigma_clipped_stats(data, mask=mask)
    table = DAOStarFinder(3 * std, fwhm, exclude_border=True).find_stars(data - sky, mask=mask)
    names = table.colnames
    x = np.asarray(table["x_centroid" if "x_centroid" in names else "xcentroid"], float)
    y = np.asarray(table["y_centroid" if "y_centroid" in names else "ycentroid"], float)
    peak = np.asarray(table["peak"], float)
    flux = np.asarray(table["flux"], float)
    peaks = find_peaks(data - sky, 3 * std, box_size=3, mask=mask)
    px, py = np.asarray(peaks["x_peak"], float), np.asarray(peaks["y_peak"], float)
    height = np.asarray(peaks["peak_value"], float)
    tree = cKDTree(np.column_stack([px, py]))
    isolated = np.ones(len(x), bool)
    for k, near in enumerate(tree.query_ball_point(np.column_stack([x, y]), isolation * fwhm)):
        near = np.asarray(near, int)
        near = near[np.hypot(px[near] - x[k], py[near] - y[k]) > 0.5 * fwhm]
        if fraction is not None:
            near = near[height[near] > fraction * peak[k]]
        isolated[k] = len(near) == 0
    edge = 4 * fwhm
    ny, nx = data.shape
    ok = (isolated & (x > edge) & (x < nx - 1 - edge)
          & (y > edge) & (y < ny - 1 - edge) & (peak > min_peak * std))
    if saturation is not None:
        ok &= peak + sky < 0.7 * saturation
    index = np.flatnonzero(ok)
    index = index[np.argsort(-flux[index])][:n_stars]
    return np.column_stack([x[index], y[index]])


def centroids(image, xy, box):
    data, mask = _values(image)
    _, sky, _ = sigma_clipped_stats(data, mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        x, y = centroid_sources(np.where(mask, 0.0, data - sky), xy[:, 0], xy[:, 1],
                                box_size=box, centroid_func=centroid_2dg, mask=mask)
    return np.column_stack([x, y])


def match_seeing(image, fwhm, target_fwhm):
    """
    ``image`` convolved with the Gaussian that takes its ``fwhm`` to ``target_fwhm``.

    Unchanged when ``target_fwhm`` is not larger. Masked pixels are left out
    of the convolution (normalised by that of the unmasked pixels' weights).
    """
    from astropy.nddata import CCDData

    if target_fwhm <= fwhm:
        return image
    sigma = np.sqrt(target_fwhm ** 2 - fwhm ** 2) / (2 * np.sqrt(2 * np.log(2)))
    data, mask = _values(image)
    good = (~mask).astype(float)
    total = ndimage.gaussian_filter(np.where(mask, 0.0, data), sigma, mode="constant")
    weight = ndimage.gaussian_filter(good, sigma, mode="constant")
    blurred = total / np.maximum(weight, 1e-12)
    return CCDData(blurred, unit=image.unit, mask=mask | (weight < 0.5))


def centroid_offsets(registered, reference, xy, fwhm, *, seeing=None):
    """
    Centroids in ``registered`` minus those in ``reference`` of the stars near ``xy``.

    The centroids are 2-D Gaussian fits in a box ``2 ceil(fwhm) + 1``
    pixels wide. ``seeing``, the FWHMs ``(registered, reference)``, first
    convolves the sharper frame to the broader's seeing (`match_seeing`), so
    that faint neighbours pull a star's centroid alike in both.
    """
    if seeing is not None:
        registered = match_seeing(registered, seeing[0], seeing[1])
        reference = match_seeing(reference, seeing[1], seeing[0])
    box = int(2 * np.ceil(fwhm) + 1)
    _, mask = _values(registered)
    grown = ndimage.binary_dilation(mask, iterations=box // 2 + 1)
    inside = ~grown[np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)]
    xy = xy[inside]
    if len(xy) == 0:
        return np.zeros((0, 2))
    offsets = centroids(registered, xy, box) - centroids(reference, xy, box)
    return offsets[np.all(np.isfinite(offsets), axis=1)]


def aperture_fluxes(image, xy, radius):
    data, mask = _values(image)
    annulus = CircularAnnulus(xy, 2.0 * radius, 3.0 * radius)
    sky = ApertureStats(data, annulus, mask=mask, sigma_clip=SigmaClip(3.0)).median
    stats = ApertureStats(data, CircularAperture(xy, radius), mask=mask)
    return stats.sum - sky * stats.sum_aper_area.value


def flux_ratio(registered, image, reference_xy, transform, radius):
    """Median aperture flux ratio, registered over original, and the per-star ratios."""
    image_xy = transform.inverse(reference_xy)
    ratios = aperture_fluxes(registered, reference_xy, radius) / aperture_fluxes(
        image, image_xy, radius)
    ratios = ratios[np.isfinite(ratios)]
    return float(np.median(ratios)), ratios


def sky_pixels(image, *, box=32):
    """
    The sky's residual (slow variations removed) and where it is sky.

    Sources (3 sigma, 5 connected pixels) are masked and dilated by 3
    pixels; the sky's slow variations (`Background2D`, ``box`` pixels) are
    subtracted.
    """
    data, mask = _values(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        background = Background2D(data, box, mask=mask, bkg_estimator=MedianBackground(),
                                  exclude_percentile=80.0,
                                  sigma_clip=SigmaClip(3.0))
    residual = data - background.background
    _, _, std = sigma_clipped_stats(residual, mask=mask)
    segments = detect_sources(np.where(mask, 0.0, residual), 3 * std, n_pixels=5)
    sources = np.zeros(data.shape, bool) if segments is None else segments.data > 0
    return residual, ~(mask | ndimage.binary_dilation(sources, iterations=3))


def sky_noise_ratio(image, *, box=32):
    """
    Scatter of the sky pixels over their propagated uncertainty (rms).

    The scatter is the MAD standard deviation of the sky's residual
    (`sky_pixels`).
    """
    residual, sky = sky_pixels(image, box=box)
    scatter = mad_std(residual[sky])
    return float(scatter / np.sqrt(np.mean(_sigma(image)[sky] ** 2))), int(sky.sum())


#: Lags ``(dy, dx)`` of `sky_correlation`: the neighbours a bilinear weight couples.
LAGS = ((0, 1), (1, 0), (1, 1), (1, -1))


def sky_correlation(image, *, box=32):
    """
    Correlation coefficients of the sky's residual at the `LAGS`.

    Over pairs of sky pixels (`sky_pixels`) both within 5 MAD standard
    deviations (faint stars left in the sky would dominate a plain mean).
    """
    residual, sky = sky_pixels(image, box=box)
    return _lag_correlations(residual, sky)


def _lag_correlations(values, usable):
    """Correlations at the `LAGS` over pairs of ``usable`` pixels both within 5 MAD std."""
    usable = usable & (np.abs(values) < 5 * mad_std(values[usable]))
    r = np.where(usable, values, 0.0)
    ny, nx = r.shape
    variance = np.sum(r ** 2) / np.sum(usable)
    rho = []
    for dy, dx in LAGS:
        a = (slice(0, ny - dy), slice(max(-dx, 0), nx - max(dx, 0)))
        b = (slice(dy, ny), slice(max(dx, 0), nx - max(-dx, 0)))
        both = usable[a] & usable[b]
        rho.append(float(np.sum(r[a] * r[b] * both) / np.sum(both) / variance))
    return np.array(rho)


def resampled_variance(transform, image_shape, shape, rho=(0, 0, 0, 0), step=4):
    """
    Mean factor a bilinear resampling applies to the variance of stationary noise.

    ``transform`` maps image pixels to the grid of ``shape`` (every
    ``step``-th pixel is used); ``rho`` are the input noise's correlation
    coefficients at the `LAGS`. With zero ``rho`` (white noise) the factor
    is the mean of ``sum w**2`` over the four bilinear weights, the
    propagation `astro_dia.registration.register` applies to the variance;
    otherwise the cross terms ``2 w_k w_l rho_kl`` are added.
    """
    yy, xx = np.mgrid[0:shape[0]:step, 0:shape[1]:step]
    xy = transform.inverse(np.column_stack([xx.ravel(), yy.ravel()]).astype(float))
    inside = ((xy[:, 0] >= 0) & (xy[:, 0] <= image_shape[1] - 1) & (xy[:, 1] >= 0)
              & (xy[:, 1] <= image_shape[0] - 1))
    fx, fy = (xy[inside] - np.floor(xy[inside])).T
    w00, w01, w10, w11 = (1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy
    rx, ry, rd, ra = rho
    factor = (w00 ** 2 + w01 ** 2 + w10 ** 2 + w11 ** 2
              + 2 * rx * (w00 * w01 + w10 * w11) + 2 * ry * (w00 * w10 + w01 * w11)
              + 2 * rd * w00 * w11 + 2 * ra * w01 * w10)
    return float(np.mean(factor))


def _clipped_rms(values):
    values = values[np.abs(values) < 5 * mad_std(values)]
    return float(np.sqrt(np.mean(values ** 2)))


def resampled_sky_noise(image, reference, alignment):
    """
    How registration changes the real sky's noise, against what it propagates.

    The sky's residual of ``image`` (`sky_pixels`, everything else masked)
    is registered with ``alignment`` (registration is linear, so this is
    the registered frame's sky less its registered slow background), and
    the output pixels whose bilinear footprint is all sky are compared with
    the input's sky pixels. Returns a dict:

    - ``measured``: rms of the registered sky over that of the input sky
      (both clipped at 5 MAD standard deviations);
    - ``propagated``: the same ratio of the propagated uncertainties (rms);
    - ``white``: the ratio for white noise (`resampled_variance`), which
      ``propagated`` must equal;
    - ``correlated``: the ratio predicted from the input sky's measured
      correlations (`sky_correlation`), which ``measured`` should equal;
    - ``rho``: those correlations.
    """
    from astropy.nddata import CCDData, StdDevUncertainty

    from astro_dia.registration import register

    residual, sky = sky_pixels(image)
    sigma = _sigma(image)
    sky_only = CCDData(np.where(sky, residual, 0.0), unit=image.unit, mask=~sky,
                       uncertainty=StdDevUncertainty(sigma))
    out = register(sky_only, reference, alignment=alignment)
    out_sky = ~out.mask
    rho = sky_correlation(image)
    shapes = (alignment.transform, image.shape, out.shape)
    return {"measured": _clipped_rms(out.data[out_sky]) / _clipped_rms(residual[sky]),
            "propagated": float(np.sqrt(np.mean(_sigma(out)[out_sky] ** 2)
                                        / np.mean(sigma[sky] ** 2))),
            "white": float(np.sqrt(resampled_variance(*shapes))),
            "correlated": float(np.sqrt(resampled_variance(*shapes, rho))),
            "rho": rho}


def exposure_noise_ratio(first, second, pixels):
    """
    Scatter of two exposures' difference over its propagated uncertainty.

    Two exposures of one field on one grid, with the same seeing: ``first
    - s second`` (``s`` their ratio, the median ratio on ``pixels``, less
    the median difference there) cancels the static sky -- stars,
    unresolved stars, flat-field errors -- and leaves the exposures' noise.
    Returns the MAD standard deviation of that difference over
    ``sqrt(sigma_1**2 + s**2 sigma_2**2)`` on ``pixels`` (1 when the
    uncertainties describe the noise), and the number of pixels.
    """
    z = _exposure_difference(first, second, pixels)
    return float(mad_std(z[pixels])), int(pixels.sum())


def _exposure_difference(first, second, pixels):
    """``(first - s second - offset) / sqrt(sigma_1**2 + s**2 sigma_2**2)``, as an image."""
    a, b = np.asarray(first.data, float), np.asarray(second.data, float)
    scale = np.median(a[pixels]) / np.median(b[pixels])
    difference = a - scale * b
    difference -= np.median(difference[pixels])
    return difference / np.hypot(_sigma(first), scale * _sigma(second))


def exposure_noise_correlation(first, second, pixels):
    """
    Correlations at the `LAGS` of two exposures' difference over its uncertainty.

    As `exposure_noise_ratio`, on ``pixels`` (pairs of them both within 5
    MAD standard deviations): the noise's own correlation between
    neighbouring pixels, which a per-pixel uncertainty leaves out.
    """
    return _lag_correlations(_exposure_difference(first, second, pixels), pixels)


def injected_noise_ratio(image, reference, alignment, *, seed=0):
    """
    Scatter over propagated uncertainty of white noise registered like ``image``.

    Gaussian noise of ``image``'s uncertainty is registered with
    ``alignment`` (``image``'s mask); returns the standard deviation of the
    registered noise over its propagated uncertainty, pixel by pixel
    (1 when the propagation is right), and the number of pixels.
    """
    from astropy.nddata import CCDData, StdDevUncertainty

    from astro_dia.registration import register

    sigma = _sigma(image)
    noise = np.random.default_rng(seed).normal(0.0, sigma)
    out = register(CCDData(noise, unit=image.unit, mask=image.mask,
                           uncertainty=StdDevUncertainty(sigma)), reference, alignment=alignment)
    good = ~out.mask
    return float(np.std(out.data[good] / _sigma(out)[good])), int(good.sum())


def _sigma(image):
    from astropy.nddata import StdDevUncertainty

    return np.asarray(image.uncertainty.represent_as(StdDevUncertainty).array, float)
