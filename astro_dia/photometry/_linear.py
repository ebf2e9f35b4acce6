"""
PSF fluxes at fixed positions by linear weighted least squares (private).

With the positions fixed and no background term, the PSF model is linear
in the fluxes: the best fit is the solution of the normal equations, which
photutils' iterative fitter reaches too, only one source (or one group) at
a time and through an optimiser. `fit_fixed_positions` solves them for all
sources at once:

- each source's footprint is the ``box`` around its position (the box
  photutils fits: centred on the pixel nearest the position, trimmed at
  the image's edges), its masked pixels left out;
- the rows are the pixels of the union of the footprints, each once; the
  column of a source holds its PSF over its own footprint and those that
  overlap it: sources whose footprints overlap (a blend) are fitted
  jointly, and so, through them, a chain of overlapping footprints (a
  group);
- the normal matrix is block-diagonal over the groups: an isolated source
  has ``flux = sum(w P d) / sum(w P**2)`` and ``flux_err = 1 / sqrt(sum(w
  P**2))`` (``w = 1 / error**2``), a group its linear system, the errors
  from the diagonal of its inverse (dense for a small group, from sparse
  LU solves for a large one: a crowded field can chain thousands).

The fit-quality columns follow photutils' definitions on each source's own
footprint: ``reduced_chi2`` (chi^2 of the group's model over the
footprint, per degree of freedom), ``qfit`` (sum of absolute residuals over
the flux) and ``cfit`` (residual of the central pixel over the flux).
"""

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .flags import PHOTOMETRY_FLAGS

__all__ = []


def _centres(x, y):
    """The pixel each fit box is centred on (photutils' rounding, half down)."""
    return np.ceil(x - 0.5).astype(int), np.ceil(y - 0.5).astype(int)


#: Largest group whose normal matrix is inverted densely.
DENSE_GROUP = 1000


def _overlaps(cx, cy, box):
    """The pairs ``(i, j)``, ``i < j``, of sources whose footprints overlap."""
    if len(cx) < 2:
        return np.zeros((0, 2), int)
    # Boxes overlap when their centres are closer than a box along both axes:
    # a Chebyshev distance below 1 in units of the box.
    scaled = np.column_stack([cx / box[1], cy / box[0]])
    return cKDTree(scaled).query_pairs(1.0 - 0.5 / max(box), p=np.inf, output_type="ndarray")


def _groups(n, pairs):
    """Labels of the groups of sources joined by overlapping footprints (in a chain)."""
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _evaluate(psf, xx, yy, x0, y0):
    """The unit-flux PSF centred at ``(x0, y0)`` (broadcast against ``xx, yy``)."""
    values = [getattr(psf, name).value for name in psf.param_names]
    for name, value in (("flux", 1.0), ("x_0", x0), ("y_0", y0)):
        values[psf.param_names.index(name)] = value
    return np.asarray(psf.evaluate(xx, yy, *values), float)


def _entries(psf, x, y, cx, cy, pairs, box, shape, bad):
    """
    The design matrix's entries: (source, pixel, PSF value), each pair once.

    Every source's PSF is evaluated on its own footprint and on those that
    overlap it; ``own`` marks the entries of its own footprint.
    """
    ny, nx = shape
    # (k, j): k's PSF on j's footprint; the own footprints first.
    n = len(x)
    k = np.concatenate([np.arange(n), pairs[:, 0], pairs[:, 1]])
    j = np.concatenate([np.arange(n), pairs[:, 1], pairs[:, 0]])
    dy, dx = np.mgrid[-(box[0] // 2):box[0] // 2 + 1, -(box[1] // 2):box[1] // 2 + 1]
    xx = cx[j][:, None, None] + dx
    yy = cy[j][:, None, None] + dy
    good = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
    good[good] = ~bad[yy[good], xx[good]]
    values = _evaluate(psf, xx, yy, x[k][:, None, None], y[k][:, None, None])
    source = np.broadcast_to(k[:, None, None], xx.shape)[good]
    own = np.broadcast_to((k == j)[:, None, None], xx.shape)[good]
    pixel = (yy * nx + xx)[good]
    values = values[good]
    # A pixel in two footprints of a group carries each PSF once.
    _, first = np.unique(source.astype(np.int64) * (ny * nx) + pixel, return_index=True)
    keep = np.zeros(len(pixel), bool)
    keep[first] = True      # the first of a (source, pixel) is its own footprint's, if any
    return source[keep], pixel[keep], values[keep], own[keep]


def fit_fixed_positions(psf, data, error, bad, x, y, box, *, jointly=True):
    """
    Fluxes of sources at fixed positions, fitted jointly where their footprints overlap.

    Parameters
    ----------
    psf : `astropy.modeling.Model`
        Unit-flux PSF model with ``flux``, ``x_0`` and ``y_0`` parameters.
    data, error : (ny, nx) ndarray
        The image (background removed) and its 1-sigma uncertainty (> 0
        wherever ``bad`` is False).
    bad : (ny, nx) bool ndarray
        Pixels left out.
    x, y : (n,) ndarray
        Positions (0-based pixels), each with a pixel of its footprint on
        the image.
    box : (int, int)
        Odd ``(ny, nx)`` of the footprints.
    jointly : bool, optional
        Fit sources whose footprints overlap jointly (default), or each on
        its own footprint alone, its neighbours left out of its model, as
        `photutils.psf.PSFPhotometry` does without a grouper (to which its
        iterative fit converges).

    Returns
    -------
    dict of (n,) ndarrays
        ``flux``, ``flux_err``, ``n_pixels`` (good pixels of the own
        footprint), ``reduced_chi2``, ``qfit``, ``cfit``, ``group_size`` and
        ``flags`` (``n_pixels_fit_partial`` for a footprint with fewer good
        pixels than the box, ``no_covariance`` for a source the fit cannot
        determine, whose flux is then NaN).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    shape = data.shape
    cx, cy = _centres(x, y)
    pairs = _overlaps(cx, cy, box) if jointly else np.zeros((0, 2), int)
    labels = _groups(n, pairs)
    source, pixel, values, own = _entries(psf, x, y, cx, cy, pairs, box, shape, bad)
    rows, row = np.unique(pixel, return_inverse=True)
    sigma = error.ravel()[rows]
    d = data.ravel()[rows]
    design = sparse.csr_matrix((values / sigma[row], (row, source)), shape=(len(rows), n))
    normal = (design.T @ design).tocsr()
    rhs = design.T @ (d / sigma)
    flux, flux_err = _solve(normal, rhs, labels)
    # Fit quality on each source's own footprint, from the residual at each entry's
    # pixel: of the group's model, or of the source's alone when fitted alone.
    if jointly:
        residual = (d - (design @ np.nan_to_num(flux)) * sigma)[row]
    else:
        residual = d[row] - np.nan_to_num(flux)[source] * values
    mine = source[own]
    n_pixels = np.bincount(mine, minlength=n)
    chi2 = np.bincount(mine, weights=(residual[own] / sigma[row[own]]) ** 2, minlength=n)
    absolute = np.bincount(mine, weights=np.abs(residual[own]), minlength=n)
    centre = np.full(n, np.nan)
    ny, nx = shape
    inside = (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny)
    at_centre = own & inside[source] & (pixel == (cy * nx + cx)[source])
    centre[source[at_centre]] = residual[at_centre]
    with np.errstate(divide="ignore", invalid="ignore"):
        reduced = np.where(n_pixels > 1, chi2 / (n_pixels - 1), np.nan)
        qfit = np.where(flux != 0, absolute / flux, np.nan)
        cfit = np.where(flux != 0, centre / flux, np.nan)
    flags = np.zeros(n, np.int64)
    flags[n_pixels < box[0] * box[1]] |= PHOTOMETRY_FLAGS["n_pixels_fit_partial"]
    flags[~np.isfinite(flux)] |= PHOTOMETRY_FLAGS["no_covariance"]
    return dict(flux=flux, flux_err=flux_err, n_pixels=n_pixels, reduced_chi2=reduced,
                qfit=qfit, cfit=cfit, group_size=np.bincount(labels)[labels], flags=flags)


def _solve(normal, rhs, labels):
    """Fluxes and errors from the block-diagonal normal equations, group by group."""
    n = len(rhs)
    flux, flux_err = np.full(n, np.nan), np.full(n, np.nan)
    diagonal = np.asarray(normal.diagonal(), float)
    sizes = np.bincount(labels)
    single = sizes[labels] == 1
    ok = single & (diagonal > 0)
    flux[ok] = rhs[ok] / diagonal[ok]
    flux_err[ok] = 1.0 / np.sqrt(diagonal[ok])
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for label in np.flatnonzero(sizes > 1):
        members = order[starts[label]:starts[label + 1]]
        block = normal[members][:, members]
        solved = (_dense(block.toarray(), rhs[members]) if len(members) <= DENSE_GROUP
                  else _sparse(block.tocsc(), rhs[members]))
        if solved is not None:
            flux[members], flux_err[members] = solved
    return flux, flux_err


def _dense(block, rhs):
    """Fluxes and errors of one group from its inverted normal matrix (None if singular)."""
    try:
        inverse = np.linalg.inv(block)
    except np.linalg.LinAlgError:
        return None
    variance = np.diag(inverse)
    if not np.all(np.isfinite(inverse)) or np.any(variance <= 0):
        return None
    return inverse @ rhs, np.sqrt(variance)


def _sparse(block, rhs, chunk=256):
    """The same for a large group: a sparse LU, its inverse's diagonal a chunk at a time."""
    from scipy.sparse.linalg import splu

    try:
        lu = splu(block)
    except RuntimeError:        # exactly singular
        return None
    n = block.shape[0]
    variance = np.empty(n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        unit = np.zeros((n, stop - start))
        unit[np.arange(start, stop), np.arange(stop - start)] = 1.0
        variance[start:stop] = lu.solve(unit)[np.arange(start, stop), np.arange(stop - start)]
    flux = lu.solve(rhs)
    if not np.all(np.isfinite(flux)) or np.any(~(variance > 0)):
        return None
    return flux, np.sqrt(variance)
