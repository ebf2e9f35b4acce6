"""Tests of astro_dia.kernels: kernel-size validation and the simple kernels."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import norm

from astro_dia.kernels import check_kernel_size, delta_kernel, gaussian_kernel, kernel_scale


def moments(kernel):
    """Centroid (dy, dx) and variances (var_y, var_x) about the central pixel."""
    half = kernel.shape[0] // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    total = kernel.sum()
    cy, cx = (kernel * y).sum() / total, (kernel * x).sum() / total
    var_y = (kernel * (y - cy) ** 2).sum() / total
    var_x = (kernel * (x - cx) ** 2).sum() / total
    return (cy, cx), (var_y, var_x)


# --------------------------------------------------------------------------
# check_kernel_size


@pytest.mark.parametrize("size", [1, 3, 19, np.int64(7), np.int32(5)])
def test_check_kernel_size_accepts_odd_positive_integers(size):
    out = check_kernel_size(size)
    assert out == int(size) and type(out) is int


@pytest.mark.parametrize("size, message", [(4, "kernel_size must be odd, got 4"),
                                           (0, "kernel_size must be positive, got 0"),
                                           (-3, "kernel_size must be positive, got -3"),
                                           (np.int64(8), "kernel_size must be odd, got 8")])
def test_check_kernel_size_bad_values(size, message):
    with pytest.raises(ValueError, match=message):
        check_kernel_size(size)


@pytest.mark.parametrize("size", [True, False, 3.0, 5.5, "5", None])
def test_check_kernel_size_wrong_type(size):
    with pytest.raises(TypeError, match="kernel_size must be an odd integer"):
        check_kernel_size(size)


def test_check_kernel_size_against_the_image():
    assert check_kernel_size(7, (7, 9)) == 7
    with pytest.raises(ValueError, match=r"kernel_size 9 does not fit the image of shape \(7, 9\)"):
        check_kernel_size(9, (7, 9))
    with pytest.raises(ValueError, match="does not fit"):
        check_kernel_size(11, np.array([12, 10]))


# --------------------------------------------------------------------------
# gaussian_kernel


@pytest.mark.parametrize("size, sigma", [(1, 1.0), (3, 0.4), (5, 1.0), (9, 3.0), (21, 2.0)])
def test_gaussian_kernel_sums_to_one_and_is_symmetric(size, sigma):
    kernel = gaussian_kernel(size, sigma)
    assert kernel.shape == (size, size)
    assert kernel.sum() == pytest.approx(1.0, rel=1e-14)
    assert np.all(kernel >= 0)
    assert_allclose(kernel, kernel[::-1, :], rtol=1e-12, atol=1e-15)
    assert_allclose(kernel, kernel[:, ::-1], rtol=1e-12, atol=1e-15)
    assert_allclose(kernel, kernel.T, rtol=1e-12, atol=1e-15)
    assert np.unravel_index(np.argmax(kernel), kernel.shape) == (size // 2, size // 2)


def test_gaussian_kernel_matches_pixel_integrated_normal():
    size, sigma, (dy, dx) = 7, 1.3, (0.2, -0.4)
    edges = np.arange(size + 1) - size // 2 - 0.5
    py = np.diff(norm.cdf(edges, loc=dy, scale=sigma))
    px = np.diff(norm.cdf(edges, loc=dx, scale=sigma))
    expected = np.outer(py, px)
    assert_allclose(gaussian_kernel(size, sigma, center=(dy, dx)), expected / expected.sum(),
                    rtol=1e-12)


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_gaussian_kernel_variance_includes_pixel_integration(sigma):
    # pixel integration convolves with a unit box (variance 1/12)
    _, (var_y, var_x) = moments(gaussian_kernel(41, sigma))
    assert var_y == pytest.approx(sigma ** 2 + 1 / 12, rel=1e-9)
    assert var_x == pytest.approx(sigma ** 2 + 1 / 12, rel=1e-9)


@pytest.mark.parametrize("center", [(0.3, -0.7), (-1.25, 2.0), (0.0, 0.5)])
def test_gaussian_kernel_center_moves_the_centroid(center):
    (cy, cx), (var_y, var_x) = moments(gaussian_kernel(41, 2.0, center=center))
    assert cy == pytest.approx(center[0], abs=1e-9)
    assert cx == pytest.approx(center[1], abs=1e-9)
    assert var_y == pytest.approx(4 + 1 / 12, rel=1e-9)


def test_gaussian_kernel_sigma_zero_is_a_delta():
    assert_allclose(gaussian_kernel(5, 0.0), delta_kernel(5), rtol=0, atol=0)
    assert_allclose(gaussian_kernel(5, 0, center=(1.0, -2.0)), delta_kernel(5, offset=(1, -2)),
                    rtol=0, atol=0)


def test_gaussian_kernel_tends_to_delta_for_tiny_sigma():
    assert_allclose(gaussian_kernel(5, 1e-3), delta_kernel(5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", [-1.0, np.nan, np.inf])
def test_gaussian_kernel_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be non-negative and finite"):
        gaussian_kernel(5, sigma)


def test_gaussian_kernel_outside_the_kernel():
    with pytest.raises(ValueError, match="falls outside the kernel"):
        gaussian_kernel(5, 0.0, center=(3.0, 0.0))


def test_gaussian_kernel_checks_its_size():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        gaussian_kernel(4, 1.0)


# --------------------------------------------------------------------------
# delta_kernel


@pytest.mark.parametrize("offset", [(0, 0), (1, -2), (-2, 2), (-1, 0)])
def test_delta_kernel_offsets(offset):
    kernel = delta_kernel(5, offset=offset)
    expected = np.zeros((5, 5))
    expected[2 + offset[0], 2 + offset[1]] = 1.0
    assert_allclose(kernel, expected, rtol=0, atol=0)


def test_delta_kernel_is_the_identity_of_convolution():
    from scipy.signal import convolve2d

    image = np.random.default_rng(0).normal(size=(12, 12))
    assert_allclose(convolve2d(image, delta_kernel(3), mode="same"), image, rtol=0, atol=0)
    # offset (dy, dx) = (1, 1) moves the image by +1 in x and y
    shifted = convolve2d(image, delta_kernel(3, offset=(1, 1)), mode="same")
    assert_allclose(shifted[1:, 1:], image[:-1, :-1], rtol=0, atol=0)


@pytest.mark.parametrize("offset", [(-3, 0), (0, 3)])
def test_delta_kernel_offset_outside_the_kernel(offset):
    with pytest.raises(ValueError, match="offset"):
        delta_kernel(5, offset=offset)


# --------------------------------------------------------------------------
# kernel_scale


def test_kernel_scale_is_a_python_float_sum():
    kernel = np.random.default_rng(0).normal(size=(5, 5))
    scale = kernel_scale(kernel)
    assert type(scale) is float
    assert scale == pytest.approx(np.add.reduce(kernel.ravel().tolist()), rel=1e-13)
    assert kernel_scale(np.full((3, 3), 1 / 9)) == pytest.approx(1.0, rel=1e-15)
    assert kernel_scale(2.5 * gaussian_kernel(7, 1.0)) == pytest.approx(2.5, rel=1e-14)
    assert type(kernel_scale(np.ones((3, 3), dtype=np.float32))) is float
