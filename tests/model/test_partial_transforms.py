"""The kernel spectrum and the few-lag inverse transform against direct sums."""

import numpy as np
import pytest
import torch

from astro_dia.model._model import fft_shape, kernel_spectrum, lag_values, valid_convolution
from astro_dia.fitting._problem import FitProblem
from astro_dia.noise._variance_terms import VarianceTerms
from astro_dia.losses import GaussianLoss

# Frames with even and odd FFT lengths (an odd length has no Nyquist column).
SHAPES = [((40, 40), 7), ((45, 33), 5), ((27, 30), 9)]


@pytest.mark.parametrize("shape, k", SHAPES)
def test_kernel_spectrum_is_the_dft_of_the_padded_kernel(shape, k):
    size = fft_shape(shape)
    rng = np.random.default_rng(k)
    kernel = rng.normal(size=(k, k))
    padded = np.zeros(size)
    padded[:k, :k] = kernel
    truth = np.fft.rfft2(padded)     # numpy's transform, not torch's
    got = kernel_spectrum(torch.as_tensor(kernel), size).numpy()
    assert got.shape == truth.shape
    np.testing.assert_allclose(got, truth, rtol=0, atol=1e-12 * np.abs(truth).max())
    # float32: to the precision of float32.
    got32 = kernel_spectrum(torch.as_tensor(kernel, dtype=torch.float32), size).numpy()
    assert got32.dtype == np.complex64
    np.testing.assert_allclose(got32, truth, rtol=0, atol=2e-6 * np.abs(truth).max())


def test_kernel_spectrum_of_a_stack_and_its_gradient():
    size = (36, 40)
    rng = np.random.default_rng(3)
    stack = torch.tensor(rng.normal(size=(3, 5, 5)), requires_grad=True)
    np.testing.assert_allclose(kernel_spectrum(stack, size).detach().numpy(),
                               torch.fft.rfft2(stack.detach(), s=size).numpy(), atol=1e-12)
    weights = torch.as_tensor(rng.normal(size=(3,) + size))
    via_roots = (torch.fft.irfft2(kernel_spectrum(stack, size), s=size) * weights).sum()
    (grad,) = torch.autograd.grad(via_roots, stack)
    # The adjoint of zero-padding then transforming: the weights' top-left block.
    np.testing.assert_allclose(grad.numpy(), weights[:, :5, :5].numpy(), atol=1e-12)


@pytest.mark.parametrize("shape, k", SHAPES)
def test_lag_values_equal_direct_correlation(shape, k):
    size = fft_shape(shape)
    rng = np.random.default_rng(k + 1)
    image = rng.normal(size=shape)
    other = rng.normal(size=shape)
    spectrum = np.fft.rfft2(other, s=size) * np.conj(np.fft.rfft2(image, s=size))
    lags = tuple(range(k - 1, -1, -1))
    got = lag_values(torch.as_tensor(spectrum), size, lags).numpy()
    # Circular cross-correlation sum_p image_p other_{p + d}, summed directly.
    padded = np.zeros(size)
    padded[:shape[0], :shape[1]] = other
    truth = np.array([[np.sum(image * np.roll(padded, (-a, -b), axis=(0, 1))
                              [:shape[0], :shape[1]]) for b in lags] for a in lags])
    np.testing.assert_allclose(got, truth, rtol=0, atol=1e-10 * np.abs(truth).max())


def test_problem_correlate_is_the_adjoint_of_its_convolution():
    """<A k, y> = <k, A^T y> for the fit's operators, in float64."""
    rng = np.random.default_rng(7)
    shape, k = (50, 47), 9
    h = k // 2
    valid = (shape[0] - 2 * h, shape[1] - 2 * h)
    terms = VarianceTerms(constant=1.0, minimum=1e-6)
    problem = FitProblem(rng.normal(size=shape), rng.normal(size=shape),
                         np.ones(valid, bool), np.ones((1,) + valid), terms, k,
                         GaussianLoss(), 0.0, None, device="cpu", dtype="float64")
    kernel = torch.as_tensor(rng.normal(size=(k, k)))
    y = torch.as_tensor(rng.normal(size=valid))
    left = float((problem.convolve(kernel) * y).sum())
    right = float((kernel * problem.correlate(y)).sum())
    assert left == pytest.approx(right, rel=1e-10)
    # The convolution itself against a direct sum at one pixel.
    reference = problem.reference[0, 0].numpy()
    direct = np.sum(reference[3:3 + k, 5:5 + k] * kernel.numpy()[::-1, ::-1])
    spectrum = torch.fft.rfft2(problem.reference[0, 0], s=problem.fft_shape)
    assert float(valid_convolution(spectrum, kernel, shape)[3, 5]) == pytest.approx(
        direct, rel=1e-10)
