"""
An independent Bramich (2008) normal-equation solver, used only by the tests.

Written with numpy/scipy only: the design matrix is built from strided
views of the reference (``sliding_window_view``) and the background basis
from its own coordinates, so that nothing is shared with astro_dia's torch
code. The model is the *convolution* of the reference with the kernel,
``scipy.signal.convolve2d(R, K, mode='valid') + B``.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import linalg


def background_columns(shape, kernel_size, degree):
    """Polynomial terms eta**m * xi**n (m + n <= degree) on the valid region."""
    ny, nx = shape
    h = kernel_size // 2
    y, x = np.meshgrid(np.arange(h, ny - h), np.arange(h, nx - h), indexing="ij")
    eta = (x - (nx - 1) / 2.0) / nx
    xi = (y - (ny - 1) / 2.0) / ny
    return [eta ** m * xi ** n for m in range(degree + 1) for n in range(degree + 1 - m)]


def design_matrix(reference, kernel_size, degree=0):
    """Columns: one per kernel pixel (C order), then the background terms."""
    windows = sliding_window_view(reference, (kernel_size, kernel_size))
    # convolve2d 'valid': M[y, x] = sum_ij K[i, j] R[y + K-1-i, x + K-1-j]
    flipped = windows[:, :, ::-1, ::-1]
    n_valid = flipped.shape[0] * flipped.shape[1]
    kernel_part = flipped.reshape(n_valid, kernel_size * kernel_size)
    background = np.stack([b.ravel() for b in background_columns(reference.shape,
                                                                   kernel_size, degree)], 1)
    return np.hstack([kernel_part, background])


def _solve(design, y, weights, kernel_size, model_shape, covariance=True):
    keep = weights > 0
    a = design[keep]
    weighted = a * weights[keep, None]
    normal = a.T @ weighted
    rhs = weighted.T @ y[keep]
    factor = linalg.cho_factor(normal)
    theta = linalg.cho_solve(factor, rhs)
    cov = linalg.cho_solve(factor, np.eye(len(theta))) if covariance else None
    n_kernel = kernel_size * kernel_size
    model = (design @ theta).reshape(model_shape)
    return theta[:n_kernel].reshape(kernel_size, kernel_size), theta[n_kernel:], cov, model


def solve_weighted(reference, target, weights, kernel_size, degree=0):
    """
    Weighted linear least squares for fixed weights on the valid region.

    Returns
    -------
    kernel : (K, K) ndarray
    coefficients : ndarray
    covariance : ndarray
        Inverse of the normal matrix.
    model : ndarray
        Model on the valid region.
    """
    h = kernel_size // 2
    ny, nx = target.shape
    y = target[h:ny - h, h:nx - h].ravel()
    design = design_matrix(reference, kernel_size, degree)
    return _solve(design, y, np.asarray(weights, float).ravel(), kernel_size,
                  (ny - 2 * h, nx - 2 * h))


def solve_reweighted(reference, target, variance_of_model, kernel_size, degree=0, mask=None,
                     n_max=50, tol=1e-12):
    """
    Iteratively re-weighted least squares: weights 1/variance(model), until P settles.

    The first weights come from the variance at the data, as in B08.
    """
    h = kernel_size // 2
    ny, nx = target.shape
    shape = (ny - 2 * h, nx - 2 * h)
    valid_target = target[h:ny - h, h:nx - h]
    keep = np.ones(shape, bool) if mask is None else mask
    design = design_matrix(reference, kernel_size, degree)
    y = valid_target.ravel()
    weights = np.where(keep, 1.0 / variance_of_model(valid_target), 0.0)
    scale = None
    for _ in range(n_max):
        kernel, _, _, model = _solve(design, y, weights.ravel(), kernel_size, shape,
                                     covariance=False)
        weights = np.where(keep, 1.0 / variance_of_model(model), 0.0)
        new_scale = kernel.sum()
        if scale is not None and abs(new_scale - scale) <= tol * abs(scale):
            break
        scale = new_scale
    return _solve(design, y, weights.ravel(), kernel_size, shape)


def scale_factor_error(covariance, kernel_size):
    """sigma_P from the kernel block of the covariance (sum of all its entries)."""
    n = kernel_size * kernel_size
    return float(np.sqrt(covariance[:n, :n].sum()))


def varying_design_matrix(reference, kernel_size, kernel_degree, degree=0):
    """
    Columns of a spatially varying kernel: each kernel pixel times each polynomial term.

    Kernel columns are grouped by term (term 0 first, each in C order), then
    the background terms; the model at a pixel is
    ``sum_j t_j(x, y) (R (x) K_j)(x, y) + B``.
    """
    base = design_matrix(reference, kernel_size, degree)
    n_kernel = kernel_size * kernel_size
    terms = background_columns(reference.shape, kernel_size, kernel_degree)
    kernel_blocks = [base[:, :n_kernel] * t.ravel()[:, None] for t in terms]
    return np.hstack(kernel_blocks + [base[:, n_kernel:]])


def solve_weighted_varying(reference, target, weights, kernel_size, kernel_degree, degree=0):
    """
    Weighted linear least squares with a spatially varying kernel (fixed weights).

    Returns
    -------
    kernels : (n_terms, K, K) ndarray
    coefficients : ndarray
    """
    h = kernel_size // 2
    ny, nx = target.shape
    y = target[h:ny - h, h:nx - h].ravel()
    design = varying_design_matrix(reference, kernel_size, kernel_degree, degree)
    w = np.asarray(weights, float).ravel()
    normal = design.T @ (design * w[:, None])
    theta = linalg.solve(normal, design.T @ (w * y), assume_a="pos")
    n_terms = len(background_columns(reference.shape, kernel_size, kernel_degree))
    n_kernel = n_terms * kernel_size * kernel_size
    return (theta[:n_kernel].reshape(n_terms, kernel_size, kernel_size),
            theta[n_kernel:])
