"""
Transforms between two frames: from their WCSs, or from matched stars (private).

All transforms map 0-based image pixel ``(x, y)`` to reference pixel
``(x, y)`` and are scikit-image geometric transforms (3 x 3 matrices).

- `wcs_transform`: the affine transform that best follows image pixel ->
  sky -> reference pixel over a grid of the image (with its largest
  departure, the distortion an affine transform cannot follow);
- `triangle_match`: astroalign's asterism (triangle) matching of the
  brightest stars of both frames, for frames with no usable first guess;
- `refine`: stars of both frames paired by nearest neighbour under a first
  guess, then the simplest model the pairs need (translation, Euclidean,
  similarity or affine, chosen by the Bayesian information criterion) fitted
  by least squares with outlying pairs rejected, and paired again.
"""

import numpy as np
from scipy.spatial import cKDTree
from skimage.transform import AffineTransform, EuclideanTransform, SimilarityTransform

from ._inputs import RegistrationError

__all__ = []

#: Models in order of complexity, with their number of parameters.
MODELS = {"translation": 2, "euclidean": 3, "similarity": 4, "affine": 6}
_CLASSES = {"translation": EuclideanTransform, "euclidean": EuclideanTransform,
            "similarity": SimilarityTransform, "affine": AffineTransform}
#: Pairs whose residual exceeds this many robust standard deviations are dropped.
CLIP = 4.0
#: Smallest residual (pixels) counted as outlying, so that perfect data keep all pairs.
MIN_CLIP_RADIUS = 0.05
#: Centroid error (pixels) added to every star's in the weights: systematics.
FLOOR = 0.02
#: Stars astroalign matches by their triangles (the brightest of each frame).
CONTROL_POINTS = 50


def fit_model(model, src, dst, weights=None):
    """
    Weighted least-squares ``model`` (a key of `MODELS`) taking ``src`` to ``dst``.

    scikit-image's ``estimate`` takes no weights for every model, so the
    fit is `numpy.linalg.lstsq` on the linear parameters (translation,
    similarity ``x' = a x - b y + tx, y' = b x + a y + ty``, affine) or the
    weighted Procrustes solution (Euclidean: rotation and translation);
    the result is a scikit-image transform.
    """
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, float)
    if model == "translation":
        return EuclideanTransform(translation=np.average(dst - src, axis=0, weights=w))
    centre_s, centre_d = np.average(src, axis=0, weights=w), np.average(dst, axis=0, weights=w)
    s, d = src - centre_s, dst - centre_d
    if model == "euclidean":
        angle = np.arctan2(np.sum(w * (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0])),
                           np.sum(w * (s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1])))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        return EuclideanTransform(rotation=angle, translation=centre_d - rotation @ centre_s)
    root = np.sqrt(w)[:, None]
    if model == "similarity":
        # Rows for x' and y': (a, b) multiply (x, -y) and (y, x).
        design = np.vstack([np.column_stack([s[:, 0], -s[:, 1]]),
                            np.column_stack([s[:, 1], s[:, 0]])])
        (a, b), *_ = np.linalg.lstsq(design * np.vstack([root, root]),
                                     np.concatenate([d[:, 0], d[:, 1]]) * np.concatenate(
                                         [root[:, 0], root[:, 0]]), rcond=None)
        linear = np.array([[a, -b], [b, a]])
    else:
        linear_t, *_ = np.linalg.lstsq(s * root, d * root, rcond=None)
        linear = linear_t.T
    if not np.all(np.isfinite(linear)) or abs(np.linalg.det(linear)) < 1e-6:
        raise RegistrationError(f"the {model} fit to the matched stars failed (they may lie "
                                "on a line); match more stars, e.g. with a lower threshold")
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre_d - linear @ centre_s
    return _CLASSES[model](matrix=matrix)


def residuals(transform, src, dst):
    """Distance (pixels) between each transformed ``src`` and its ``dst``."""
    return np.hypot(*(transform(src) - dst).T)


def choose_model(src, dst, weights=None, models=tuple(MODELS)):
    """
    The model of ``models`` with the lowest Bayesian information criterion.

    With ``n = 2 N`` coordinates and ``k`` parameters, BIC = n ln(WRSS / n)
    + k ln n (WRSS the weighted residual sum of squares): a model with more
    parameters is taken only when it lowers the residuals by more than
    chance would. Models need ``k / 2 + 1`` pairs or more to take part.
    """
    n = 2 * len(src)
    w = np.ones(len(src)) if weights is None else weights
    best = None
    for model in models:
        k = MODELS[model]
        if len(src) < k // 2 + 1 and model != "translation":
            continue
        transform = fit_model(model, src, dst, w)
        wrss = float(np.sum(w * residuals(transform, src, dst) ** 2))
        bic = n * np.log(max(wrss, 1e-24 * np.sum(w)) / n) + k * np.log(n)
        if best is None or bic < best[0] - 1e-9:
            best = (bic, model, transform)
    return best[1], best[2]


def pair_stars(predicted, reference_xy, radius):
    """
    Indices ``(i, j)`` of mutual nearest neighbours closer than ``radius``.

    ``predicted`` are the image stars carried to the reference's pixels.
    """
    if len(predicted) == 0 or len(reference_xy) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    forward, backward = cKDTree(reference_xy), cKDTree(predicted)
    distance, j = forward.query(predicted, distance_upper_bound=radius)
    i = np.flatnonzero(np.isfinite(distance))
    j = j[i]
    _, back = backward.query(reference_xy[j])
    mutual = back == i
    return i[mutual], j[mutual]


def fit_pairs(src, dst, weights, models, min_stars):
    """
    Fit the model the pairs need, dropping outlying pairs.

    A pair is outlying when its weighted residual exceeds `CLIP` robust
    standard deviations (and `MIN_CLIP_RADIUS`); the fit is repeated until
    no pair changes side.

    Returns
    -------
    model : str
    transform : skimage transform
    keep : bool array of the pairs kept
    """
    keep = np.ones(len(src), bool)
    for _ in range(10):
        model, transform = choose_model(src[keep], dst[keep], weights[keep], models)
        r = residuals(transform, src, dst)
        z = r * np.sqrt(weights)
        sigma = np.median(z[keep]) / 1.1774  # a 2-D Gaussian's distances: median 1.1774 s
        new = (z < CLIP * sigma) | (r < MIN_CLIP_RADIUS)
        if new.sum() < min_stars or np.array_equal(new, keep):
            break
        keep = new
    if keep.sum() < min_stars:
        raise RegistrationError(f"only {keep.sum()} stars agree on one transform (at least "
                                f"{min_stars} needed)")
    return model, transform, keep


def refine(guess, image_stars, reference_stars, *, radius, models=tuple(MODELS), min_stars):
    """
    Pair the stars under ``guess`` and fit the model they need.

    Each pair weighs ``1 / (e_i**2 + e_r**2 + FLOOR**2)`` with ``e`` the
    stars' centroid errors (`Stars.error`); pairs whose normalised residual
    exceeds `CLIP` robust standard deviations are dropped (blends, mismatches)
    and the fit repeated, then the stars are paired again within a radius
    shrunk to five times the rms.

    Returns
    -------
    model : str
    transform : skimage transform
    i, j : index arrays of the pairs kept (image, reference)
    """
    image_xy, reference_xy = image_stars.xy, reference_stars.xy
    transform = guess
    model = None
    for _ in range(4):
        i, j = pair_stars(transform(image_xy), reference_xy, radius)
        if len(i) < min_stars:
            raise RegistrationError(
                f"only {len(i)} stars pair up within {radius:.1f} px under the first guess "
                f"(at least {min_stars} needed)")
        w = 1.0 / (image_stars.error[i] ** 2 + reference_stars.error[j] ** 2 + FLOOR ** 2)
        model, transform, keep = fit_pairs(image_xy[i], reference_xy[j], w, models, min_stars)
        i, j = i[keep], j[keep]
        rms = float(np.sqrt(np.mean(residuals(transform, image_xy[i], reference_xy[j]) ** 2)))
        new_radius = max(5.0 * rms, 1.0)
        if new_radius >= radius:
            break
        radius = new_radius
    return model, transform, i, j


def triangle_match(image_xy, reference_xy):
    """astroalign's similarity transform from the brightest stars' triangles."""
    import astroalign

    if len(image_xy) < 3 or len(reference_xy) < 3:
        raise RegistrationError(
            f"too few stars to match: {len(image_xy)} in the image, {len(reference_xy)} in "
            "the reference (3 or more each); lower `threshold`, or give both frames a WCS "
            "and use method='wcs'")
    # Triangles are built from each star's nearest neighbours, so both lists
    # should hold the same stars: take as many of the brightest from each.
    n = min(CONTROL_POINTS, len(image_xy), len(reference_xy))
    errors = []
    for count in dict.fromkeys((n, CONTROL_POINTS)):
        try:
            transform, _ = astroalign.find_transform(image_xy[:count], reference_xy[:count],
                                                     max_control_points=count)
            return transform
        except (ValueError, astroalign.MaxIterError) as error:
            errors.append(str(error))
    raise RegistrationError(
        "no common pattern of stars found between the image and the reference "
        f"(astroalign: {errors[-1]}); check that the frames overlap and show the same field, "
        "lower `threshold`, or give both frames a WCS and use method='wcs'")


def wcs_transform(image_wcs, reference_wcs, shape, n_grid=11):
    """
    The affine transform image pixel -> reference pixel through the sky.

    Returns
    -------
    transform : `~skimage.transform.AffineTransform`
    departure : float
        Largest distance (pixels) between the affine transform and the
        exact WCS mapping on the grid.
    """
    ny, nx = shape
    gy, gx = np.meshgrid(np.linspace(0, ny - 1, n_grid), np.linspace(0, nx - 1, n_grid),
                         indexing="ij")
    gx, gy = gx.ravel(), gy.ravel()
    try:
        world = image_wcs.pixel_to_world_values(gx, gy)
        rx, ry = reference_wcs.world_to_pixel_values(*world)
    except Exception as error:  # astropy raises several kinds for a bad WCS
        raise RegistrationError(f"the WCSs could not map the image onto the reference "
                                f"({error}); check both WCSs or use method='stars'") from None
    src, dst = np.column_stack([gx, gy]), np.column_stack([rx, ry])
    good = np.all(np.isfinite(dst), axis=1)
    if good.sum() < 3:
        raise RegistrationError("the image's pixels fall outside the reference's WCS "
                                "(the frames do not overlap on the sky)")
    transform = fit_model("affine", src[good], dst[good])
    return transform, float(np.max(residuals(transform, src[good], dst[good])))
