"""Pixel-array ("delta basis") convolution kernels."""

import numpy as np

__all__ = ["check_kernel_size", "gaussian_kernel", "delta_kernel", "kernel_scale"]


def check_kernel_size(kernel_size, image_shape=None):
    """
    Validate a kernel size.

    Parameters
    ----------
    kernel_size : int
        Side of the square kernel; must be odd and positive.
    image_shape : tuple of int, optional
        If given, the kernel must leave at least one valid pixel on each
        axis (``kernel_size <= min(image_shape)``).

    Returns
    -------
    kernel_size : int

    Raises
    ------
    TypeError
        If it is not an integer.
    ValueError
        If it is even, not positive, or too large for the image.
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)):
        raise TypeError(f"kernel_size must be an odd integer, got {kernel_size!r}")
    kernel_size = int(kernel_size)
    if kernel_size <= 0:
        raise ValueError(f"kernel_size must be positive, got {kernel_size}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if image_shape is not None and kernel_size > min(image_shape):
        raise ValueError(
            f"kernel_size {kernel_size} does not fit the image of shape {tuple(image_shape)}; "
            "choose a kernel smaller than the image (a few times the PSF FWHM)")
    return kernel_size


def gaussian_kernel(kernel_size, sigma, *, center=(0.0, 0.0)):
    """
    A normalised, pixel-integrated circular Gaussian kernel.

    Parameters
    ----------
    kernel_size : int
        Odd side length.
    sigma : float
        Standard deviation in pixels; 0 gives a delta function (when the
        centre is on a pixel).
    center : tuple of float, optional
        Offset ``(dy, dx)`` of the Gaussian from the central pixel.

    Returns
    -------
    kernel : (kernel_size, kernel_size) ndarray
        Sums to 1.

    Examples
    --------
    >>> k = gaussian_kernel(5, 1.0)
    >>> float(k.sum())  # doctest: +FLOAT_CMP
    1.0
    """
    from scipy.special import erf

    kernel_size = check_kernel_size(kernel_size)
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be non-negative and finite, got {sigma}")
    half = kernel_size // 2
    edges = np.arange(-half, half + 2) - 0.5

    def profile(offset):
        if sigma == 0:
            values = ((edges[:-1] <= offset) & (offset < edges[1:])).astype(float)
        else:
            cdf = 0.5 * (1 + erf((edges - offset) / (np.sqrt(2) * sigma)))
            values = np.diff(cdf)
        return values

    kernel = np.outer(profile(center[0]), profile(center[1]))
    total = kernel.sum()
    if total <= 0:
        raise ValueError(f"a Gaussian centred at {center} falls outside the kernel")
    return kernel / total


def delta_kernel(kernel_size, *, offset=(0, 0)):
    """
    The identity kernel: one at the centre (plus ``offset``), zero elsewhere.

    Parameters
    ----------
    kernel_size : int
        Odd side length.
    offset : tuple of int, optional
        Shift ``(dy, dx)`` of the unit pixel from the centre.

    Returns
    -------
    kernel : (kernel_size, kernel_size) ndarray
    """
    kernel_size = check_kernel_size(kernel_size)
    half = kernel_size // 2
    if any(abs(int(o)) > half for o in offset):
        raise ValueError(
            f"offset {tuple(offset)} falls outside a {kernel_size} x {kernel_size} kernel; "
            f"each component must be within +-{half}")
    kernel = np.zeros((kernel_size, kernel_size))
    kernel[half + offset[0], half + offset[1]] = 1.0
    return kernel


def kernel_scale(kernel):
    """
    Photometric scale factor of a convolution kernel.

    Parameters
    ----------
    kernel : (K, K) ndarray
        Kernel pixel values.

    Returns
    -------
    scale : float
        Sum of the kernel pixels (paper eq. 3).

    Examples
    --------
    >>> import numpy as np
    >>> kernel_scale(np.full((3, 3), 1 / 9))  # doctest: +FLOAT_CMP
    1.0
    """
    return float(np.sum(kernel))
