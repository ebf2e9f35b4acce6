"""The model ``R (x) K + B`` and its variance, written once (private).

Owns the FFT length of a frame (`fft_shape`), the spectrum of a kernel
(`kernel_spectrum`) and the few lags of an inverse transform a
correlation needs (`lag_values`), the valid-region convolution of a
reference's spectrum with a kernel or with the terms of a spatially varying
kernel (`valid_convolution`), and the variance of the target at a model
(`variance_at`) with its derivative (`variance_slope_at`). The fit problem (`astro_dia.fitting._problem`,
float32 or float64 tensors on the fit's device, a centred reference) and
the result (`astro_dia.result._assemble`: float64 on the same device, the
un-centred reference, then numpy) both call these functions, so that the
model and the noise the fit optimised are those the difference image and
its uncertainty are made of.
"""

from functools import lru_cache

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


@lru_cache(maxsize=64)
def _unit_roots(length, n_frequencies, positions, sign, device, dtype):
    """
    ``exp(sign 2 pi i f p / length)``: (n_frequencies, len(positions)), ``dtype``.

    The phase is reduced modulo ``length`` in integers and evaluated in
    float64, so that a float32 matrix is exact to its precision whatever
    the frame's size.
    """
    turns = (np.arange(n_frequencies)[:, None] * np.asarray(positions)[None, :]) % length
    roots = np.exp(sign * 2j * np.pi * turns / length)
    return torch.as_tensor(roots, dtype=dtype, device=device)


def _complex(dtype):
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def kernel_spectrum(kernel, size):
    """
    ``torch.fft.rfft2(kernel, s=size)`` as two small matrix products.

    A kernel fills a few rows and columns of the padded frame; its discrete
    Fourier transform is ``E_y K E_x`` with ``E`` the (frequency, position)
    matrices of unit roots, a few times cheaper than a transform of the
    whole frame and exact to the dtype's precision. Differentiable.

    Parameters
    ----------
    kernel : (..., K, K) tensor
    size : tuple of int
        The FFT shape (`fft_shape`).

    Returns
    -------
    (..., size[0], size[1] // 2 + 1) complex tensor
    """
    ky, kx = kernel.shape[-2:]
    dtype, device = _complex(kernel.dtype), kernel.device
    rows = _unit_roots(size[0], size[0], tuple(range(ky)), -1, device, dtype)
    columns = _unit_roots(size[1], size[1] // 2 + 1, tuple(range(kx)), -1, device, dtype)
    return rows @ (kernel.to(dtype) @ columns.T)


@lru_cache(maxsize=64)
def _inverse_columns(length, lags, device, dtype):
    """Unit roots of the half spectrum's inverse, with the weights of the missing half."""
    n_frequencies = length // 2 + 1
    roots = _unit_roots(length, n_frequencies, lags, 1, device, dtype)
    # Columns other than 0 and the Nyquist one stand for their mirror too.
    weight = np.full(n_frequencies, 2.0)
    weight[0] = 1.0
    if length % 2 == 0:
        weight[-1] = 1.0
    return roots * torch.as_tensor(weight, device=device)[:, None].to(dtype)


def lag_values(spectrum, size, lags):
    """
    ``torch.fft.irfft2(spectrum, s=size)[..., lags, lags]`` for a few lags.

    A correlation with a kernel-sized result needs the inverse transform at
    ``K`` lags per axis only: two matrix products with the unit roots,
    instead of a transform of the whole frame.

    Parameters
    ----------
    spectrum : (..., size[0], size[1] // 2 + 1) complex tensor
        The half spectrum of a real image.
    size : tuple of int
        The FFT shape.
    lags : tuple of int
        The lags (indices of the inverse transform, negative ones counted
        from the end as in a circular array), the same on both axes, in the
        order wanted.

    Returns
    -------
    (..., len(lags), len(lags)) real tensor
    """
    dtype, device = spectrum.dtype, spectrum.device
    rows = _unit_roots(size[0], size[0], lags, 1, device, dtype)
    columns = _inverse_columns(size[1], lags, device, dtype)
    return (rows.T @ spectrum @ columns).real / (size[0] * size[1])


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
    full = torch.fft.irfft2(spectrum * kernel_spectrum(kernel, size), s=size)
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


def variance_slope_at(model, constant, slope, minimum, offset):
    """
    ``d variance_at / d model``: ``slope`` where neither clip is active, else 0 (tensors).
    """
    shifted = model + offset
    active = (shifted > 0) & (constant + slope * shifted > minimum)
    return torch.where(active, slope, 0.0)


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
