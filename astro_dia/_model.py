"""The model ``R (x) K + B`` and its variance, written once (private).

Owns the FFT length of a frame (`fft_shape`), the valid-region
convolution of a reference's spectrum with a kernel or with the terms of a
spatially varying kernel (`valid_convolution`), and the variance of the
target at a model (`variance_at`). The fit problem (`astro_dia._problem`,
float32 or float64 tensors on the fit's device, a centred reference) and
the result (`astro_dia._assemble`: float64 on the same device, the
un-centred reference, then numpy) both call these functions, so that the
model and the noise the fit optimised are those the difference image and
its uncertainty are made of.
"""

import numpy as np
import torch
from scipy.fft import next_fast_len

from ._torch import to_numpy, to_tensor

__all__ = []


def fft_shape(shape):
    """
    FFT length of a frame: the next fast lengths of its sides.

    A circular convolution of that length equals the linear one on the
    valid region (indices ``K - 1`` to the frame's size): the wrap-around
    reaches only the first ``K - 1`` rows and columns.
    """
    return (next_fast_len(shape[0], real=True), next_fast_len(shape[1], real=True))


def valid_convolution(spectrum, kernel, shape, *, kernel_basis=None):
    """
    Valid-region convolution of an image, given by its spectrum, with ``kernel``.

    Parameters
    ----------
    spectrum : tensor
        ``torch.fft.rfft2`` of the (M, N) image at `fft_shape`.
    kernel : (K, K) or (T, K, K) tensor
        A kernel, or the terms of a spatially varying one.
    shape : tuple of int
        ``(M, N)``, the image's shape.
    kernel_basis : (T, M - K + 1, N - K + 1) tensor, optional
        The polynomial images that weight the terms of a varying kernel.

    Returns
    -------
    (M - K + 1, N - K + 1) tensor
        For a varying kernel, the terms' convolutions weighted by
        ``kernel_basis`` and summed.
    """
    size = fft_shape(shape)
    full = torch.fft.irfft2(spectrum * torch.fft.rfft2(kernel, s=size), s=size)
    k = kernel.shape[-1] - 1
    valid = full[..., k:shape[0], k:shape[1]]
    if kernel.dim() == 3:
        valid = (valid * kernel_basis).sum(dim=0)
    return valid


def variance_at(model, constant, slope, minimum, offset):
    """
    ``constant + slope * max(model + offset, 0)``, at least ``minimum``.

    The variance of the CCD and EMCCD models (paper eq. 6-7) and of the
    'uniform' and 'uncertainty' models (``slope`` 0). Works on numpy arrays
    and torch tensors alike (the terms of the same kind as ``model``, or
    numbers).
    """
    variance = constant + slope * (model + offset).clip(min=0.0)
    return variance.clip(min=minimum)


def convolve_frame(image, kernel, *, device, kernel_basis=None):
    """
    `valid_convolution` of a numpy frame in float64 on ``device``, as numpy.

    How the result is made: the final model from the un-centred reference
    and the reference's variance through ``K**2``, by the fit's function.

    Parameters
    ----------
    image : (M, N) ndarray
    kernel : (K, K) or (T, K, K) ndarray
    device : str or `torch.device`
        The fit's device.
    kernel_basis : (T, M - K + 1, N - K + 1) ndarray, optional
        As for `valid_convolution`.

    Returns
    -------
    (M - K + 1, N - K + 1) float64 ndarray
    """
    tensor = dict(device=device, dtype=torch.float64)
    shape = np.shape(image)
    spectrum = torch.fft.rfft2(to_tensor(image, **tensor), s=fft_shape(shape))
    basis = None if kernel_basis is None else to_tensor(kernel_basis, **tensor)
    return to_numpy(valid_convolution(spectrum, to_tensor(kernel, **tensor), shape,
                                      kernel_basis=basis))
