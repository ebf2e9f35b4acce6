"""Chunked assembly of the weighted normal equations (private).

The design matrix ``A`` of the linear model has one column per kernel pixel
(the reference shifted by that pixel's offset, an im2col of ``R``) and one
per background basis image; rows are the fitted pixels. ``A^T W A`` and
``A^T W y`` are built strip by strip of image rows with one matrix product
per strip, so memory stays bounded, and accumulated in float64.
"""

import math

import torch

from ..losses import laplacian_matrix

__all__ = []

#: Default memory for one strip of the im2col matrix.
DEFAULT_CHUNK_BYTES = 256 * 2 ** 20


#: Most pixels summed by one float32 matrix product; the strips' sums are
#: added in float64, so float32 rounding grows only within a strip.
FLOAT32_STRIP_PIXELS = 2 ** 16


def strip_bytes(problem, rows, dtype):
    """Memory of the im2col strip (and its weighted copy) of ``rows`` image rows."""
    # A spatially varying kernel also holds the plain im2col next to its
    # per-term copies.
    plain = problem.kernel_size ** 2 if problem.kernel_basis is not None else 0
    n_columns = problem.n_kernel + plain + problem.basis.shape[0]
    itemsize = torch.finfo(dtype).bits // 8
    return 2 * n_columns * rows * problem.target.shape[1] * itemsize


def _strips(problem, max_bytes, dtype):
    """Row ranges of the valid region, each small enough for one im2col strip."""
    ny, nx = problem.target.shape
    rows = max(1, int(max_bytes // strip_bytes(problem, 1, dtype)))
    if dtype != torch.float64:
        rows = min(rows, max(1, FLOAT32_STRIP_PIXELS // nx))
    return [(start, min(start + rows, ny)) for start in range(0, ny, rows)]


def im2col(rows, size):
    """
    The ``(size**2, L)`` patch matrix of a 2-D tensor, in correlation order.

    Row ``a * size + b`` holds ``rows[y + a, x + b]`` for every valid
    position ``(y, x)`` in C order: `torch.nn.functional.unfold`'s layout,
    made by one copy of a strided window view (2-3 times faster than
    ``unfold`` on a CPU in float32). Always a new tensor, never a view of
    ``rows`` (the caller scales it in place).
    """
    windows = rows.unfold(0, size, 1).unfold(1, size, 1)     # (ny', nx', K, K), a view
    ny, nx = windows.shape[:2]
    patches = rows.new_empty((size * size, ny * nx))
    patches.view(size, size, ny, nx).copy_(windows.permute(2, 3, 0, 1))
    return patches


#: Share of a strip's pixels with non-zero weight below which only those
#: pixels' columns of the design are multiplied (a fit on stars' stamps, a
#: frame with large masked areas); above it the whole strip is used.
GATHER_BELOW = 0.75


def fitted_columns(weights):
    """
    Indices of the non-zero ``weights`` of a strip, or None to use it whole.

    Pixels of zero weight add nothing to ``A^T W A``; when few pixels of a
    strip are fitted, copying out their columns costs far less than the
    matrix products over all of them.
    """
    kept = weights != 0
    n_kept = int(kept.sum())
    if n_kept >= GATHER_BELOW * weights.numel():
        return None
    return torch.nonzero(kept).reshape(-1)


def im2col_at(rows, size, positions):
    """
    The columns of `im2col` at ``positions`` only (flat indices of the valid positions).

    Copies the ``size**2`` values of each kept window out of the strided
    window view, without building the whole patch matrix first.
    """
    windows = rows.unfold(0, size, 1).unfold(1, size, 1)     # (ny', nx', K, K), a view
    nx = windows.shape[1]
    picked = windows[positions // nx, positions % nx]          # (L', K, K), a copy
    return picked.reshape(len(positions), size * size).T.contiguous()


def assemble_normal_equations(problem, weights, *, max_bytes=DEFAULT_CHUNK_BYTES,
                              dtype=None):
    """
    ``A^T W A`` and ``A^T W y`` of the current problem.

    Pixels outside the fit mask get zero weight; a strip where few pixels
    are fitted multiplies only their columns (`fitted_columns`), one
    with most of them fitted is used whole. The kernel columns come straight from an im2col (`im2col`) of
    the reference in correlation order and are put in kernel order by
    reversing the rows and columns of the small result.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
    weights : (ny', nx') tensor
        Per-pixel weights on the valid region.
    max_bytes : int
        Memory allowed for one strip of the design matrix.
    dtype : `torch.dtype`, optional
        Precision of the matrix products; the problem's by default.

    Returns
    -------
    normal : (n, n) float64 tensor
    rhs : (n,) float64 tensor
        With ``y`` the target.
    """
    dtype = problem.dtype if dtype is None else dtype
    size = problem.kernel_size
    n_kernel = problem.n_kernel
    n_basis = problem.basis.shape[0]
    n = n_kernel + n_basis
    normal = torch.zeros((n, n), dtype=torch.float64, device=problem.device)
    rhs = torch.zeros(n, dtype=torch.float64, device=problem.device)
    reference = problem.reference.to(dtype)
    weights = torch.where(problem.mask, weights, 0.0).to(dtype)
    # With non-negative weights the strip is scaled in place by sqrt(w), so
    # that no weighted copy of it is made; a loss whose curvature can be
    # negative (Student's t) needs the copy.
    signed = bool((weights < 0).any())
    scale = weights if signed else torch.sqrt(weights)
    kernel_rows, basis_rows = slice(0, n_kernel), slice(n_kernel, n)
    for start, stop in _strips(problem, max_bytes, dtype):
        s = scale[start:stop].reshape(-1)
        kept = fitted_columns(s)
        if kept is not None and kept.numel() == 0:
            continue
        strip = reference[0, 0, start:stop + size - 1]
        patches = im2col(strip, size) if kept is None else im2col_at(strip, size, kept)
        if problem.kernel_basis is not None:
            # A spatially varying kernel: one block of columns per term,
            # the patches times that term's polynomial image.
            terms = problem.kernel_basis[:, start:stop].reshape(problem.kernel_terms, 1, -1)
            if kept is not None:
                terms = terms[..., kept]
            patches = (terms.to(dtype) * patches[None]).reshape(n_kernel, -1)
        basis = problem.basis[:, start:stop].reshape(n_basis, -1).to(dtype)
        y = problem.target[start:stop].reshape(-1).to(dtype)
        if kept is not None:
            s, basis, y = s[kept], basis[:, kept], y[kept]
        if signed:
            left, left_basis = patches * s, basis * s
            right, right_basis = patches, basis
        else:
            patches.mul_(s)
            left = right = patches
            basis = basis * s
            left_basis = right_basis = basis
            y = y * s
        cross = (left @ right_basis.T).to(torch.float64)
        normal[kernel_rows, kernel_rows] += (left @ right.T).to(torch.float64)
        normal[kernel_rows, basis_rows] += cross
        normal[basis_rows, kernel_rows] += cross.T
        normal[basis_rows, basis_rows] += (left_basis @ right_basis.T).to(torch.float64)
        rhs[kernel_rows] += (left @ y).to(torch.float64)
        rhs[basis_rows] += (left_basis @ y).to(torch.float64)
    # Correlation order -> kernel order: kernel pixel (i, j) is patch row
    # (K-1-i, K-1-j), so each term's block is reversed.
    pixels = size * size
    reversed_block = torch.arange(pixels - 1, -1, -1)
    order = torch.cat([reversed_block + j * pixels for j in range(n_kernel // pixels)]
                      + [torch.arange(n_kernel, n)])
    order = order.to(problem.device)
    return normal[order][:, order], rhs[order]


def add_regularization(normal, problem, rhs=None):
    """
    Complete the normal equations of the raw design: penalty and kernel constraint, in place.

    Adds the Hessian ``2 lambda N_data L`` of the Laplacian penalty (eq. 20)
    to every term's kernel block, subtracts the noisy reference's
    errors-in-variables correction ``D_eff`` (``problem.correction``, see
    ``astro_dia.fitting._errors_in_variables``) from the kernel block, then, under
    ``constant_scale``, maps the matrix (and ``rhs`` when given) to the free
    parameters (see `constrain_normal`).
    """
    if problem.regularization > 0:
        pixels = problem.kernel_size ** 2
        lap = 2 * problem.regularization * problem.n_data * torch.as_tensor(
            laplacian_matrix(problem.kernel_size), dtype=normal.dtype, device=normal.device)
        for start in range(0, problem.n_kernel, pixels):
            normal[start:start + pixels, start:start + pixels] += lap
    correction = getattr(problem, "correction", None)
    if correction is not None:
        n_kernel = problem.n_kernel
        normal[:n_kernel, :n_kernel] -= correction.to(device=normal.device, dtype=normal.dtype)
    return constrain_normal(normal, problem, rhs)


def constrain_columns(matrix, problem):
    """
    ``M T`` for the map ``T`` from parameters to kernels under ``constant_scale``.

    The kernel column of each non-constant term's pixel ``u`` becomes
    ``column_u - column_centre``; the central (fixed) column becomes zero.
    """
    pixels = problem.kernel_size ** 2
    for index in problem.fixed.tolist():
        start = index - index % pixels
        centre = matrix[:, index].clone()
        matrix[:, start:start + pixels] -= centre[:, None]
    return matrix


def constrain_normal(normal, problem, rhs=None):
    """
    ``T^T N T`` (and ``T^T rhs``) under ``constant_scale``, with 1 on the fixed diagonal.

    The fixed parameters have no effect on the model; the unit diagonal
    keeps the matrix positive definite and their solution at zero change.
    Does nothing without ``constant_scale``.
    """
    if len(problem.fixed) == 0:
        return normal if rhs is None else (normal, rhs)
    constrain_columns(normal, problem)
    constrain_columns(normal.T, problem)
    normal[problem.fixed, problem.fixed] = 1.0
    if rhs is not None:
        constrain_columns(rhs[None], problem)
        return normal, rhs
    return normal


def cholesky(matrix):
    """
    Cholesky factor of a symmetric positive semi-definite matrix.

    A diagonal jitter, growing from zero to 1e-6 of the diagonal, is added
    until the factorisation succeeds.

    Returns
    -------
    factor : tensor or None
        Lower-triangular factor, or None if the matrix stays singular.
    """
    diagonal = torch.diagonal(matrix).clamp(min=0)
    scale = float(diagonal.max()) if diagonal.numel() else 0.0
    if not math.isfinite(scale) or scale <= 0:
        return None
    for jitter in (0.0, 1e-12, 1e-9, 1e-6):
        factor, info = torch.linalg.cholesky_ex(
            matrix + jitter * torch.diag(diagonal + 1e-30 * scale))
        if int(info) == 0:
            return factor
    return None
