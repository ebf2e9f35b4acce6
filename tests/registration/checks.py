"""
Independent checks of a registered frame, with photutils alone.

Shared by the tests and ``benchmarks/validate_registration.py``:

- `bright_isolated`: bright, unsaturated stars of the reference with no
  detected neighbour within three FWHM, away from the edges;
- `centroid_offsets`: 2-D Gaussian centroids (`photutils.centroids.centroid_2dg`)
  of those stars in the registered frame minus those in the reference;
- `flux_ratio`: aperture fluxes (local sky from an annulus) of the stars in
  the registered frame over those in the original image, at the positions
  the true (or fitted) transform gives there;
- `sky_noise_ratio`: the scatter of the sky pixels (stars masked, the sky's
  slow variations removed) over the propagated uncertainty of the same pixels.
"""

import warnings

import numpy as np
from astropy.stats import SigmaClip, mad_std, sigma_clipped_stats
from astropy.utils.exceptions import AstropyUserWarning
from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture
from photutils.background import Background2D, MedianBackground
from photutils.centroids import centroid_2dg, centroid_sources
from photutils.detection import DAOStarFinder
from photutils.segmentation import detect_sources
from scipy import ndimage
from scipy.spatial import cKDTree


def _values(image):
    data = np.asarray(image.data, float)
    mask = np.zeros(data.shape, bool) if image.mask is None else np.asarray(image.mask, bool)
    return data, mask | ~np.isfinite(data)


def bright_isolated(reference, fwhm, *, saturation=None, n_stars=40, isolation=3.0, min_peak=30.0):
    """``(n, 2)`` x, y of bright isolated unsaturated stars of ``reference``."""
    data, mask = _values(reference)
    _, sky, std = sigma_clipped_stats(data, mask=mask)
    table = DAOStarFinder(3 * std, fwhm, exclude_border=True).find_stars(data - sky, mask=mask)
    names = table.colnames
    x = np.asarray(table["x_centroid" if "x_centroid" in names else "xcentroid"], float)
    y = np.asarray(table["y_centroid" if "y_centroid" in names else "ycentroid"], float)
    peak = np.asarray(table["peak"], float)
    flux = np.asarray(table["flux"], float)
    distance, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    edge = 4 * fwhm
    ny, nx = data.shape
    ok = ((distance[:, 1] > isolation * fwhm) & (x > edge) & (x < nx - 1 - edge)
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


def centroid_offsets(registered, reference, xy, fwhm):
    """Centroids in ``registered`` minus those in ``reference`` of the stars near ``xy``."""
    box = int(2 * np.ceil(1.5 * fwhm) + 1)
    _, mask = _values(registered)
    grown = ndimage.binary_dilation(mask, iterations=box // 2 + 1)
    inside = ~grown[np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)]
    xy = xy[inside]
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


def sky_noise_ratio(image, *, box=32):
    """
    Scatter of the sky pixels over their propagated uncertainty (rms).

    Sources (3 sigma, 5 connected pixels) are masked and dilated by 3
    pixels; the sky's slow variations (`Background2D`, ``box`` pixels) are
    subtracted; the scatter is the MAD standard deviation of what is left.
    """
    data, mask = _values(image)
    sigma = _sigma(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        background = Background2D(data, box, mask=mask, bkg_estimator=MedianBackground(),
                                  exclude_percentile=80.0,
                                  sigma_clip=SigmaClip(3.0))
    residual = data - background.background
    _, _, std = sigma_clipped_stats(residual, mask=mask)
    segments = detect_sources(np.where(mask, 0.0, residual), 3 * std, n_pixels=5)
    sources = np.zeros(data.shape, bool) if segments is None else segments.data > 0
    sky = ~(mask | ndimage.binary_dilation(sources, iterations=3))
    scatter = mad_std(residual[sky])
    return float(scatter / np.sqrt(np.mean(sigma[sky] ** 2))), int(sky.sum())


def _sigma(image):
    from astropy.nddata import StdDevUncertainty

    return np.asarray(image.uncertainty.represent_as(StdDevUncertainty).array, float)
