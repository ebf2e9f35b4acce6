"""The Gauss-Newton evaluation: gradient through the model's adjoint equals autograd."""

import numpy as np
import pytest
import torch

from astro_dia.fitting._problem import FitProblem
from astro_dia.background import background_basis
from astro_dia.losses import GaussianLoss, HuberLoss
from astro_dia.noise import make_noise_model
from astro_dia.simulate import make_image_pair
from astro_dia.solvers.evaluation import Evaluation, irls_weights_at, pack, unpack


@pytest.fixture(scope="module")
def pair():
    return make_image_pair(shape=(48, 52), density=100, seed=5, n_cosmic_rays=2)


def _problem(pair, *, loss=GaussianLoss(), regularization=0.0, kernel_degree=0,
             constant_scale=False, background_degree=1):
    reference, target, _ = pair
    size, h = 7, 3
    shape = target.shape
    valid = (slice(h, shape[0] - h), slice(h, shape[1] - h))
    terms = make_noise_model("ccd", flat=1, sky=0).variance_terms(target)
    mask = np.ones((shape[0] - 2 * h, shape[1] - 2 * h), bool)
    mask[5:9, 10:12] = False
    return FitProblem(reference.data, target.data, mask,
                      background_basis(shape, background_degree, region=valid),
                      terms.cropped(valid), size, loss, regularization, None,
                      device=torch.device("cpu"), dtype=torch.float64,
                      kernel_degree=kernel_degree, constant_scale=constant_scale)


def _autograd_gradient(problem, theta):
    """Independent truth: autograd through the FFT convolution of `objective`."""
    kernel, coefficients = unpack(problem, theta)
    kernel.requires_grad_(True)
    coefficients.requires_grad_(True)
    g_kernel, g_coefficients = torch.autograd.grad(
        problem.objective(kernel, coefficients), (kernel, coefficients))
    return pack(g_kernel, g_coefficients)


def _point(problem, seed):
    rng = np.random.default_rng(seed)
    kernel = np.zeros(problem.kernel_shape)
    centre = problem.half
    if problem.kernel_degree == 0:
        kernel[centre, centre] = 1.0
    else:
        kernel[0, centre, centre] = 1.0
    kernel = kernel + 0.01 * rng.normal(size=kernel.shape)
    coefficients = rng.normal(size=problem.basis.shape[0])
    return pack(torch.as_tensor(kernel), torch.as_tensor(coefficients))


@pytest.mark.parametrize("settings", [
    dict(),
    dict(loss=HuberLoss()),
    dict(regularization=0.3),
    dict(background_degree=0),
    dict(kernel_degree=1, constant_scale=True),
    dict(kernel_degree=1),
])
def test_gradient_equals_autograd_through_the_convolution(pair, settings):
    problem = _problem(pair, **settings)
    theta = _point(problem, 3)
    evaluation = Evaluation(problem, theta)
    truth = _autograd_gradient(problem, theta)
    np.testing.assert_allclose(evaluation.gradient().numpy(), truth.numpy(),
                               rtol=1e-9, atol=1e-9 * float(truth.abs().max()))
    assert evaluation.value == pytest.approx(float(problem.objective(*unpack(problem, theta))),
                                             rel=1e-14)


def test_weights_are_those_of_the_model_of_theta(pair):
    problem = _problem(pair, loss=HuberLoss(c=1.0))
    theta = _point(problem, 4)
    weights = Evaluation(problem, theta).irls_weights()
    model = problem.model(*unpack(problem, theta))
    variance = problem.variance(model)
    z = (problem.target - model) / torch.sqrt(variance)
    # Huber: psi(z) / z = 1 inside c, c / |z| outside; zero off the mask.
    expected = torch.where(torch.abs(z) <= 1.0, 1.0, 1.0 / torch.abs(z)) / variance
    expected = torch.where(problem.mask, expected, 0.0)
    np.testing.assert_allclose(weights.numpy(), expected.numpy(), rtol=1e-12)
    assert float(weights[~problem.mask].abs().max()) == 0.0
    np.testing.assert_array_equal(irls_weights_at(problem, model).numpy(), weights.numpy())
