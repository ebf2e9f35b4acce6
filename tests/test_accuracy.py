"""Noisy pairs: the torch fit against an independent normal-equation solver and the truth."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from astro_dia import DifferenceImager
from astro_dia.simulate import make_image_pair

from . import reference_solver as rs

KERNEL = 19
HALF = KERNEL // 2
SEEDS = range(100, 110)


@pytest.fixture(scope="module")
def noisy_pairs():
    """Ten S10-like 142 x 142 pairs with CCD noise (gain 1, read noise 5 adu)."""
    return [make_image_pair(seed=seed, density=100) for seed in SEEDS]


def _valid(array):
    return array[HALF:-HALF, HALF:-HALF]


def _check_fixed_weights(reference, target):
    # With the same fixed weights both minimise the same quadratic.
    weights = 1.0 / _valid(target.uncertainty.array) ** 2
    kernel, coefficients, _, model = rs.solve_weighted(reference.data, target.data,
                                                       weights, KERNEL)
    # clip=None: the same estimator on the same pixels as the reference solver.
    result = DifferenceImager(KERNEL, noise_model="uncertainty",
                              clip=None).fit(reference, target)
    assert_allclose(result.scale_factor, kernel.sum(), rtol=1e-5)
    assert_allclose(result.background_offset.value, coefficients[0],
                    atol=1e-3 * np.sqrt(np.median(weights) ** -1))
    sigma = _valid(target.uncertainty.array)
    assert np.max(np.abs(_valid(result.model.data) - model) / sigma) < 1e-3


def _model_dependent_deviation(reference, target, truth):
    """Check one pair against the reweighted solution; return (P - P_true) / sigma_P."""
    result = DifferenceImager(KERNEL, flat=1, sky=0).fit(reference, target)
    kernel, _, covariance, _ = rs.solve_reweighted(
        reference.data, target.data, lambda model: 25.0 + np.maximum(model, 0.0), KERNEL,
        tol=1e-7)
    # The exact likelihood (eq. 8) and IRLS on chi^2 are different
    # estimators; on these pairs they agree to 1e-3.
    assert_allclose(result.scale_factor, kernel.sum(), rtol=1e-3)
    scale_error = rs.scale_factor_error(covariance, KERNEL)
    z = result.normalized_residuals()
    assert abs(z.mean()) < 0.01
    assert abs(z.std() - 1) < 0.05
    return (result.scale_factor - truth.scale_factor) / scale_error


@pytest.fixture(scope="module")
def noisy_pair():
    """The first of `noisy_pairs`, for the fast default-suite versions of the tests."""
    return make_image_pair(seed=SEEDS[0], density=100)


def test_fixed_weights_match_reference_solver_one_pair(noisy_pair):
    # The fast default-suite version of the ten-pair test below.
    reference, target, _ = noisy_pair
    _check_fixed_weights(reference, target)


@pytest.mark.slow
def test_fixed_weights_match_reference_solver(noisy_pairs):
    for reference, target, _ in noisy_pairs:
        _check_fixed_weights(reference, target)


def test_model_dependent_noise_against_reweighted_solution_one_pair(noisy_pair):
    # The fast default-suite version of the ten-pair test below.
    assert abs(_model_dependent_deviation(*noisy_pair)) < 3


@pytest.mark.slow
def test_model_dependent_noise_against_reweighted_solution_and_truth(noisy_pairs):
    deviations = np.array([_model_dependent_deviation(*pair) for pair in noisy_pairs])
    assert np.all(np.abs(deviations) < 3)
    # Ten draws of a unit normal: their rms is near one.
    assert 0.4 < np.sqrt(np.mean(deviations ** 2)) < 1.6
