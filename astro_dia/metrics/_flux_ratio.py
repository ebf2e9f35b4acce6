"""
Photometric scale factor from aperture photometry of stars (private).

The public face is `astro_dia.metrics.flux_ratio`. Nothing here fits a
kernel: stars are found in the reference (photutils), the bright, isolated
and unsaturated ones are measured in the same large apertures in both
frames with a local background from an annulus, and their flux ratios are
combined into one weighted mean with an honest error.
"""

import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.nddata import NDData
from astropy.stats import SigmaClip, mad_std, sigma_clipped_stats
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning

from ..noise._detector import uncertainty_variance
from ..noise._header import SATURATION_KEYWORDS, header_float
from ..fitting._validation import as_image, check_pair, positive_number

__all__ = []

#: Pixels at or above this fraction of the saturation level count as saturated
#: (the response of many CCDs is no longer linear just below saturation).
NEAR_SATURATION = 0.9

#: Stars on which the FWHM is measured (the brightest unsaturated peaks), and
#: how many of them give its first guess.
N_FWHM_STARS, N_FIRST_GUESS = 25, 9

#: Those stars are at least this many pixels from a saturated or bad pixel
#: (the wings of a saturated star would pass for a wide PSF).
FWHM_CLEARANCE = 15

#: Most passes of the outlier rejection of the per-star ratios.
MAX_CLIP_PASSES = 10


@dataclass(frozen=True)
class FluxRatio:
    """
    The flux ratio target / reference of a set of stars (see `flux_ratio`).

    Attributes
    ----------
    ratio : float
        Weighted mean of the per-star ratios: the photometric scale factor P.
    ratio_err : float
        Its standard error (random-effects weights, scaled up by the
        observed scatter when that exceeds the errors).
    n_stars : int
        Number of stars combined (after outlier rejection).
    fwhm : tuple of float
        ``(reference, target)`` FWHM in pixels, measured or given.
    aperture_radius : float
        Radius of the apertures, in pixels.
    scatter : float
        Extra scatter of the per-star ratios beyond their errors (the
        random-effects standard deviation, 0 when there is none).
    stars : `~astropy.table.QTable`
        One row per star that passed the selection and ``snr_min``:
        ``x``, ``y`` (0-based pixels),
        ``flux_ref``, ``flux_ref_err``, ``flux_tgt``, ``flux_tgt_err``
        (background-subtracted aperture sums), ``ratio``, ``ratio_err``
        and ``used`` (False for the ratios rejected as outliers).
    """

    ratio: float
    ratio_err: float
    n_stars: int
    fwhm: tuple
    aperture_radius: float
    scatter: float
    stars: QTable = field(repr=False)


def _as_checked_pair(reference, target):
    """Validated `_validation.Image` copies of the two frames (arrays are wrapped)."""
    images = []
    for obj, name in ((reference, "reference"), (target, "target")):
        if isinstance(obj, u.Quantity):
            obj = NDData(obj.value, unit=obj.unit)
        elif isinstance(obj, (np.ndarray, list, tuple)):
            obj = NDData(np.asarray(obj))
        images.append(as_image(obj, name))
    return check_pair(*images), images[1]


def _radii(aperture_radius, annulus_radii, isolation_radius):
    """The validated radii (FWHM units): aperture, ``(inner, outer)``, isolation."""
    aperture_radius = positive_number(aperture_radius, "aperture_radius")
    if np.ndim(annulus_radii) != 1 or len(annulus_radii) != 2:
        raise ValueError(f"annulus_radii must be a pair (inner, outer), got {annulus_radii!r}")
    inner, outer = (positive_number(v, "annulus_radii") for v in annulus_radii)
    if not aperture_radius < inner < outer:
        raise ValueError(f"annulus_radii must satisfy aperture_radius < inner < outer, got "
                         f"aperture_radius={aperture_radius}, annulus_radii={annulus_radii}")
    isolation_radius = (aperture_radius + 1.5 if isolation_radius is None
                        else positive_number(isolation_radius, "isolation_radius"))
    return aperture_radius, (inner, outer), isolation_radius


def _fwhm_pair(fwhm):
    """``fwhm`` as a ``(reference, target)`` pair of positive floats, or None."""
    if fwhm is None:
        return None
    values = np.atleast_1d(np.asarray(fwhm, dtype=float))
    if values.size not in (1, 2):
        raise ValueError(f"fwhm must be one number or a (reference, target) pair, got {fwhm!r}")
    values = np.broadcast_to(values, 2)
    return tuple(positive_number(v, "fwhm") for v in values)


def _unit_factor(image):
    """Factor from the unit the image came in to the unit of its validated data."""
    unit = image.source.unit
    return 1.0 if unit is None or unit == image.unit else unit.to(image.unit)


def _saturation_level(saturation, image, name):
    """The saturation level of one frame in its data unit (inf when unknown)."""
    if saturation is None:
        keyword, value = header_float(image.meta, SATURATION_KEYWORDS, "saturation level")
        return np.inf if keyword is None else float(value) * _unit_factor(image)
    if isinstance(saturation, u.Quantity):
        if not saturation.unit.is_equivalent(image.unit):
            raise u.UnitsError(f"saturation is in {saturation.unit} but the {name} in "
                               f"{image.unit}; give it in the data unit")
        saturation = saturation.to_value(image.unit)
    return positive_number(saturation, "saturation")


def _variance(image, name):
    """The per-pixel variance of an image's ``uncertainty``, or None."""
    if image.uncertainty is None:
        return None
    return uncertainty_variance(image.source, name=name) * _unit_factor(image) ** 2


def _sky(data, bad):
    """Sigma-clipped median and standard deviation of the whole frame."""
    _, median, std = sigma_clipped_stats(data, mask=bad)
    return float(median), float(max(std, np.finfo(float).tiny))


def _bright_peaks(image, distance_to_bad, sky):
    """``(x, y)`` of the brightest local maxima far from bad pixels (for the FWHM)."""
    from photutils.detection import find_peaks
    from photutils.utils.exceptions import NoDetectionsWarning

    median, std = sky
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        peaks = find_peaks(image.data - median, 20 * std, box_size=11,
                           mask=distance_to_bad <= FWHM_CLEARANCE, border_width=12)
    if peaks is None or len(peaks) < 3:
        raise ValueError("too few bright unsaturated stars (fewer than 3) to measure the "
                         "FWHM; give fwhm=")
    peaks.sort("peak_value", reverse=True)
    return np.column_stack([peaks["x_peak"], peaks["y_peak"]])[:N_FWHM_STARS]


def _fitted_fwhm(data, bad, xy, fit_shape):
    """Median FWHM of circular Gaussians fitted at ``xy`` (photutils fit_fwhm)."""
    from photutils.psf import fit_fwhm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        values = fit_fwhm(data, xypos=xy, fit_shape=fit_shape, mask=bad)
    values = values[np.isfinite(values) & (values > 0.5) & (values < 2 * fit_shape)]
    if values.size < 3:
        raise ValueError("the FWHM could not be measured on the stars; give fwhm=")
    return float(np.median(values))


def _measure_fwhm(reference, target, distance_to_bad, skies):
    """``(reference, target)`` FWHM measured on the reference's brightest peaks."""
    xy = _bright_peaks(reference, distance_to_bad, skies[0])
    frames = [(reference.data - skies[0][0], reference.bad),
              (target.data - skies[1][0], target.bad)]
    # a first guess on 11 x 11 boxes around the brightest few, then a fit on
    # boxes of about three FWHM (as wide seeing needs) around all of them
    first = [_fitted_fwhm(data, bad, xy[:N_FIRST_GUESS], 11) for data, bad in frames]
    return tuple(_fitted_fwhm(data, bad, xy, 2 * int(np.ceil(1.5 * guess)) + 1)
                 for (data, bad), guess in zip(frames, first))


def _detect(reference, fwhm, sky, threshold):
    """Sources of the reference (DAOStarFinder): ``(x, y)`` and peak above the sky."""
    from photutils.detection import DAOStarFinder
    from photutils.utils.exceptions import NoDetectionsWarning

    median, std = sky
    finder = DAOStarFinder(threshold * std, fwhm, exclude_border=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        sources = finder(reference.data - median, mask=reference.bad)
    if sources is None:
        return np.empty((0, 2)), np.empty(0)
    xy = np.column_stack([sources["x_centroid"], sources["y_centroid"]])
    return xy, np.asarray(sources["peak"], dtype=float)


def _given_positions(positions, reference, sky):
    """User positions as ``(x, y)`` and their peak above the sky (3 x 3 box maximum)."""
    if hasattr(positions, "colnames"):
        positions = np.column_stack([np.asarray(positions["x"], float),
                                     np.asarray(positions["y"], float)])
    xy = np.atleast_2d(np.asarray(positions, dtype=float))
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.all(np.isfinite(xy)):
        raise ValueError(f"positions must be finite (x, y) pairs, an (N, 2) array or a table "
                         f"with x and y columns; got shape {xy.shape}")
    ny, nx = reference.data.shape
    ix = np.clip(np.round(xy[:, 0]).astype(int), 1, nx - 2)
    iy = np.clip(np.round(xy[:, 1]).astype(int), 1, ny - 2)
    boxes = [reference.data[y - 1:y + 2, x - 1:x + 2].max() for x, y in zip(ix, iy)]
    return xy, np.asarray(boxes) - sky[0]


def _selected(xy, peak, sources, shape, radii, distance_to_bad):
    """Stars far from the edges, from saturated pixels and from comparable neighbours."""
    from scipy.spatial import cKDTree

    aperture, isolation, fraction = radii
    ny, nx = shape
    x, y = xy[:, 0], xy[:, 1]
    margin = aperture + 1  # the whole aperture in the frame (the annulus may overlap an edge)
    keep = (x >= margin) & (x <= nx - 1 - margin) & (y >= margin) & (y <= ny - 1 - margin)
    keep &= peak > 0
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    keep &= distance_to_bad[iy, ix] > isolation
    source_xy, source_peak = sources
    if len(source_xy):
        tree = cKDTree(source_xy)
        for i in np.flatnonzero(keep):
            near = tree.query_ball_point(xy[i], isolation)
            others = [j for j in near if np.hypot(*(source_xy[j] - xy[i])) > 1.0]
            keep[i] = not np.any(source_peak[others] >= fraction * peak[i])
    return keep


def _aperture_fluxes(image, variance, xy, aperture, annulus):
    """
    Aperture sums minus the annulus mean times the area, and their errors.

    The background is the plain mean of the annulus, not a clipped median:
    a linear estimate treats the light of faint neighbours alike in two
    frames of different noise and seeing (a clipped median took more of it
    for sky in the noisier frame: 2% on simulated pairs). The noise of the
    sky pixels is the sigma-clipped standard deviation of the annulus.
    """
    from photutils.aperture import ApertureStats

    error = None if variance is None else np.sqrt(np.where(np.isfinite(variance), variance, 0))
    local = ApertureStats(image.data, annulus, mask=image.bad)
    clipped = ApertureStats(image.data, annulus, mask=image.bad,
                            sigma_clip=SigmaClip(sigma=3.0, maxiters=10))
    stats = ApertureStats(image.data, aperture, mask=image.bad, error=error)
    area = np.asarray(stats.sum_aper_area.value)
    n_annulus = np.asarray(local.sum_aper_area.value)
    background = np.asarray(local.mean)
    sky_std = np.asarray(clipped.std)
    flux = np.asarray(stats.sum) - background * area
    # pixel noise (the uncertainty, else the annulus scatter), and the error of
    # the background times the area (variance of a median: pi/2 that of a mean)
    pixel_var = (np.asarray(stats.sum_err) ** 2 if variance is not None
                 else area * sky_std ** 2)
    flux_var = pixel_var + area ** 2 * (np.pi / 2) * sky_std ** 2 / n_annulus
    return flux, np.sqrt(flux_var)


def _photometry(images, xy, radii):
    """``[(flux, flux_err)]`` of each image at ``xy``: aperture and annulus ``radii`` (px)."""
    from photutils.aperture import CircularAnnulus, CircularAperture

    if not len(xy):
        return [(np.empty(0), np.empty(0))] * len(images)
    aperture = CircularAperture(xy, radii[0])
    annulus = CircularAnnulus(xy, radii[1], radii[2])
    return [_aperture_fluxes(image, _variance(image, name), xy, aperture, annulus)
            for image, name in zip(images, ("reference", "target"))]


def _random_effects_mean(ratio, error):
    """DerSimonian-Laird weighted mean, its (Knapp-Hartung scaled) error, and tau."""
    weight = 1.0 / error ** 2
    fixed = np.sum(weight * ratio) / np.sum(weight)
    q = np.sum(weight * (ratio - fixed) ** 2)
    n = ratio.size
    c = np.sum(weight) - np.sum(weight ** 2) / np.sum(weight)
    tau2 = max(0.0, (q - (n - 1)) / c) if n > 1 and c > 0 else 0.0
    weight = 1.0 / (error ** 2 + tau2)
    mean = np.sum(weight * ratio) / np.sum(weight)
    spread = np.sum(weight * (ratio - mean) ** 2) / (n - 1) if n > 1 else 1.0
    return float(mean), float(np.sqrt(max(spread, 1.0) / np.sum(weight))), float(np.sqrt(tau2))


def _combine(ratio, error, clip, min_stars):
    """Reject outlying ratios (``clip`` sigma of errors and scatter) and combine the rest."""
    used = np.ones(ratio.size, bool)
    centre = float(np.median(ratio))
    tau = float(np.sqrt(max(0.0, mad_std(ratio) ** 2 - np.median(error) ** 2)))
    for _ in range(MAX_CLIP_PASSES):
        z = np.abs(ratio - centre) / np.sqrt(error ** 2 + tau ** 2)
        new = z <= clip
        if new.sum() < min_stars:
            break
        changed = not np.array_equal(new, used)
        used = new
        centre, _, tau = _random_effects_mean(ratio[used], error[used])
        if not changed:
            break
    mean, mean_err, tau = _random_effects_mean(ratio[used], error[used])
    return mean, mean_err, tau, used


def measure_flux_ratio(reference, target, *, positions, fwhm, saturation, aperture_radius,
                       annulus_radii, isolation_radius, neighbour_fraction, snr_min,
                       detection_threshold, clip, min_stars):
    """The work of `astro_dia.metrics.flux_ratio` (arguments as documented there)."""
    from scipy import ndimage

    reference, target = _as_checked_pair(reference, target)
    fwhm = _fwhm_pair(fwhm)
    aperture_radius, (inner, outer), isolation_radius = _radii(
        aperture_radius, annulus_radii, isolation_radius)
    neighbour_fraction = positive_number(neighbour_fraction, "neighbour_fraction")
    clip = positive_number(clip, "clip")
    min_stars = int(min_stars)
    if min_stars < 2:
        raise ValueError(f"min_stars must be at least 2, got {min_stars}")

    near_saturated = ((reference.data >= NEAR_SATURATION *
                       _saturation_level(saturation, reference, "reference"))
                      | (target.data >= NEAR_SATURATION *
                         _saturation_level(saturation, target, "target")))
    # distance of every pixel to the nearest saturated or bad one, in pixels
    distance_to_bad = ndimage.distance_transform_edt(
        ~(near_saturated | reference.bad | target.bad))
    skies = (_sky(reference.data, reference.bad), _sky(target.data, target.bad))
    if fwhm is None:
        fwhm = _measure_fwhm(reference, target, distance_to_bad, skies)
    scale = max(fwhm)
    sources = _detect(reference, fwhm[0], skies[0], detection_threshold)
    if positions is None:
        xy, peak = sources
    else:
        xy, peak = _given_positions(positions, reference, skies[0])
    radii = (aperture_radius * scale, isolation_radius * scale, neighbour_fraction)
    keep = _selected(xy, peak, sources, reference.data.shape, radii, distance_to_bad)
    xy = xy[keep]
    (flux_ref, err_ref), (flux_tgt, err_tgt) = _photometry(
        (reference, target), xy, (aperture_radius * scale, inner * scale, outer * scale))
    with np.errstate(divide="ignore", invalid="ignore"):
        good = ((flux_ref / err_ref >= snr_min) & (flux_tgt / err_tgt >= snr_min)
                & np.isfinite(err_ref) & np.isfinite(err_tgt))
    if good.sum() < min_stars:
        raise ValueError(
            f"only {int(good.sum())} bright, isolated, unsaturated stars were found "
            f"(min_stars={min_stars}); use a larger field, lower snr_min (now {snr_min}), "
            f"raise neighbour_fraction (now {neighbour_fraction}), or check saturation= and "
            f"fwhm= (now {fwhm[0]:.2f}, {fwhm[1]:.2f} pixels)")
    flux_ref, err_ref, flux_tgt, err_tgt = (a[good] for a in (flux_ref, err_ref, flux_tgt,
                                                               err_tgt))
    ratio = flux_tgt / flux_ref
    ratio_err = np.abs(ratio) * np.hypot(err_tgt / flux_tgt, err_ref / flux_ref)
    mean, mean_err, tau, used = _combine(ratio, ratio_err, clip, min_stars)
    stars = QTable({"x": xy[good, 0], "y": xy[good, 1], "flux_ref": flux_ref,
                    "flux_ref_err": err_ref, "flux_tgt": flux_tgt, "flux_tgt_err": err_tgt,
                    "ratio": ratio, "ratio_err": ratio_err, "used": used})
    return FluxRatio(ratio=mean, ratio_err=mean_err, n_stars=int(used.sum()),
                     fwhm=tuple(float(f) for f in fwhm),
                     aperture_radius=float(aperture_radius * scale), scatter=tau, stars=stars)
