"""
`find_transform` and `register` (private; public through `astro_dia.registration`).
"""

import copy
import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.nddata import CCDData
from astropy.utils.exceptions import AstropyUserWarning
from scipy import ndimage

from . import _match
from ._inputs import RegistrationError, celestial_wcs, output_header, read_frame, \
    rebuild_uncertainty, saturation_level
from ._reference import ReferenceStars
from ._resample import coverage, resample as _resample, shift_whole
from ._stars import find_stars, fit_centroids

__all__ = []

METHODS = ("auto", "wcs", "stars")
#: ``resample=False`` needs the transform to depart from a pure translation
#: by less than this (pixels) over the image.
TRANSLATION_TOLERANCE = 0.1
#: With a WCS as first guess, stars pair up within max(this, 2 FWHM) pixels.
WCS_RADIUS = 5.0
#: After astroalign's match, stars pair up within max(this, FWHM) pixels.
MATCH_RADIUS = 3.0
#: The final fit uses the 2-D centroids of at most this many pairs, the best measured.
POLISH_STARS = 150
#: Seeing is matched before the final centroids when the Gaussian that turns the
#: sharper frame's FWHM into the broader's is wider than this (sigma, pixels).
MATCH_SIGMA = 0.25


class RegistrationWarning(AstropyUserWarning):
    """Registration fell back on a weaker method, or its transform needs a look."""


@dataclass
class Alignment:
    """
    The transform from an image's pixels to a reference's, and how it was found.

    Attributes
    ----------
    transform : ``skimage.transform.ProjectiveTransform``
        Maps 0-based image pixel ``(x, y)`` to reference pixel ``(x, y)``.
    model : str
        ``'translation'``, ``'euclidean'``, ``'similarity'`` or ``'affine'``.
    method : str
        What found it: ``'wcs'``, ``'stars'`` or ``'wcs+stars'`` (the WCS
        refined by stars).
    n_stars : int
        Stars matched between the frames (0 when none were used).
    rms : float
        Root mean square distance (pixels) between the matched reference
        stars and the transformed image stars; NaN with no stars.
    image_xy, reference_xy : (n_stars, 2) arrays
        The matched stars' centroids.
    wcs_departure : float or None
        For a transform from WCSs, the largest distance (pixels) between
        the affine transform and the WCSs' exact mapping (distortion).
    image_fwhm, reference_fwhm : float
        FWHM (pixels) of the stars, as measured (NaN when not measured).
    """

    transform: object
    model: str
    method: str
    n_stars: int = 0
    rms: float = float("nan")
    image_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    reference_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    wcs_departure: float | None = None
    image_fwhm: float = float("nan")
    reference_fwhm: float = float("nan")

    @property
    def matrix(self):
        """The 3 x 3 matrix of `transform`, image ``(x, y, 1)`` -> reference."""
        return np.array(self.transform.params, dtype=float)

    @property
    def translation(self):
        """``(dx, dy)`` (pixels): where the image's pixel (0, 0) lands, the matrix's last column."""
        return self.matrix[:2, 2].copy()

    @property
    def rotation(self):
        """Rotation (degrees, counter-clockwise in ``x, y``)."""
        m = self.matrix
        return float(np.degrees(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))

    @property
    def scale(self):
        """Square root of the area ratio (reference pixels per image pixel)."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:2, :2]))))


def _stars(frame, fwhm, threshold, saturation):
    return find_stars(frame.data, frame.mask, fwhm=fwhm, threshold=threshold,
                      saturation=saturation_level(frame, saturation))


def _alignment(model, transform, method, img, rst, xy_i, xy_r, **extra):
    rms = (float(np.sqrt(np.mean(_match.residuals(transform, xy_i, xy_r) ** 2)))
           if len(xy_i) else float("nan"))
    return Alignment(transform, model, method, len(xy_i), rms, xy_i, xy_r,
                     image_fwhm=img.fwhm, reference_fwhm=rst.fwhm, **extra)


def _blur_near(data, mask, xy, sigma, half):
    """
    ``data`` convolved with a Gaussian of ``sigma`` within ``half`` pixels of each ``xy``.

    The convolution is normalised by that of the unmasked pixels' weights,
    so masked pixels and the frame's edges do not pull the values; the
    returned mask adds the pixels where less than half the weight was
    unmasked. Elsewhere the data are returned unchanged: only the cutouts
    the centroids are fitted in are convolved.
    """
    out, out_mask = data.copy(), mask.copy()
    pad = int(np.ceil(4 * sigma))
    ny, nx = data.shape
    for x, y in np.round(xy).astype(int):
        y0, y1 = max(y - half - pad, 0), min(y + half + pad + 1, ny)
        x0, x1 = max(x - half - pad, 0), min(x + half + pad + 1, nx)
        good = ~mask[y0:y1, x0:x1]
        total = ndimage.gaussian_filter(np.where(good, data[y0:y1, x0:x1], 0.0), sigma,
                                        mode="constant")
        weight = ndimage.gaussian_filter(good.astype(float), sigma, mode="constant")
        inner = (slice(max(y - half, 0), min(y + half + 1, ny)),
                 slice(max(x - half, 0), min(x + half + 1, nx)))
        local = (slice(inner[0].start - y0, inner[0].stop - y0),
                 slice(inner[1].start - x0, inner[1].stop - x0))
        out[inner] = total[local] / np.maximum(weight[local], 1e-12)
        out_mask[inner] |= weight[local] < 0.5
    return out, out_mask


def _polish(frame, ref, img, rst, i, j, models, min_stars, known=None):
    """
    The final fit, on 2-D Gaussian centroids of the (up to `POLISH_STARS`) best pairs.

    The seeing is matched first: around each star the sharper frame is
    convolved with the Gaussian that brings its FWHM to the broader's. A
    faint neighbour pulls a star's centroid the more the broader its PSF,
    so without this every blended star sits off by its own amount between
    frames of different seeing (0.2-0.3 px rms on pyDIA's bulge field at 7
    against 4.3 px FWHM), a scatter that the fit then spreads over the
    transform. Convolution with a symmetric kernel moves no isolated star.

    Returns ``model, transform, image_xy, reference_xy``; the finder's
    centroids are kept if too few 2-D fits succeed. ``known`` (a
    `ReferenceStars`) gives the reference's centroids, each fitted once.
    """
    error = np.hypot(img.error[i], rst.error[j])
    best = np.argsort(error, kind="stable")[:POLISH_STARS]
    i, j = i[best], j[best]
    fwhm = max(img.fwhm, rst.fwhm)
    data_i, mask_i, data_r, mask_r = frame.data, frame.mask, ref.data, ref.mask
    sigma = np.sqrt(abs(img.fwhm ** 2 - rst.fwhm ** 2)) / (2 * np.sqrt(2 * np.log(2)))
    blur_reference = sigma > MATCH_SIGMA and img.fwhm > rst.fwhm
    if sigma > MATCH_SIGMA:
        half = int(round(fwhm)) + 2
        if blur_reference:
            data_r, mask_r = _blur_near(data_r, mask_r, rst.xy[j], sigma, half)
        else:
            data_i, mask_i = _blur_near(data_i, mask_i, img.xy[i], sigma, half)
    xy_i = fit_centroids(data_i, mask_i, img.x[i], img.y[i], fwhm=fwhm, sky=img.sky)
    # The reference's centroids fitted once (``known``) hold only where its
    # data are not convolved to this frame's seeing.
    xy_r = (known._centroids(j, fwhm) if known is not None and not blur_reference
            else fit_centroids(data_r, mask_r, rst.x[j], rst.y[j], fwhm=fwhm, sky=rst.sky))
    ok = np.all(np.isfinite(xy_i), axis=1) & np.all(np.isfinite(xy_r), axis=1)
    if ok.sum() < min_stars:
        xy_i, xy_r, ok = img.xy[i], rst.xy[j], np.ones(len(i), bool)
    w = 1.0 / (img.error[i] ** 2 + rst.error[j] ** 2 + _match.FLOOR ** 2)
    model, transform, keep = _match.fit_pairs(xy_i[ok], xy_r[ok], w[ok], models, min_stars)
    return model, transform, xy_i[ok][keep], xy_r[ok][keep]


def _check_overlap(transform, image_shape, reference_shape):
    inverse = np.linalg.inv(np.asarray(transform.params, float))
    if coverage(inverse, image_shape, reference_shape) == 0:
        raise RegistrationError(
            "the image and the reference do not overlap under the transform found "
            f"(the image's origin lands at reference pixel {transform.params[:2, 2]}); "
            "register frames of the same field, or check their WCSs")


def _find(frame, ref, method, models, fwhm, threshold, saturation, min_stars, known=None):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    wcs_i, wcs_r = celestial_wcs(frame), celestial_wcs(ref)
    have_wcs = wcs_i is not None and wcs_r is not None
    if method == "wcs" and not have_wcs:
        missing = " and ".join(n for n, w in (("image", wcs_i), ("reference", wcs_r))
                               if w is None)
        raise RegistrationError(f"method='wcs' needs both frames' celestial WCS; the {missing} "
                                "has none: give it one, or use method='stars'")
    guess = departure = None
    if have_wcs and method in ("wcs", "auto"):
        guess, departure = _match.wcs_transform(wcs_i, wcs_r, frame.shape)
        _check_overlap(guess, frame.shape, ref.shape)
        if departure > TRANSLATION_TOLERANCE:
            warnings.warn(f"the WCSs' mapping departs by up to {departure:.2f} px from an affine "
                          "transform (distortion); the registration follows the affine "
                          "transform", RegistrationWarning)
    img = _stars(frame, fwhm, threshold, saturation)
    rst = _stars(ref, fwhm, threshold, saturation) if known is None else known._stars_for(ref)
    if method == "wcs":
        radius = max(WCS_RADIUS, 2 * max(img.fwhm, rst.fwhm))
        i, j = _match.pair_stars(guess(img.xy), rst.xy, radius)
        return _alignment("affine", guess, "wcs", img, rst, img.xy[i], rst.xy[j],
                          wcs_departure=departure)
    if guess is not None:
        radius = max(WCS_RADIUS, 2 * max(img.fwhm, rst.fwhm))
        try:
            _, _, i, j = _match.refine(guess, img, rst, radius=radius, models=models,
                                       min_stars=min_stars)
            model, transform, xy_i, xy_r = _polish(frame, ref, img, rst, i, j, models,
                                                   min_stars, known)
            _check_overlap(transform, frame.shape, ref.shape)
            return _alignment(model, transform, "wcs+stars", img, rst, xy_i, xy_r,
                              wcs_departure=departure)
        except RegistrationError as error:
            first_error = error
    try:
        first = _match.triangle_match(img.xy, rst.xy)
        _, _, i, j = _match.refine(first, img, rst,
                                   radius=max(MATCH_RADIUS, max(img.fwhm, rst.fwhm)),
                                   models=models, min_stars=min_stars)
        model, transform, xy_i, xy_r = _polish(frame, ref, img, rst, i, j, models, min_stars,
                                               known)
    except RegistrationError as error:
        if guess is None:
            raise RegistrationError(f"{error}. Star matching failed: check that the frames "
                                    "overlap, lower `threshold` or `min_stars`, or give both "
                                    "frames a WCS") from None
        warnings.warn(f"stars could not refine the WCS transform ({first_error}; {error}); "
                      "the WCS alone registers the image", RegistrationWarning)
        return _alignment("affine", guess, "wcs", img, rst, np.zeros((0, 2)), np.zeros((0, 2)),
                          wcs_departure=departure)
    _check_overlap(transform, frame.shape, ref.shape)
    return _alignment(model, transform, "stars", img, rst, xy_i, xy_r)


def _models(model):
    if model is None:
        return tuple(_match.MODELS)
    if model not in _match.MODELS:
        raise ValueError(f"model must be None or one of {tuple(_match.MODELS)}, not {model!r}")
    return (model,)


def find_transform(image, reference, *, method="auto", model=None, fwhm=None, threshold=5.0,
                   saturation=None, min_stars=5, reference_stars=None):
    """
    Find the transform from an image's pixels to a reference's.

    See `register` for the parameters; this is its first half.

    Returns
    -------
    `Alignment`

    Examples
    --------
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, image, _ = make_image_pair(shape=(128, 128), shift=(0.3, -1.6), density=60,
    ...                                         target_sky=100.0, seed=0)
    >>> alignment = find_transform(image, reference, method="stars")
    >>> alignment.model, alignment.n_stars >= 5
    ('translation', True)
    >>> alignment.translation.round(1)   # (dx, dy): the image's stars sit at +(-1.6, 0.3)
    array([ 1.6, -0.3])
    """
    frame = read_frame(image, "image")
    ref = read_frame(reference, "reference", need_nddata=False)
    return _find(frame, ref, method, _models(model), fwhm, threshold, saturation, min_stars,
                 _known(reference_stars))


def _known(reference_stars):
    if reference_stars is not None and not isinstance(reference_stars, ReferenceStars):
        raise TypeError("reference_stars must be a ReferenceStars (or None), not "
                        f"{type(reference_stars).__name__}")
    return reference_stars


def _whole_shift(alignment, shape):
    """The whole-pixel shift ``(sx, sy)`` and the rest, refusing non-translations."""
    ny, nx = shape
    corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1],
                        [(nx - 1) / 2, (ny - 1) / 2]], float)
    translation = alignment.transform(corners[-1:])[0] - corners[-1]
    departure = float(np.max(np.hypot(*(alignment.transform(corners)
                                         - (corners + translation)).T)))
    if departure > TRANSLATION_TOLERANCE:
        raise RegistrationError(
            f"resample=False shifts by whole pixels, but the transform is a {alignment.model} "
            f"(rotation {alignment.rotation:.3f} deg, scale {alignment.scale:.5f}) that departs "
            f"from a translation by up to {departure:.2f} px over the image: use resample=True")
    shift = np.round(translation).astype(int)
    return (int(shift[0]), int(shift[1])), translation - shift


def _cards(header, alignment, resampled, covered, **extra):
    m = alignment.matrix
    cards = [("REGMETH", alignment.method, "registration: how the transform was found"),
             ("REGMODEL", alignment.model, "registration: transform model"),
             ("REGNSTAR", alignment.n_stars, "registration: stars matched")]
    if np.isfinite(alignment.rms):
        cards.append(("REGRMS", round(alignment.rms, 5), "[pix] rms of matched stars"))
    for row in range(2):
        for col in range(3):
            cards.append((f"REGA{row + 1}{col + 1}", float(m[row, col]),
                          "x_ref = A11 x + A12 y + A13 (0-based)" if (row, col) == (0, 0)
                          else "y_ref = A21 x + A22 y + A23" if (row, col) == (1, 0) else ""))
    cards += [("REGROT", round(alignment.rotation, 6), "[deg] registration rotation"),
              ("REGSCALE", round(alignment.scale, 8), "registration scale"),
              ("REGRESAM", bool(resampled), "resampled (T) or whole-pixel shift (F)"),
              ("REGCOVER", round(covered, 4), "fraction of the grid covered")]
    if alignment.wcs_departure is not None:
        cards.append(("REGWCSDP", round(alignment.wcs_departure, 4),
                      "[pix] WCS departure from affine"))
    for key, (value, comment) in extra.items():
        cards.append((key, value, comment))
    for key, value, comment in cards:
        header[key] = (value, comment)
    header.add_history(f"astro_dia.registration: {alignment.model} from {alignment.method}, "
                       f"{alignment.n_stars} stars, "
                       + ("resampled (bilinear)" if resampled else "whole-pixel shift"))


def register(image, reference, *, method="auto", resample=True, model=None, fwhm=None,
             threshold=5.0, saturation=None, min_stars=5, alignment=None, reference_stars=None):
    """
    Carry an image onto a reference's pixel grid.

    Parameters
    ----------
    image : `~astropy.nddata.CCDData` or `~astropy.nddata.NDData`
        The frame to register. Its unit, mask and uncertainty (standard
        deviation, variance or inverse variance) are carried; NaN or
        infinite pixels must be masked. Without an uncertainty the result
        has none (attach one first, e.g. with ``ccdproc.create_deviation``).
    reference : `~astropy.nddata.CCDData`, `~astropy.nddata.NDData` or 2-D array
        The frame whose grid (shape, WCS) the image is carried onto.
    method : {'auto', 'wcs', 'stars'}, optional
        ``'wcs'``: the transform through both frames' celestial WCSs (an
        affine fit to the WCSs' mapping); ``'stars'``: stars detected in
        both frames matched by their triangles (astroalign), then paired
        and fitted; ``'auto'`` (default): when both frames have a WCS, the
        WCS transform refined by stars (real WCSs are often off by a pixel),
        falling back on triangle matching and, if that fails too, on the WCS
        alone (with a `RegistrationWarning`); otherwise ``'stars'``.
    resample : bool, optional
        True (default): interpolate bilinearly onto the reference's grid,
        for any transform. False: shift by whole pixels only, with no
        interpolation and so no resampling noise; allowed only when the
        transform is a translation (within 0.1 px over the image). The
        fractional rest, under half a pixel, is left for the difference
        kernel to absorb and recorded in REGFRACX, REGFRACY.
    model : {None, 'translation', 'euclidean', 'similarity', 'affine'}, optional
        Transform fitted to the matched stars; None (default) takes the
        simplest the stars need (Bayesian information criterion).
    fwhm : float, optional
        FWHM (pixels) of the star finder's kernel; None measures it.
    threshold : float, optional
        Star detection threshold in sky standard deviations.
    saturation : float, optional
        Stars peaking above this are not used; default the SATURATE (or
        SATLEVEL) keyword, or none.
    min_stars : int, optional
        Fewest matched stars accepted.
    alignment : `Alignment`, optional
        A transform already found (by `find_transform`): skip the search.
    reference_stars : `ReferenceStars`, optional
        The reference's stars, found once (``ReferenceStars(reference)``)
        for registering many images to it; ``fwhm``, ``threshold`` and
        ``saturation`` then apply to the image alone. It must come from
        this very reference.

    Returns
    -------
    `~astropy.nddata.CCDData`
        The image on the reference's grid, in the image's unit: the data
        (flux-conserving bilinear interpolation), the variance through the
        squared interpolation weights (same uncertainty class), the mask
        grown over the interpolation footprint and set where the image does
        not cover the grid (data NaN there), the reference's WCS (for
        ``resample=False`` the image's own, shifted), and the transform in
        the header: REGMETH, REGMODEL, REGNSTAR, REGRMS (pixels), the matrix
        REGA11-REGA23, REGROT, REGSCALE, REGRESAM, REGCOVER (fraction of the
        grid covered), REGJACOB or REGSHIFX/REGSHIFY and REGFRACX/REGFRACY.

    Raises
    ------
    RegistrationError
        Too few stars match, the frames do not overlap, the data are
        malformed (not 2-D, unmasked NaN, uncertainty of another shape),
        ``resample=False`` for a transform that is not a translation, or
        ``reference_stars`` come from another reference.
    TypeError
        If ``alignment`` or ``reference_stars`` is of the wrong type.

    Examples
    --------
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, image, _ = make_image_pair(shape=(128, 128), shift=(0.3, -1.6), density=60,
    ...                                         target_sky=100.0, seed=0)
    >>> registered = register(image, reference)
    >>> registered.header["REGMODEL"], registered.unit, registered.uncertainty.array.shape
    ('translation', Unit("adu"), (128, 128))
    >>> whole = register(image, reference, resample=False)
    >>> whole.header["REGSHIFX"], whole.header["REGSHIFY"]
    (2, 0)
    """
    frame = read_frame(image, "image")
    ref = read_frame(reference, "reference", need_nddata=False)
    if alignment is None:
        alignment = _find(frame, ref, method, _models(model), fwhm, threshold, saturation,
                          min_stars, _known(reference_stars))
    elif not isinstance(alignment, Alignment):
        raise TypeError(f"alignment must be an Alignment, not {type(alignment).__name__}")
    header = output_header(frame)
    inverse = np.linalg.inv(alignment.matrix)
    covered = coverage(inverse, frame.shape, ref.shape, step=1 if min(ref.shape) < 256 else 4)
    if covered == 0:
        raise RegistrationError("the image and the reference do not overlap under the given "
                                "transform; register frames of the same field")
    if resample:
        data, variance, mask, jacobian = _resample(frame.data, frame.variance, frame.mask,
                                                   inverse, ref.shape)
        wcs = copy.deepcopy(ref.wcs)
        extra = {"REGJACOB": (round(jacobian, 8), "data x this: reference pixel area / image's"),
                 "REGORDER": (1, "interpolation order (bilinear)")}
    else:
        shift, rest = _whole_shift(alignment, frame.shape)
        data, variance, mask = shift_whole(frame.data, frame.variance, frame.mask, shift,
                                           ref.shape)
        wcs = copy.deepcopy(frame.wcs)
        if wcs is not None:
            wcs.wcs.crpix = wcs.wcs.crpix + np.array(shift, float)
        extra = {"REGSHIFX": (shift[0], "[pix] whole-pixel shift in x"),
                 "REGSHIFY": (shift[1], "[pix] whole-pixel shift in y"),
                 "REGFRACX": (round(float(rest[0]), 4), "[pix] x shift left to the kernel"),
                 "REGFRACY": (round(float(rest[1]), 4), "[pix] y shift left to the kernel")}
    _cards(header, alignment, resample, covered, **extra)
    unit = frame.unit if frame.unit is not None else u.dimensionless_unscaled
    return CCDData(data, unit=unit, mask=mask, uncertainty=rebuild_uncertainty(frame, variance),
                   meta=header, wcs=wcs)
