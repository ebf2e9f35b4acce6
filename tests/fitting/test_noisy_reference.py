"""The noisy reference as errors in the variables: correction, sandwich errors, warning."""

import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from astro_dia import DifferenceImager
from astro_dia.fitting._errors_in_variables import (correction_matrix, kernel_information,
                                                    noise_diagonal, pair_matrix, pair_weight,
                                                    sandwich_terms,
                                                    unweighted_reference_variance)
from astro_dia.fitting._inputs import reference_variance_estimate
from astro_dia.model._model import valid_convolution
from astro_dia.fitting._problem import FitProblem
from astro_dia.fitting._validation import as_image
from astro_dia.background import background_basis
from astro_dia.exceptions import FitQualityWarning, NoiseModelWarning
from astro_dia.losses import get_loss
from astro_dia.noise import VarianceTerms, make_noise_model
from astro_dia.simulate import make_image_pair

SIZE, KERNEL = 26, 5
H = KERNEL // 2


def tiny_problem(rng, variance=None):
    """A float64 problem on a 26 x 26 frame with a 5 x 5 kernel and a reference variance."""
    reference = rng.normal(100.0, 10.0, (SIZE, SIZE))
    target = rng.normal(100.0, 10.0, (SIZE, SIZE))
    valid = (slice(H, SIZE - H), slice(H, SIZE - H))
    variance = rng.uniform(50.0, 150.0, (SIZE, SIZE)) if variance is None else variance
    return FitProblem(reference, target, np.ones((SIZE - 2 * H,) * 2, bool),
                      background_basis((SIZE, SIZE), 1, region=valid),
                      VarianceTerms(constant=100.0), KERNEL, get_loss("gaussian"), 0.0,
                      variance, device="cpu", dtype="float64")


def convolution_matrix(problem, kernel):
    """``B`` with ``B N`` the valid-region convolution of a full-frame ``N`` with ``kernel``."""
    units = torch.eye(SIZE * SIZE, dtype=torch.float64).reshape(-1, SIZE, SIZE)
    spectra = torch.fft.rfft2(units, s=problem.fft_shape)
    columns = torch.stack([valid_convolution(spectrum, kernel, problem.shape).reshape(-1)
                           for spectrum in spectra])
    return columns.T


def design_matrix(problem):
    """``A`` of the problem (centred reference), column by column from unit parameters."""
    n = problem.n_kernel + problem.basis.shape[0]
    columns = []
    for index in range(n):
        theta = torch.zeros(n, dtype=torch.float64)
        theta[index] = 1.0
        kernel = theta[:problem.n_kernel].reshape(problem.kernel_shape)
        columns.append(problem.model(kernel, theta[problem.n_kernel:]).reshape(-1))
    return torch.stack(columns).T


def test_noise_diagonal_is_the_weighted_reference_variance_under_each_kernel_pixel():
    rng = np.random.default_rng(1)
    problem = tiny_problem(rng)
    weights = torch.as_tensor(rng.uniform(0.5, 2.0, problem.target.shape))
    variance = problem.reference_variance_spectrum
    s = torch.fft.irfft2(variance, s=problem.fft_shape)[:SIZE, :SIZE]
    m = SIZE - 2 * H
    expected = np.empty((KERNEL, KERNEL))
    for a in range(KERNEL):
        for b in range(KERNEL):
            # Kernel pixel (a, b) multiplies R(p + K - 1 - (a, b)).
            y, x = KERNEL - 1 - a, KERNEL - 1 - b
            expected[a, b] = float((weights * s[y:y + m, x:x + m]).sum())
    assert_allclose(noise_diagonal(problem, weights).numpy(), expected, rtol=1e-10)


def test_sandwich_terms_match_the_covariance_of_the_reference_noise_through_the_kernel():
    rng = np.random.default_rng(2)
    problem = tiny_problem(rng)
    kernel = torch.as_tensor(rng.uniform(0.0, 0.1, (KERNEL, KERNEL)))
    problem.update_reference_variance(kernel)
    weights = torch.as_tensor(rng.uniform(0.5, 2.0, problem.target.shape))
    n = problem.n_kernel + problem.basis.shape[0]
    x = torch.as_tensor(rng.normal(size=n))
    s = torch.fft.irfft2(problem.reference_variance_spectrum, s=problem.fft_shape)[:SIZE, :SIZE]
    through_kernel = convolution_matrix(problem, kernel)
    covariance = through_kernel @ torch.diag(s.reshape(-1)) @ through_kernel.T
    assert_allclose(torch.diagonal(covariance).numpy(),
                    problem.extra_variance.reshape(-1).numpy(), rtol=1e-10)
    u = weights.reshape(-1) * (design_matrix(problem) @ x)
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    correlated = float(u @ off_diagonal @ u)
    # The noise-times-noise term is exact for uniform weights and variance
    # away from the edges; here it is small (checked alone below).
    pairs = pair_weight(problem, weights) * float(
        x[:problem.n_kernel] @ pair_matrix(problem, kernel) @ x[:problem.n_kernel])
    assert_allclose(sandwich_terms(problem, weights, kernel, x), correlated + pairs,
                    rtol=1e-8)


def test_unweighted_reference_variance_is_the_whole_covariance_through_the_kernel():
    """A fit that leaves the reference's noise out of its weights misses all of it, diagonal too."""
    rng = np.random.default_rng(4)
    problem = tiny_problem(rng)
    kernel = torch.as_tensor(rng.uniform(0.0, 0.1, (KERNEL, KERNEL)))
    weights = torch.as_tensor(rng.uniform(0.5, 2.0, problem.target.shape))
    n = problem.n_kernel + problem.basis.shape[0]
    x = torch.as_tensor(rng.normal(size=n))
    s = rng.uniform(50.0, 150.0, (SIZE, SIZE))
    through_kernel = convolution_matrix(problem, kernel)
    covariance = through_kernel @ torch.diag(torch.as_tensor(s).reshape(-1)) @ through_kernel.T
    u = weights.reshape(-1) * (design_matrix(problem) @ x)
    whole = float(u @ covariance @ u)
    # the noise-times-noise term, as in the sandwich of reference_noise=True
    centre = torch.as_tensor(s)[H:SIZE - H, H:SIZE - H]
    pairs = float(torch.sum(weights ** 2 * centre ** 2)) * float(
        x[:problem.n_kernel] @ pair_matrix(problem, kernel) @ x[:problem.n_kernel])
    value = unweighted_reference_variance(problem, weights, kernel, x, s)
    assert_allclose(value, whole + pairs, rtol=1e-8)


def test_pair_term_matches_the_fourth_moment_for_uniform_noise():
    rng = np.random.default_rng(3)
    problem = tiny_problem(rng, variance=np.full((SIZE, SIZE), 100.0))
    kernel = torch.as_tensor(rng.uniform(0.0, 0.1, (KERNEL, KERNEL)))
    direction = torch.as_tensor(rng.normal(size=(KERNEL, KERNEL)))
    weights = torch.full(problem.target.shape, 0.7, dtype=torch.float64)
    # sum_{i,l} w_i w_l Cov(a_i, b_l) Cov(b_i, a_l), a = N (x) x, b = N (x) K.
    cross = 100.0 * convolution_matrix(problem, direction) @ convolution_matrix(problem,
                                                                                 kernel).T
    w = weights.reshape(-1)
    exact = float(torch.sum((w[:, None] * cross) * (w[:, None] * cross).T))
    flat = direction.reshape(-1)
    approximate = pair_weight(problem, weights) * float(flat @ pair_matrix(problem, kernel)
                                                        @ flat)
    # Equal but for the pairs (i, l) that leave the valid region: 2 K / N.
    assert_allclose(approximate, exact, rtol=2 * KERNEL / (SIZE - 2 * H))


def test_corrected_information_stays_positive_definite_on_a_sparse_field():
    reference, target, truth = make_image_pair((120, 120), psf_sigma=1.8, kernel_sigma=1.3,
                                               reference_variance_ratio=1.0, density=5,
                                               reference_sky=1000, target_sky=1000,
                                               gain=2.4, seed=3)
    valid = (slice(9, -9), slice(9, -9))
    terms = make_noise_model("ccd", flat=1, sky=0).variance_terms(target).cropped(valid)
    problem = FitProblem(reference.data, target.data, np.ones((102, 102), bool),
                         background_basis((120, 120), 0, region=valid), terms, 19,
                         get_loss("gaussian"), 0.0, truth.reference_variance,
                         device="cpu", dtype="float64")
    weights = problem.weights(problem.target)
    correction = correction_matrix(problem, weights).matrix
    information = kernel_information(problem, weights)
    diagonal = noise_diagonal(problem, weights).reshape(-1)
    # Most directions are noise: the correction is far below D there ...
    assert float(torch.trace(correction)) < 0.5 * float(diagonal.sum())
    # ... and the corrected information has no direction of zero or negative curvature.
    assert float(torch.linalg.eigvalsh(information - correction)[0]) > 0


@pytest.mark.parametrize("solver", ["direct", "cg", "iterative"])
def test_every_solver_fits_the_corrected_objective(solver):
    reference, target, _ = make_image_pair((96, 96), reference_variance_ratio=1.0,
                                           density=60, seed=7)
    settings = dict(flat=1, sky=0, reference_noise=True, clip=None, dtype="float64")
    direct = DifferenceImager(9, solver="direct", **settings).fit(reference, target)
    other = DifferenceImager(9, solver=solver, **settings).fit(reference, target)
    assert_allclose(other.scale_factor, direct.scale_factor, rtol=1e-6)
    # The errors' weights are at each solver's last kernel (equal to 1e-6).
    assert_allclose(other.scale_factor_error, direct.scale_factor_error, rtol=5e-3)


def test_dense_covariance_is_the_same_sandwich_as_the_matrix_free_errors():
    reference, target, _ = make_image_pair((96, 96), reference_variance_ratio=1.0,
                                           density=40, seed=8)
    settings = dict(flat=1, sky=0, reference_noise=True)
    fast = DifferenceImager(9, **settings).fit(reference, target)
    dense = DifferenceImager(9, compute_errors="covariance", **settings).fit(reference, target)
    assert_allclose(dense.scale_factor_error, fast.scale_factor_error, rtol=1e-3)
    assert_allclose(np.sqrt(fast.covariance[:81, :81].sum()), fast.scale_factor_error,
                    rtol=1e-3)
    assert_allclose(dense.background_error.value, fast.background_error.value, rtol=1e-3)


def noisy_pair(ratio=4.0, seed=0):
    """A dense 200 x 200 field whose reference has ``ratio`` times the target's variance."""
    return make_image_pair((200, 200), psf_sigma=1.8, kernel_sigma=1.3, reference_sky=1000,
                           target_sky=1000, gain=2.4, reference_variance_ratio=ratio,
                           density=30, seed=seed)


def test_reference_noise_removes_the_attenuation_bias_of_p():
    # One pair, deterministic: the default fit is pulled low by the
    # reference's noise far beyond its own sigma_P (measured -0.016, 5.7
    # sigma_P); the corrected fit is not (-0.004, 0.6 sigma_P), and its
    # sigma_P (the sandwich) is larger. The full statistics are the slow
    # tests' (tests/test_noisy_reference_slow.py).
    reference, target, _ = noisy_pair()
    with pytest.warns(FitQualityWarning, match="predicted to bias P"):
        plain = DifferenceImager(flat=1, sky=0).fit(reference, target)
    corrected = DifferenceImager(flat=1, sky=0, reference_noise=True).fit(reference, target)
    assert plain.scale_factor - 1 < -4 * plain.scale_factor_error
    assert abs(corrected.scale_factor - 1) < 2 * corrected.scale_factor_error
    assert corrected.scale_factor_error > 1.5 * plain.scale_factor_error


def test_default_fit_with_a_stacked_reference_does_not_warn():
    reference, target, _ = noisy_pair(ratio=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = DifferenceImager(flat=1, sky=0).fit(reference, target)
    assert abs(result.scale_factor - 1) < 3 * result.scale_factor_error


def test_a_stack_with_the_header_of_one_exposure_is_warned_about():
    reference, target, _ = noisy_pair(ratio=0.1)
    reference.uncertainty = None
    reference.meta["GAIN"] = 2.4          # one exposure's: ten times the stack's variance
    with pytest.warns(NoiseModelWarning, match="would over-correct"):
        DifferenceImager(flat=1, sky=0, reference_noise=True, compute_errors=False).fit(
            reference, target)


def test_reference_variance_estimate_trusts_no_more_noise_than_the_data_show():
    model = make_noise_model("ccd", flat=1, sky=0)
    reference, _, truth = make_image_pair((120, 120), reference_variance_ratio=0.1,
                                          with_uncertainty=False, reference_sky=1000, seed=4)
    variance, source = reference_variance_estimate(model, as_image(reference, "reference"))
    assert source == "noise model"
    assert_allclose(np.median(variance), np.median(truth.reference_variance), rtol=0.05)
    # A stack whose header describes a single exposure: ten times too much
    # variance from the header, scaled to the noise the pixels show.
    reference.meta["GAIN"] = 1.0
    variance, source = reference_variance_estimate(model, as_image(reference, "reference"))
    assert source == "noise model (scaled to the measured pixel noise)"
    assert_allclose(np.median(variance), np.median(truth.reference_variance), rtol=0.2)
    # No detector settings at all: the measured pixel noise.
    del reference.meta["GAIN"]
    variance, source = reference_variance_estimate(model, as_image(reference, "reference"))
    assert source == "measured pixel noise"
    assert np.ptp(variance) == 0
    assert_allclose(variance[0, 0], np.median(truth.reference_variance), rtol=0.2)
