"""Polynomial differential backgrounds (paper eq. 18-19)."""

import numpy as np

__all__ = ["polynomial_terms", "background_basis", "basis_at", "evaluate_background"]


def polynomial_terms(degree):
    """
    Exponents ``(m, n)`` of the polynomial terms of total degree <= ``degree``.

    Parameters
    ----------
    degree : int
        Non-negative polynomial degree.

    Returns
    -------
    terms : list of tuple of int
        ``(m, n)`` for the term :math:`\\eta^m \\xi^n`, the constant first.

    Examples
    --------
    >>> polynomial_terms(1)
    [(0, 0), (0, 1), (1, 0)]
    """
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 0:
        raise ValueError(f"background_degree must be a non-negative integer, got {degree!r}")
    return [(m, n) for m in range(degree + 1) for n in range(degree + 1 - m)]


def background_basis(shape, degree, *, region=None):
    """
    The basis images :math:`\\eta^m\\xi^n` of a polynomial background.

    Coordinates are normalised as in paper eq. 19,
    :math:`\\eta = (x - x_c)/N_x`, :math:`\\xi = (y - y_c)/N_y`, with
    :math:`(x_c, y_c)` the centre of the full image of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the full image.
    degree : int
        Polynomial degree; 0 gives one constant image.
    region : (slice, slice), optional
        Evaluate only on this part of the image (rows, columns).

    Returns
    -------
    basis : (n_terms, ny', nx') ndarray
        In the order of `polynomial_terms`.
    """
    ny, nx = shape
    # A column of y and a row of x: each term is an outer product, no grid.
    y, x = np.arange(ny, dtype=float)[:, None], np.arange(nx, dtype=float)[None, :]
    if region is not None:
        y, x = y[region[0]], x[:, region[1]]
    return basis_at(shape, degree, x, y)


def basis_at(shape, degree, x, y):
    """
    The polynomial terms :math:`\\eta^m\\xi^n` at given pixel positions.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the full image (it sets the normalisation, eq. 19).
    degree : int
        Polynomial degree.
    x, y : float or array_like
        0-based pixel coordinates, broadcast together.

    Returns
    -------
    terms : (n_terms, ...) ndarray
        In the order of `polynomial_terms`.

    Examples
    --------
    >>> basis_at((10, 10), 1, 9.5, 4.5).tolist()
    [1.0, 0.0, 0.5]
    """
    ny, nx = shape
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    eta = (x - (nx - 1) / 2) / nx
    xi = (y - (ny - 1) / 2) / ny
    full = np.broadcast_shapes(x.shape, y.shape)
    return np.stack([np.broadcast_to(eta ** m * xi ** n, full)
                     for m, n in polynomial_terms(degree)])


def evaluate_background(coefficients, shape, *, region=None):
    """
    Evaluate a polynomial background from its coefficients.

    Parameters
    ----------
    coefficients : (n_terms,) array-like
        Coefficients in the order of `polynomial_terms`; their number fixes
        the degree.
    shape : tuple of int
        ``(ny, nx)`` of the full image.
    region : tuple of slice, optional
        Evaluate only on this part of the image.

    Returns
    -------
    background : ndarray

    Examples
    --------
    >>> evaluate_background([5.0], (2, 3))
    array([[5., 5., 5.],
           [5., 5., 5.]])
    """
    coefficients = np.asarray(coefficients, dtype=float)
    n = len(coefficients)
    if n == 0:
        raise ValueError("0 coefficients do not make a full 2-D polynomial")
    degree = int(round((np.sqrt(8 * n + 1) - 3) / 2))
    if len(polynomial_terms(degree)) != n:
        raise ValueError(f"{n} coefficients do not make a full 2-D polynomial")
    basis = background_basis(shape, degree, region=region)
    # A weighted sum of the term images, not a BLAS product: numpy's BLAS
    # threads would compete with torch's for the cores during a fit.
    return sum(value * term for value, term in zip(coefficients, basis))
