"""
Carrying an image onto the reference's pixel grid (private).

`resample` interpolates bilinearly. The data go through
`scipy.ndimage.map_coordinates` (``order=1``); the variance and the mask,
which no scipy routine carries, through the same four weights by hand:

- an output pixel is ``d = sum_k w_k d_k`` over the four input pixels
  around its position, with bilinear weights ``w_k`` that sum to one, so
  for independent input noise its variance is ``sum_k w_k**2 v_k`` (the
  squared weights, not the weights: a pixel half-way between four others
  has a quarter of their variance, its noise now shared with its
  neighbours);
- it is masked when any input pixel with a non-zero weight is masked (the
  mask grows over the interpolation footprint), or when its position falls
  outside the image (not covered).

Pixels keep their counts: when the transform changes the pixel area
(scale, shear), the data are multiplied by the area of a reference pixel in
image pixels, ``|det|`` of the inverse transform's linear part, and the
variance by its square, so that aperture fluxes are preserved.

`shift_whole` moves the image by whole pixels: no interpolation, the
pixels, variance and mask copied unchanged.

Both work in strips of rows to bound memory on large frames.
"""

import numpy as np
from scipy import ndimage

__all__ = []

#: Rows of output computed at a time.
STRIP = 256
#: Interpolation weights at or below this are treated as zero for the mask.
ZERO_WEIGHT = 1e-6
#: Positions this far (pixels) outside the image still count as inside.
EDGE = 1e-6


def _positions(matrix, rows, nx):
    """Image ``(y, x)`` of the output pixels of ``rows`` under ``matrix`` (output -> image)."""
    yo, xo = np.meshgrid(rows.astype(np.float64), np.arange(nx, dtype=np.float64),
                         indexing="ij")
    xi = matrix[0, 0] * xo + matrix[0, 1] * yo + matrix[0, 2]
    yi = matrix[1, 0] * xo + matrix[1, 1] * yo + matrix[1, 2]
    return yi, xi


def coverage(matrix, image_shape, out_shape, step=8):
    """Fraction of the output grid (sampled every ``step`` pixels) inside the image."""
    ny, nx = image_shape
    rows = np.arange(0, out_shape[0], step)
    yi, xi = _positions(matrix, rows, out_shape[1])
    xi, yi = xi[:, ::step], yi[:, ::step]
    inside = (xi >= -EDGE) & (xi <= nx - 1 + EDGE) & (yi >= -EDGE) & (yi <= ny - 1 + EDGE)
    return float(np.mean(inside))


def resample(data, variance, mask, matrix, out_shape):
    """
    Bilinear resampling of an image onto ``out_shape``.

    Parameters
    ----------
    data : 2-D float array
        Finite everywhere (masked pixels filled).
    variance : 2-D array or None
    mask : 2-D bool array
    matrix : (3, 3) array
        Output pixel ``(x, y, 1)`` -> image pixel ``(x, y, 1)``.
    out_shape : tuple of int

    Returns
    -------
    data, variance, mask : arrays of ``out_shape``
        NaN data and variance where not covered; ``variance`` None if
        ``variance`` is.
    jacobian : float
        The factor applied to the data (its square to the variance).
    """
    ny, nx = data.shape
    jacobian = float(abs(np.linalg.det(matrix[:2, :2])))
    out_data = np.empty(out_shape, dtype=data.dtype)
    out_var = None if variance is None else np.empty(out_shape)
    out_mask = np.empty(out_shape, dtype=bool)
    for start in range(0, out_shape[0], STRIP):
        rows = np.arange(start, min(start + STRIP, out_shape[0]))
        yi, xi = _positions(matrix, rows, out_shape[1])
        outside = ~((xi >= -EDGE) & (xi <= nx - 1 + EDGE) & (yi >= -EDGE)
                    & (yi <= ny - 1 + EDGE))
        yi, xi = np.clip(yi, 0, ny - 1), np.clip(xi, 0, nx - 1)
        values = ndimage.map_coordinates(data, [yi, xi], order=1, mode="nearest",
                                         prefilter=False, output=np.float64)
        # The four neighbours and their weights; i0 <= n - 2 so that i0 + 1 exists.
        i0 = np.minimum(np.floor(yi).astype(np.intp), ny - 2)
        j0 = np.minimum(np.floor(xi).astype(np.intp), nx - 2)
        fy, fx = yi - i0, xi - j0
        strip_mask = outside.copy()
        strip_var = np.zeros(yi.shape) if variance is not None else None
        for di, wy in ((0, 1.0 - fy), (1, fy)):
            for dj, wx in ((0, 1.0 - fx), (1, fx)):
                weight = wy * wx
                strip_mask |= mask[i0 + di, j0 + dj] & (weight > ZERO_WEIGHT)
                if variance is not None:
                    strip_var += weight ** 2 * variance[i0 + di, j0 + dj]
        values *= jacobian
        values[outside] = np.nan
        out_data[rows] = values
        out_mask[rows] = strip_mask
        if variance is not None:
            strip_var *= jacobian ** 2
            strip_var[outside] = np.nan
            out_var[rows] = strip_var
    return out_data, out_var, out_mask, jacobian


def shift_whole(data, variance, mask, shift, out_shape):
    """
    The image moved by whole pixels: output ``[y, x]`` = input ``[y - sy, x - sx]``.

    Parameters
    ----------
    shift : (int, int)
        ``(sx, sy)``.

    Returns
    -------
    data, variance, mask : arrays of ``out_shape``, NaN and masked where not covered
    """
    sx, sy = shift
    ny, nx = data.shape
    out_data = np.full(out_shape, np.nan, dtype=data.dtype)
    out_var = None if variance is None else np.full(out_shape, np.nan)
    out_mask = np.ones(out_shape, dtype=bool)
    y0, y1 = max(sy, 0), min(out_shape[0], ny + sy)
    x0, x1 = max(sx, 0), min(out_shape[1], nx + sx)
    if y1 > y0 and x1 > x0:
        out = (slice(y0, y1), slice(x0, x1))
        src = (slice(y0 - sy, y1 - sy), slice(x0 - sx, x1 - sx))
        out_data[out] = data[src]
        out_mask[out] = mask[src]
        if variance is not None:
            out_var[out] = variance[src]
    return out_data, out_var, out_mask
