"""Spatially varying kernels: ``kernel_degree`` and ``constant_scale`` (issue 10)."""

import numpy as np
import pytest
import torch
from astropy.nddata import StdDevUncertainty
from numpy.testing import assert_allclose

from astro_dia import DifferenceImager
from astro_dia.fitting._normal import add_regularization, assemble_normal_equations
from astro_dia.io import read_result
from astro_dia.simulate import make_image_pair
from astro_dia.solvers import choose_solver
from astro_dia.solvers.cg import ConjugateGradientMetric
from astro_dia.solvers.gauss_newton import pack

from . import reference_solver as rs

SIZE = 7


def _fit(pair, solver="direct", dtype="float64", **settings):
    reference, target, _ = pair
    if settings.get("noise_model", "ccd") == "ccd":
        settings.setdefault("flat", 1)
        settings.setdefault("sky", 0)
    return DifferenceImager(SIZE, solver=solver, dtype=dtype, **settings).fit(reference, target)


@pytest.fixture(scope="module")
def varying_pair():
    """A field whose kernel widens from left to right."""
    return make_image_pair(shape=(96, 96), psf_sigma=1.2, kernel_sigma=(0.5, 1.6),
                           density=150, seed=21)


@pytest.fixture(scope="module")
def constant_pair():
    return make_image_pair(shape=(96, 96), psf_sigma=1.2, kernel_sigma=1.0, density=150,
                           seed=22)


@pytest.fixture(scope="module")
def varying_fits(varying_pair):
    return {(solver, degree, constant): _fit(varying_pair, solver, kernel_degree=degree,
                                             constant_scale=constant)
            for solver in ("direct", "cg", "iterative")
            for degree, constant in ((1, False), (1, True), (2, False))}


# -- the model -------------------------------------------------------------------------
def test_fixed_weights_give_the_independent_least_squares_solution(varying_pair):
    """With fixed weights the fit is linear least squares: compare with numpy's."""
    reference, target, _ = varying_pair
    result = _fit(varying_pair, noise_model="uncertainty", kernel_degree=1,
                  background_degree=1, constant_scale=False, clip=None)
    h = SIZE // 2
    weights = 1.0 / target.uncertainty.array[h:-h, h:-h] ** 2
    kernels, coefficients = rs.solve_weighted_varying(reference.data, target.data, weights,
                                                      SIZE, 1, degree=1)
    assert_allclose(result.kernel_terms, kernels, atol=1e-8 * np.abs(kernels).max())
    assert_allclose(result.background_coefficients.value, coefficients, rtol=1e-7)
    assert_allclose(result.scale_factor, kernels[0].sum(), rtol=1e-10)


@pytest.mark.parametrize("degree, constant", [(1, False), (1, True), (2, False)])
def test_solvers_agree(varying_fits, degree, constant):
    direct = varying_fits[("direct", degree, constant)]
    assert direct.converged
    for solver in ("cg", "iterative"):
        other = varying_fits[(solver, degree, constant)]
        assert other.converged
        assert_allclose(other.scale_factor, direct.scale_factor, rtol=1e-6)
        assert np.abs(other.kernel_terms - direct.kernel_terms).max() <= (
            1e-5 * np.abs(direct.kernel_terms).max())
        assert_allclose(other.scale_factor_error, direct.scale_factor_error, rtol=1e-4)


def test_model_is_the_local_kernel_applied_at_each_pixel(varying_pair, varying_fits):
    """``result.model`` at a pixel is the reference convolved with ``kernel_at`` there."""
    reference, _, _ = varying_pair
    result = varying_fits[("direct", 2, False)]
    background = result.background.value
    h = SIZE // 2
    for y, x in ((10, 12), (48, 47), (80, 30), (85, 86)):
        kernel = result.kernel_at(x, y)
        window = reference.data[y - h:y + h + 1, x - h:x + h + 1]
        expected = np.sum(window[::-1, ::-1] * kernel) + background[y, x]
        assert_allclose(result.model.data[y, x], expected, rtol=1e-10)


def test_kernel_at_and_scale_factor_at(varying_fits, varying_pair):
    result = varying_fits[("direct", 1, False)]
    ny, nx = varying_pair[1].shape
    centre = ((nx - 1) / 2, (ny - 1) / 2)
    assert_allclose(result.kernel_at(*centre), result.kernel, atol=1e-15)
    assert_allclose(result.scale_factor_at(*centre), result.scale_factor, rtol=1e-12)
    assert isinstance(result.scale_factor_at(3.0, 4.0), float)
    x = np.array([0.0, 40.0, 95.0])
    y = np.array([95.0, 10.0, 0.0])
    p = result.scale_factor_at(x, y)
    assert_allclose(p, [result.kernel_at(xi, yi).sum() for xi, yi in zip(x, y)], rtol=1e-12)
    assert result.scale_factor_map.shape == (ny, nx)
    assert_allclose(result.scale_factor_map[10, 40], p[1], rtol=1e-12)
    with pytest.raises(ValueError, match="one position"):
        result.kernel_at(x, y)


def test_constant_scale_holds_p_fixed(varying_fits):
    result = varying_fits[("direct", 1, True)]
    assert result.constant_scale
    assert np.abs(result.kernel_terms[1:].sum(axis=(1, 2))).max() < 1e-12
    assert np.ptp(result.scale_factor_map) < 1e-10
    # the free fit lets P vary: the constrained optimum is a different one
    free = varying_fits[("direct", 1, False)]
    assert np.ptp(free.scale_factor_map) > 1e-6
    assert result.loss_value >= free.loss_value - 1e-6 * abs(free.loss_value)


def test_scale_factor_errors(varying_fits):
    result = varying_fits[("direct", 1, False)]
    assert_allclose(result.scale_factor_error_at(47.5, 47.5), result.scale_factor_error,
                    rtol=1e-10)
    # extrapolating the kernel to a corner is less certain than the centre
    assert result.scale_factor_error_at(0.0, 0.0) > result.scale_factor_error
    constant = varying_fits[("direct", 1, True)]
    assert_allclose(constant.scale_factor_error_at(np.array([0.0, 95.0]), 0.0),
                    constant.scale_factor_error)
    assert result.covariance.shape == (3 * SIZE ** 2 + 1,) * 2


def test_spatial_variation_removes_the_residuals_near_stars(varying_pair):
    """The d=0 fit leaves structure around the stars; d=1 brings it to the noise."""
    _, _, truth = varying_pair
    rms = {}
    for degree in (0, 1):
        result = _fit(varying_pair, kernel_degree=degree)
        z = result.difference.data / result.difference.uncertainty.array
        bright = truth.stars[np.asarray(truth.stars["flux"]) > 3000]
        near = np.zeros(z.shape, bool)
        for x, y in zip(np.rint(bright["x"]).astype(int), np.rint(bright["y"]).astype(int)):
            near[max(0, y - 4):y + 5, max(0, x - 4):x + 5] = True
        use = near & result.fit_mask & np.isfinite(z)
        rms[degree] = float(np.sqrt(np.mean(z[use] ** 2)))
    assert rms[0] > 1.12
    assert rms[1] < 1.06
    assert rms[0] - rms[1] > 0.1


def test_constant_field_gives_no_significant_variation(constant_pair):
    base = _fit(constant_pair)
    result = _fit(constant_pair, kernel_degree=1)
    # P agrees with the constant fit within its error, at the centre and corners
    assert abs(result.scale_factor - base.scale_factor) < result.scale_factor_error
    corners = np.array([0.0, 95.0])
    pulls = (result.scale_factor_at(corners, corners[::-1]) - base.scale_factor) / (
        result.scale_factor_error_at(corners, corners[::-1]))
    assert np.all(np.abs(pulls) < 3)
    # and the variation terms are consistent with zero: chi^2 per dof near 1
    pixels = SIZE ** 2
    theta = result.kernel_terms[1:].reshape(-1)
    block = result.covariance[pixels:3 * pixels, pixels:3 * pixels]
    chi2 = float(theta @ np.linalg.solve(block, theta)) / theta.size
    assert 0.7 < chi2 < 1.3


# -- assembly, constraint and matrix-free products -----------------------------------
def _problem(pair, *, degree, constant, regularization=0.0):
    from astro_dia.fitting._problem import FitProblem
    from astro_dia.background import background_basis
    from astro_dia.losses import GaussianLoss
    from astro_dia.noise import make_noise_model
    reference, target, _ = pair
    shape, h = target.shape, SIZE // 2
    valid = (slice(h, shape[0] - h), slice(h, shape[1] - h))
    terms = make_noise_model("ccd", flat=1, sky=0).variance_terms(target)
    return FitProblem(reference.data, target.data,
                      np.ones((shape[0] - 2 * h, shape[1] - 2 * h), bool),
                      background_basis(shape, 0, region=valid), terms.cropped(valid), SIZE,
                      GaussianLoss(), regularization, None, device=torch.device("cpu"),
                      dtype=torch.float64, kernel_degree=degree, constant_scale=constant)


def _constraint_matrix(problem):
    """The dense map T from parameters to kernels under constant_scale."""
    n = problem.n_kernel + problem.basis.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    columns = [pack(problem.effective_kernel(e[:problem.n_kernel].reshape(
        problem.kernel_shape)), e[problem.n_kernel:]) for e in eye]
    return torch.stack(columns, 1)


@pytest.mark.parametrize("constant", [False, True])
def test_normal_matrix_matches_the_design_matrix(varying_pair, constant):
    reference, _, _ = varying_pair
    problem = _problem(varying_pair, degree=1, constant=constant)
    weights = problem.weights(problem.target)
    normal, rhs = assemble_normal_equations(problem, weights, max_bytes=10 ** 5)
    add_regularization(normal, problem, rhs)
    design = rs.varying_design_matrix(reference.data - problem.reference_mean, SIZE, 1)
    w = weights.numpy().ravel()
    expected = design.T @ (design * w[:, None])
    expected_rhs = design.T @ (w * problem.target.numpy().ravel())
    if constant:
        t = _constraint_matrix(problem).numpy()
        expected, expected_rhs = t.T @ expected @ t, t.T @ expected_rhs
        fixed = problem.fixed.numpy()
        assert len(fixed) == 2
        expected[fixed, fixed] = 1.0
    scale = np.abs(expected).max()
    assert_allclose(normal.numpy(), expected, rtol=0, atol=1e-10 * scale)
    assert_allclose(rhs.numpy(), expected_rhs, rtol=0, atol=1e-10 * np.abs(expected_rhs).max())


@pytest.mark.parametrize("constant", [False, True])
def test_matrix_free_products_match_the_normal_matrix(varying_pair, constant):
    problem = _problem(varying_pair, degree=1, constant=constant, regularization=0.5)
    weights = problem.weights(problem.target)
    normal, _ = assemble_normal_equations(problem, weights)
    add_regularization(normal, problem)
    metric = ConjugateGradientMetric(problem, weights)
    vector = torch.randn(normal.shape[0], dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    assert_allclose(metric.apply(vector).numpy(), (normal @ vector).numpy(), rtol=0,
                    atol=1e-9 * float((normal @ vector).abs().max()))
    # the preconditioner is a positive-definite approximation of the same matrix
    assert metric.factor is not None


def test_regularised_fits_agree(varying_pair):
    direct = _fit(varying_pair, kernel_degree=1, regularization=0.3, constant_scale=True)
    for solver in ("cg", "iterative"):
        other = _fit(varying_pair, solver, kernel_degree=1, regularization=0.3,
                     constant_scale=True)
        assert_allclose(other.scale_factor, direct.scale_factor, rtol=1e-6)


def test_float32_agrees_with_float64(varying_pair, varying_fits):
    single = _fit(varying_pair, "direct", "float32", kernel_degree=1, constant_scale=False)
    assert_allclose(single.scale_factor, varying_fits[("direct", 1, False)].scale_factor,
                    rtol=1e-4)


# -- the rest of the package -------------------------------------------------------------
def test_model_is_consistent_with_the_difference(varying_pair, varying_fits):
    reference, target, _ = varying_pair
    result = varying_fits[("direct", 1, False)]
    finite = np.isfinite(result.model.data)
    assert_allclose((target.data - result.model.data)[finite],
                    result.difference.data[finite], atol=1e-9)
    # P(x, y) is the sum of the local kernel, and the model is finite on the fit
    assert np.isfinite(result.model.data[result.fit_mask]).all()
    assert_allclose(result.scale_factor_map[result.fit_mask].mean(),
                    np.mean([result.kernel_at(x, 48.0).sum() for x in (10.0, 86.0)]),
                    rtol=1e-2)


def test_provenance_and_round_trip(varying_fits, tmp_path):
    result = varying_fits[("direct", 1, True)]
    header = result.difference.meta
    assert header["DIA_KDEG"] == 1 and header["DIA_CSCL"] is True
    path = tmp_path / "fit.fits"
    result.write(path)
    back = read_result(path)
    assert back.kernel_degree == 1 and back.constant_scale
    assert_allclose(back.kernel_terms, result.kernel_terms)
    assert_allclose(back.kernel_at(10.0, 20.0), result.kernel_at(10.0, 20.0))
    assert_allclose(back.scale_factor_at(5.0, 5.0), result.scale_factor_at(5.0, 5.0))


def test_constant_kernel_results_answer_the_same_questions(constant_pair, tmp_path):
    result = _fit(constant_pair)
    assert result.kernel_degree == 0 and result.kernel_terms is None
    assert_allclose(result.kernel_at(3.0, 70.0), result.kernel)
    assert result.scale_factor_at(3.0, 70.0) == result.scale_factor
    assert result.scale_factor_error_at(3.0, 70.0) == result.scale_factor_error
    path = tmp_path / "fit.fits"
    result.write(path)
    assert read_result(path).kernel_terms is None


def test_photometry_uses_the_local_kernel_and_scale_factor(varying_fits, varying_pair):
    from astro_dia.photometry import differential_photometry, gaussian_psf
    _, _, truth = varying_pair
    result = varying_fits[("direct", 1, False)]
    stars = truth.stars[np.argsort(np.asarray(truth.stars["flux"]))[-4:]]
    table = differential_photometry(result, stars, gaussian_psf(1.2))
    assert_allclose(table["scale_factor"], result.scale_factor_at(stars["x"], stars["y"]))
    assert_allclose(table["flux_ref"].value, table["flux"].value / table["scale_factor"])
    # constant stars: no significant differential flux
    assert np.all(np.abs(table["flux"].value / table["flux_err"].value) < 5)


@pytest.mark.parametrize("settings, match", [
    (dict(kernel_degree=-1), "kernel_degree"),
    (dict(kernel_degree=1.5), "kernel_degree"),
    (dict(kernel_degree=1, reference_noise=True), "reference_noise"),
])
def test_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        DifferenceImager(SIZE, **settings)


def test_too_many_unknowns_is_a_clear_error():
    reference, target, _ = make_image_pair(shape=(40, 40), seed=1)
    with pytest.raises(ValueError, match="kernel_degree"):
        DifferenceImager(9, kernel_degree=3, flat=1, sky=0).fit(reference, target)


def test_auto_choice_counts_the_kernel_terms():
    cpu = torch.device("cpu")
    assert choose_solver((142, 142), 19, cpu) == "direct"
    assert choose_solver((142, 142), 19, cpu, kernel_terms=6) == "cg"


def test_inputs_are_not_modified(varying_pair):
    reference, target, _ = varying_pair
    before = reference.data.copy(), target.data.copy()
    target_with = target.copy()
    target_with.uncertainty = StdDevUncertainty(target.uncertainty.array.copy())
    _fit((reference, target_with, None), kernel_degree=1)
    assert np.array_equal(reference.data, before[0])
    assert np.array_equal(target.data, before[1])
