"""
2-D Gaussians fitted to many stars at once (private).

photutils fits stars one by one through astropy's modelling, a few
milliseconds a star. Here one Levenberg-Marquardt iteration updates every
star's parameters together in numpy arrays, so a frame's 150 stars take a
few milliseconds in all; each function fits the model of a photutils one
to the same pixels, and so reaches the same least-squares minimum:

- `gaussian_centroids`: the centres of photutils' ``centroid_2dg`` (as
  ``centroid_sources`` calls it): an elliptical Gaussian, amplitude, centre
  and covariance, with no constant term, sampled at the pixel centres;
- `gaussian_fwhms`: the FWHMs of photutils' ``fit_fwhm``: a circular
  Gaussian integrated over each pixel (``CircularGaussianPRF``), flux,
  centre and FWHM.

``centroid_2dg``'s Gaussian is written ``a exp(-(A dx**2 + 2 B dx dy + C
dy**2) / 2)`` with ``[[A, B], [B, C]]`` the inverse covariance: the same
family as astropy's ``Gaussian2D`` (any positive-definite covariance)
without its angle, which is undefined for a round star and slows the fit.
The boxes are cut as photutils cuts them: ``box`` pixels a side from
``ceil(x - box / 2)``; masked and non-finite pixels take no part.
"""

import numpy as np
from scipy.special import erf

__all__ = []

#: Fewest unmasked pixels a box needs, as ``centroid_2dg``.
MIN_PIXELS = 6
#: Most Levenberg-Marquardt iterations.
MAX_ITERATIONS = 100
#: A star's fit has converged when an accepted step changes its sum of squares
#: by less than the fraction `FTOL` and its watched parameters (centre, FWHM)
#: by less than `XTOL` pixels.
FTOL, XTOL = 1e-10, 1e-7
#: Smallest width (sigma, pixels) the moments may start from.
MIN_SIGMA = 0.1
#: FWHM over sigma of a Gaussian.
FWHM_SIGMA = 2 * np.sqrt(2 * np.log(2))


def _boxes(data, mask, x, y, box, sky):
    """
    The boxes around the stars that fit in the image.

    Returns ``index`` (of those stars), ``x0, y0`` (each box's first
    pixel), ``values`` (``(n, box, box)``, data - sky, 0 where not used),
    ``good`` (the pixels used) and ``raw`` (data - sky everywhere).
    """
    ny, nx = data.shape
    half = box // 2
    inside = (x >= half) & (x <= nx - 1 - half) & (y >= half) & (y <= ny - 1 - half)
    index = np.flatnonzero(inside)
    x0 = np.ceil(x[index] - box / 2).astype(int)
    y0 = np.ceil(y[index] - box / 2).astype(int)
    rows = (y0[:, None] + np.arange(box))[:, :, None]
    columns = (x0[:, None] + np.arange(box))[:, None, :]
    raw = np.asarray(data[rows, columns], float) - sky
    good = np.isfinite(raw)
    if mask is not None:
        good &= ~np.asarray(mask, bool)[rows, columns]
    return index, x0, y0, np.where(good, raw, 0.0), good, raw


def _levenberg_marquardt(params, evaluate, values, weights, allowed, watch):
    """
    Least squares of ``evaluate`` for every star at once.

    ``evaluate(p)`` gives the model ``(n, pixels)`` and its Jacobian
    ``(n, k, pixels)`` at parameters ``p`` ``(n, k)``; ``allowed(p)`` says
    which parameters are acceptable; ``watch`` are the columns whose
    change must fall below `XTOL`. Each star has its own damping (scaled by
    the diagonal of its normal matrix); a step is taken when it lowers the
    star's sum of squares. Returns the parameters reached.
    """
    n, k = params.shape
    if n == 0:
        return params
    model, jacobian = evaluate(params)
    residual = (model - values) * weights
    jacobian = jacobian * weights[:, None, :]
    cost = np.sum(residual ** 2, axis=1)
    damping = np.full(n, 1e-3)
    active = np.ones(n, bool)
    for _ in range(MAX_ITERATIONS):
        index = np.flatnonzero(active)
        if len(index) == 0:
            break
        j = jacobian[index]
        normal = j @ j.transpose(0, 2, 1)
        gradient = (j @ residual[index, :, None])[:, :, 0]
        diagonal = np.maximum(np.diagonal(normal, axis1=1, axis2=2), 1e-30)
        damped = normal + (damping[index, None] * diagonal)[:, :, None] * np.eye(k)
        with np.errstate(all="ignore"):
            try:
                step = -np.linalg.solve(damped, gradient[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:     # a degenerate star: pseudo-inverses for all
                step = -(np.linalg.pinv(damped) @ gradient[:, :, None])[:, :, 0]
            trial = params[index] + step
            trial_model, trial_jacobian = evaluate(trial)
            trial_residual = (trial_model - values[index]) * weights[index]
            trial_cost = np.sum(trial_residual ** 2, axis=1)
        better = (np.all(np.isfinite(step), axis=1) & np.isfinite(trial_cost)
                  & (trial_cost <= cost[index]) & allowed(trial))
        done = better & ((cost[index] - trial_cost <= FTOL * cost[index])
                         & np.all(np.abs(step[:, watch]) < XTOL, axis=1) | (trial_cost == 0))
        accepted = index[better]
        params[accepted] = trial[better]
        cost[accepted] = trial_cost[better]
        residual[accepted] = trial_residual[better]
        jacobian[accepted] = trial_jacobian[better] * weights[accepted, None, :]
        damping[index] = np.where(better, np.maximum(damping[index] / 10, 1e-12),
                                  damping[index] * 10)
        # A star whose damping keeps growing can no longer lower its sum of squares.
        active[index[done | (damping[index] > 1e12)]] = False
    return params


def _pixel_grid(box):
    yy, xx = np.indices((box, box))
    return xx.ravel().astype(float), yy.ravel().astype(float)


def _moments(values, good, box):
    """
    First parameters ``(a, x, y, A, B, C)`` from the moments, as ``centroid_2dg``.

    photutils takes the moments of the box less its minimum (its masked
    pixels counted as zeros) and the amplitude as that box's maximum.
    """
    n = len(values)
    flat = values.reshape(n, -1)
    shifted = flat - flat.min(axis=1, keepdims=True)
    total = shifted.sum(axis=1)
    ok = (good.reshape(n, -1).sum(axis=1) >= MIN_PIXELS) & (total > 0)
    total = np.where(ok, total, 1.0)
    xx, yy = _pixel_grid(box)
    xm = shifted @ xx / total
    ym = shifted @ yy / total
    dx, dy = xx - xm[:, None], yy - ym[:, None]
    covariance = np.empty((n, 2, 2))
    covariance[:, 0, 0] = np.sum(dx ** 2 * shifted, axis=1) / total
    covariance[:, 1, 1] = np.sum(dy ** 2 * shifted, axis=1) / total
    covariance[:, 0, 1] = covariance[:, 1, 0] = np.sum(dx * dy * shifted, axis=1) / total
    eigenvalues, vectors = np.linalg.eigh(covariance)
    eigenvalues = np.maximum(eigenvalues, MIN_SIGMA ** 2)
    inverse = np.einsum("nij,nj,nkj->nik", vectors, 1.0 / eigenvalues, vectors)
    params = np.column_stack([shifted.max(axis=1), xm, ym, inverse[:, 0, 0], inverse[:, 0, 1],
                              inverse[:, 1, 1]])
    return params, ok


def _elliptical(box):
    """``evaluate`` of the elliptical Gaussian ``(a, x, y, A, B, C)`` on a box."""
    xx, yy = _pixel_grid(box)

    def evaluate(params):
        a, xm, ym, qa, qb, qc = (params[:, i, None] for i in range(6))
        dx, dy = xx - xm, yy - ym
        e = np.exp(-0.5 * (qa * dx ** 2 + 2 * qb * dx * dy + qc * dy ** 2))
        ae = a * e
        jacobian = np.stack([e, ae * (qa * dx + qb * dy), ae * (qb * dx + qc * dy),
                             -0.5 * ae * dx ** 2, -ae * dx * dy, -0.5 * ae * dy ** 2], axis=1)
        return ae, jacobian

    return evaluate


def _positive_definite(params):
    return (params[:, 3] > 0) & (params[:, 3] * params[:, 5] > params[:, 4] ** 2)


def gaussian_centroids(data, mask, x, y, *, box, sky=0.0):
    """
    2-D Gaussian centroids in a ``box``-pixel box near each ``x, y``.

    The centres of photutils' ``centroid_sources`` with
    ``centroid_func=centroid_2dg`` on ``data - sky`` (the same box, pixels
    and first guess from the moments), for all stars at once.

    Parameters
    ----------
    data : 2-D array
    mask : 2-D bool array or None
    x, y : 1-D arrays
        0-based positions the boxes are centred on.
    box : int
        Odd side of the box (pixels).
    sky : float
        Subtracted from ``data``.

    Returns
    -------
    (n, 2) array
        ``x, y`` of each centroid; NaN where the box leaves the image, has
        fewer than 6 unmasked pixels or no signal, or the fit fails.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = np.full((len(x), 2), np.nan)
    index, x0, y0, values, good, _ = _boxes(data, mask, x, y, box, sky)
    if len(index) == 0:
        return out
    params, ok = _moments(values, good, box)
    n = len(index)
    values, weights = values.reshape(n, -1), good.reshape(n, -1).astype(float)
    fitted = _levenberg_marquardt(params[ok], _elliptical(box), values[ok], weights[ok],
                                  _positive_definite, [1, 2])
    centre = fitted[:, 1:3] + np.column_stack([x0[ok], y0[ok]])
    centre[~np.all(np.isfinite(fitted), axis=1)] = np.nan
    out[index[ok]] = centre
    return out


def _integrated(box):
    """``evaluate`` of the pixel-integrated circular Gaussian ``(flux, x, y, fwhm)``."""
    pixels = np.arange(box, dtype=float)
    scale = np.sqrt(2) / FWHM_SIGMA      # sqrt(2) sigma per unit of FWHM
    norm = 2 / np.sqrt(np.pi)

    def edges(centre, width):
        """Each pixel's integral (times 2) along one axis, with its derivatives."""
        t = pixels - centre[:, None]
        upper, lower = (t + 0.5) / width, (t - 0.5) / width
        g_upper, g_lower = np.exp(-upper ** 2), np.exp(-lower ** 2)
        value = erf(upper) - erf(lower)
        d_centre = -norm / width * (g_upper - g_lower)
        d_width = -norm / width * (upper * g_upper - lower * g_lower)
        return value, d_centre, d_width

    def evaluate(params):
        flux, xc, yc, fwhm = (params[:, i] for i in range(4))
        width = (fwhm * scale)[:, None]
        ex, dex, dwx = edges(xc, width)
        ey, dey, dwy = edges(yc, width)
        n = len(params)
        quarter = (flux / 4)[:, None, None]
        shape = ey[:, :, None] * ex[:, None, :]
        model = (quarter * shape).reshape(n, -1)
        jacobian = np.stack([
            shape / 4,
            quarter * ey[:, :, None] * dex[:, None, :],
            quarter * dey[:, :, None] * ex[:, None, :],
            quarter * scale * (ey[:, :, None] * dwx[:, None, :] + dwy[:, :, None] * ex[:, None, :]),
        ], axis=1).reshape(n, 4, -1)
        return model, jacobian

    return evaluate


def gaussian_fwhms(data, mask, x, y, *, box, fwhm, sky=0.0):
    """
    FWHM of a circular Gaussian fitted to a ``box``-pixel box near each ``x, y``.

    Those of photutils' ``fit_fwhm(data - sky, xypos=..., fwhm=fwhm,
    fit_shape=box, mask=mask)``: a pixel-integrated circular Gaussian
    (``CircularGaussianPRF``) from ``x, y``, ``fwhm`` and the box's sum,
    for all stars at once.

    Parameters
    ----------
    data : 2-D array
    mask : 2-D bool array or None
    x, y : 1-D arrays
        0-based positions, the fit's first guess.
    box : int
        Odd side of the box (pixels).
    fwhm : float
        First guess of the FWHM (pixels).
    sky : float
        Subtracted from ``data``.

    Returns
    -------
    1-D array
        Each star's FWHM (pixels); NaN where the box leaves the image, has
        no unmasked pixel, or the fit fails.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = np.full(len(x), np.nan)
    index, x0, y0, values, good, raw = _boxes(data, mask, x, y, box, sky)
    n = len(index)
    if n == 0:
        return out
    # photutils' first flux: the sum of the finite pixels of the box, masked or not.
    flux = np.where(np.isfinite(raw), raw, 0.0).sum(axis=(1, 2))
    ok = good.reshape(n, -1).any(axis=1)
    params = np.column_stack([flux, x[index] - x0, y[index] - y0, np.full(n, float(fwhm))])
    values, weights = values.reshape(n, -1), good.reshape(n, -1).astype(float)
    fitted = _levenberg_marquardt(params[ok], _integrated(box), values[ok], weights[ok],
                                  lambda p: p[:, 3] > 0, [1, 2, 3])
    width = fitted[:, 3]
    width[~np.all(np.isfinite(fitted), axis=1)] = np.nan
    out[index[ok]] = width
    return out
