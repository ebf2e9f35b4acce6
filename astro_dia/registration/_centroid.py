"""
2-D Gaussian centroids of many stars at once (private).

`gaussian_centroids` fits the model of photutils' ``centroid_2dg`` (an
elliptical Gaussian, amplitude, centre, two widths and an angle, with no
constant term) to a box around each star, as ``centroid_sources`` cuts it,
and returns the same centres. photutils fits the stars one by one through
astropy's modelling (a few milliseconds a star); here one Levenberg-Marquardt
iteration updates every star's parameters together in numpy arrays, so a
frame's 150 stars take a few milliseconds in all.

The Gaussian is written ``a exp(-(A dx**2 + 2 B dx dy + C dy**2) / 2)``
with ``[[A, B], [B, C]]`` the inverse covariance, the same family as
astropy's ``Gaussian2D`` (any positive-definite covariance) without its
angle, which is undefined for a round star and slows the fit: the least
squares minimum, and so the centre, is the same.
"""

import numpy as np

__all__ = []

#: Fewest unmasked pixels a box needs, as ``centroid_2dg``.
MIN_PIXELS = 6
#: Most Levenberg-Marquardt iterations.
MAX_ITERATIONS = 100
#: A star's fit has converged when an accepted step changes its sum of squares
#: by less than this fraction and moves its centre by less than `XTOL` pixels.
FTOL, XTOL = 1e-10, 1e-7
#: Smallest width (sigma, pixels) the moments may start from.
MIN_SIGMA = 0.1


def _cutouts(image, x0, y0, box):
    """``(n, box, box)`` cutouts with lower-left pixels ``x0, y0``."""
    offsets = np.arange(box)
    return image[(y0[:, None] + offsets)[:, :, None], (x0[:, None] + offsets)[:, None, :]]


def _start(values, good, box):
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
    yy, xx = np.indices((box, box))
    xx, yy = xx.ravel().astype(float), yy.ravel().astype(float)
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


def _evaluate(params, xx, yy, values, weights):
    """Weighted Jacobian ``(n, 6, pixels)`` and residuals ``(n, pixels)`` of every star's Gaussian."""
    a, xm, ym, qa, qb, qc = (params[:, k, None] for k in range(6))
    dx, dy = xx - xm, yy - ym
    e = np.exp(-0.5 * (qa * dx ** 2 + 2 * qb * dx * dy + qc * dy ** 2))
    ae = a * e
    jacobian = np.stack([e, ae * (qa * dx + qb * dy), ae * (qb * dx + qc * dy),
                         -0.5 * ae * dx ** 2, -ae * dx * dy, -0.5 * ae * dy ** 2], axis=1)
    return jacobian * weights[:, None, :], (ae - values) * weights


def _cost(params, xx, yy, values, weights):
    a, xm, ym, qa, qb, qc = (params[:, k, None] for k in range(6))
    dx, dy = xx - xm, yy - ym
    model = a * np.exp(-0.5 * (qa * dx ** 2 + 2 * qb * dx * dy + qc * dy ** 2))
    return np.sum(((model - values) * weights) ** 2, axis=1)


def _fit(params, values, weights, box):
    """Levenberg-Marquardt on all stars at once; returns the parameters reached."""
    n = len(params)
    yy, xx = np.indices((box, box))
    xx, yy = xx.ravel().astype(float), yy.ravel().astype(float)
    damping = np.full(n, 1e-3)
    active = np.ones(n, bool)
    cost = _cost(params, xx, yy, values, weights)
    for _ in range(MAX_ITERATIONS):
        index = np.flatnonzero(active)
        if len(index) == 0:
            break
        p = params[index]
        jacobian, residual = _evaluate(p, xx, yy, values[index], weights[index])
        normal = jacobian @ jacobian.transpose(0, 2, 1)
        gradient = (jacobian @ residual[:, :, None])[:, :, 0]
        diagonal = np.diagonal(normal, axis1=1, axis2=2)
        damped = normal + (damping[index, None] * np.maximum(diagonal, 1e-30))[:, :, None] \
            * np.eye(6)
        with np.errstate(all="ignore"):
            step = -np.linalg.solve(damped, gradient[:, :, None])[:, :, 0]
            trial = p + step
            new_cost = _cost(trial, xx, yy, values[index], weights[index])
        # The inverse covariance must stay positive definite.
        better = (np.isfinite(new_cost) & np.all(np.isfinite(step), axis=1)
                  & (new_cost <= cost[index]) & (trial[:, 3] > 0)
                  & (trial[:, 3] * trial[:, 5] > trial[:, 4] ** 2))
        moved = np.hypot(step[:, 1], step[:, 2])
        done = better & ((cost[index] - new_cost <= FTOL * cost[index]) & (moved < XTOL)
                         | (new_cost == 0))
        params[index[better]] = trial[better]
        cost[index[better]] = new_cost[better]
        damping[index] = np.where(better, np.maximum(damping[index] / 10, 1e-12),
                                  damping[index] * 10)
        # A star whose damping keeps growing can no longer lower its sum of squares.
        active[index[done | (damping[index] > 1e12)]] = False
    return params


def gaussian_centroids(data, mask, x, y, *, box, sky=0.0):
    """
    2-D Gaussian centroids in a ``box``-pixel box near each ``x, y``.

    The same centres as photutils' ``centroid_sources`` with
    ``centroid_func=centroid_2dg`` on ``data - sky`` (the box starts at
    ``ceil(x - box / 2)``, masked and non-finite pixels take no part, the
    fit starts from the moments), for all stars at once.

    Parameters
    ----------
    data : 2-D array
    mask : 2-D bool array
    x, y : 1-D arrays
        0-based first guesses.
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
    ny, nx = data.shape
    half = box // 2
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = np.full((len(x), 2), np.nan)
    inside = (x >= half) & (x <= nx - 1 - half) & (y >= half) & (y <= ny - 1 - half)
    index = np.flatnonzero(inside)
    if len(index) == 0:
        return out
    x0 = np.ceil(x[index] - box / 2).astype(int)
    y0 = np.ceil(y[index] - box / 2).astype(int)
    values = _cutouts(data, x0, y0, box).astype(float) - sky
    good = np.isfinite(values)
    if mask is not None:
        good &= ~_cutouts(np.asarray(mask, bool), x0, y0, box)
    values[~good] = 0.0
    params, ok = _start(values, good, box)
    n = len(index)
    values, weights = values.reshape(n, -1), good.reshape(n, -1).astype(float)
    fitted = _fit(params[ok], values[ok], weights[ok], box)
    centre = fitted[:, 1:3] + np.column_stack([x0[ok], y0[ok]])
    centre[~np.all(np.isfinite(fitted), axis=1)] = np.nan
    out[index[ok]] = centre
    return out
