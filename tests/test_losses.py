"""Tests of astro_dia.losses: per-pixel losses, their normalisation Q, the Laplacian."""

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from scipy import integrate, special, stats

from astro_dia.losses import (GaussianLoss, HuberLoss, Loss, StudentTLoss, get_loss,
                              loss_irls_weight, loss_psi,
                              laplacian_matrix, laplacian_penalty)

Z = np.array([-7.0, -2.0, -1.345, -0.3, 0.0, 0.5, 1.0, 3.0, 12.0])


def rho(loss, z):
    """Evaluate a loss on numpy input through torch (float64)."""
    return loss(torch.as_tensor(np.asarray(z, dtype=float), dtype=torch.float64)).numpy()


def log_integral_of_exp_minus_rho(loss):
    """ln of the integral of exp(-rho(z)) over the real line, by quadrature."""

    def integrand(z):
        return math.exp(-float(rho(loss, z)))

    value = sum(integrate.quad(integrand, a, b, limit=200)[0]
                for a, b in ((-np.inf, -1.0), (-1.0, 1.0), (1.0, np.inf)))
    return math.log(value)


# --------------------------------------------------------------------------
# Gaussian


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_loss_values(dtype):
    z = torch.as_tensor(Z, dtype=dtype)
    out = GaussianLoss()(z)
    assert out.dtype == dtype
    assert_allclose(out.numpy(), Z ** 2 / 2, rtol=1e-6 if dtype == torch.float32 else 1e-15)


def test_gaussian_normalization_is_log_of_the_integral():
    q = GaussianLoss().normalization(1)
    assert q == pytest.approx(0.5 * math.log(2 * math.pi), rel=1e-15)
    assert q == pytest.approx(log_integral_of_exp_minus_rho(GaussianLoss()), rel=1e-9)
    assert GaussianLoss().normalization(250) == pytest.approx(250 * q, rel=1e-15)


# --------------------------------------------------------------------------
# Huber


@pytest.mark.parametrize("c", [0.5, 1.345, 2.0])
def test_huber_piecewise_values(c):
    expected = np.where(np.abs(Z) <= c, Z ** 2 / 2, c * np.abs(Z) - c ** 2 / 2)
    assert_allclose(rho(HuberLoss(c=c), Z), expected, rtol=1e-15, atol=0)


def test_huber_default_threshold():
    assert HuberLoss().c == 1.345
    assert repr(HuberLoss(c=2)) == "HuberLoss(c=2.0)"


@pytest.mark.parametrize("c", [0.7, 1.345, 3.0])
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_huber_is_continuous_with_continuous_slope_at_c(c, sign):
    loss = HuberLoss(c=c)
    eps = 1e-7
    z = torch.tensor([sign * (c - eps), sign * c, sign * (c + eps)], dtype=torch.float64,
                     requires_grad=True)
    values = loss(z)
    values.sum().backward()
    assert_allclose(values.detach().numpy(), c ** 2 / 2, rtol=0, atol=2 * c * eps)
    # the slope is z inside and c * sign(z) outside: both equal +-c at the joint
    assert_allclose(z.grad.numpy(), sign * c, rtol=0, atol=2 * eps)


def test_huber_gradient_is_bounded_beyond_c():
    z = torch.tensor([-100.0, -5.0, 5.0, 100.0], dtype=torch.float64, requires_grad=True)
    HuberLoss(c=1.0)(z).sum().backward()
    assert_allclose(z.grad.numpy(), [-1.0, -1.0, 1.0, 1.0], rtol=0, atol=0)


@pytest.mark.parametrize("c", [0.3, 1.0, 1.345, 2.5, 4.0])
def test_huber_normalization_matches_eq14_and_quadrature(c):
    loss = HuberLoss(c=c)
    # eq. 14 computed here independently...
    inner = math.sqrt(2 * math.pi) * special.erf(c / math.sqrt(2))
    tails = 2 * math.exp(-c ** 2 / 2) / c
    assert loss.normalization(1) == pytest.approx(math.log(inner + tails), rel=1e-13)
    # ...and as ln of the integral of exp(-rho)
    assert loss.normalization(1) == pytest.approx(log_integral_of_exp_minus_rho(loss), rel=1e-8)
    assert loss.normalization(37) == pytest.approx(37 * loss.normalization(1), rel=1e-14)


def test_huber_normalization_exceeds_gaussian():
    # exp(-rho) of Huber is larger than the Gaussian's everywhere beyond c
    assert HuberLoss(c=1.0).normalization(10) > GaussianLoss().normalization(10)


@pytest.mark.parametrize("n_data", [1, 1000])
def test_huber_normalization_large_c_limit_is_gaussian(n_data):
    assert HuberLoss(c=40.0).normalization(n_data) == pytest.approx(
        n_data / 2 * math.log(2 * math.pi), rel=1e-14)


@pytest.mark.parametrize("c", [0, -1.0, np.nan, np.inf])
def test_huber_invalid_threshold(c):
    with pytest.raises(ValueError, match="Huber threshold c must be positive and finite"):
        HuberLoss(c=c)


# --------------------------------------------------------------------------
# Student's t


@pytest.mark.parametrize("nu", [1.0, 2.5, 4.0, 30.0])
def test_student_t_normalization_integrates_to_one(nu):
    loss = StudentTLoss(nu=nu)
    ln_norm = loss.normalization(1)

    def density(z):
        return math.exp(-float(rho(loss, z)) - ln_norm)

    total = sum(integrate.quad(density, a, b, limit=200)[0]
                for a, b in ((-np.inf, -1.0), (-1.0, 1.0), (1.0, np.inf)))
    assert total == pytest.approx(1.0, rel=1e-8)


@pytest.mark.parametrize("nu", [1.0, 4.0, 17.0])
def test_student_t_is_the_negative_log_density(nu):
    loss = StudentTLoss(nu=nu)
    assert_allclose(rho(loss, Z) + loss.normalization(1), -stats.t.logpdf(Z, nu), rtol=1e-12)


def test_student_t_tends_to_gaussian_for_large_nu():
    loss = StudentTLoss(nu=1e7)
    assert_allclose(rho(loss, Z[np.abs(Z) < 4]), Z[np.abs(Z) < 4] ** 2 / 2, rtol=1e-5)
    assert loss.normalization(3) == pytest.approx(GaussianLoss().normalization(3), rel=1e-6)


def test_student_t_default_and_repr():
    assert StudentTLoss().nu == 4.0
    assert repr(StudentTLoss(nu=3)) == "StudentTLoss(nu=3.0)"


@pytest.mark.parametrize("nu", [0, -2.0, np.nan, np.inf])
def test_student_t_invalid_nu(nu):
    with pytest.raises(ValueError, match="nu must be positive and finite"):
        StudentTLoss(nu=nu)


# --------------------------------------------------------------------------
# get_loss


@pytest.mark.parametrize("name, cls", [("gaussian", GaussianLoss), ("huber", HuberLoss),
                                       ("student_t", StudentTLoss), ("Huber", HuberLoss),
                                       ("GAUSSIAN", GaussianLoss)])
def test_get_loss_names(name, cls):
    loss = get_loss(name)
    assert type(loss) is cls
    assert loss.name == name.lower()


def test_get_loss_passes_callables_through():
    loss = HuberLoss(c=3.0)
    assert get_loss(loss) is loss

    def cauchy(z):
        return torch.log1p(z * z)

    assert get_loss(cauchy) is cauchy


@pytest.mark.parametrize("bad", ["l2", "", 42, None])
def test_get_loss_errors(bad):
    with pytest.raises(ValueError, match="loss must be one of"):
        get_loss(bad)


def test_base_loss():
    assert Loss().normalization(10) == 0.0
    with pytest.raises(NotImplementedError):
        Loss()(torch.zeros(1))


# --------------------------------------------------------------------------
# Laplacian


def neighbour_count(n, i, j):
    return sum(0 <= i + di < n and 0 <= j + dj < n
               for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_laplacian_matrix_structure(size):
    lap = laplacian_matrix(size)
    assert lap.shape == (size ** 2, size ** 2)
    assert_allclose(lap, lap.T, rtol=0, atol=0)
    assert_allclose(lap.sum(axis=1), 0.0, rtol=0, atol=0)
    eigenvalues = np.linalg.eigvalsh(lap)
    assert eigenvalues.min() > -1e-10
    if size > 1:
        # connected graph: exactly one zero eigenvalue (the constant kernel)
        assert np.sum(eigenvalues < 1e-10) == 1
    for p in range(size ** 2):
        i, j = divmod(p, size)  # C order
        assert lap[p, p] == neighbour_count(size, i, j)
        for q in range(size ** 2):
            k, m = divmod(q, size)
            if p != q:
                assert lap[p, q] == (-1.0 if abs(i - k) + abs(j - m) == 1 else 0.0)


def test_laplacian_matrix_degrees_of_corner_edge_interior():
    lap = laplacian_matrix(5)
    diagonal = np.diag(lap).reshape(5, 5)
    assert diagonal[0, 0] == diagonal[0, 4] == diagonal[4, 0] == diagonal[4, 4] == 2
    assert diagonal[0, 2] == diagonal[2, 0] == diagonal[4, 3] == diagonal[1, 4] == 3
    assert np.all(diagonal[1:4, 1:4] == 4)


@pytest.mark.parametrize("size", [3, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_laplacian_penalty_is_the_quadratic_form(size, seed):
    theta = torch.tensor(np.random.default_rng(seed).normal(size=(size, size)),
                         dtype=torch.float64, requires_grad=True)
    penalty = laplacian_penalty(theta)
    lap = laplacian_matrix(size)
    flat = theta.detach().numpy().ravel()
    assert penalty.ndim == 0
    assert float(penalty.detach()) == pytest.approx(flat @ lap @ flat, rel=1e-12)
    penalty.backward()
    assert_allclose(theta.grad.numpy().ravel(), 2 * lap @ flat, rtol=1e-12, atol=1e-12)


def test_laplacian_penalty_vanishes_for_a_constant_kernel_only():
    assert float(laplacian_penalty(torch.full((5, 5), 0.04, dtype=torch.float64))) == 0.0
    delta = torch.zeros((5, 5), dtype=torch.float64)
    delta[2, 2] = 1.0
    assert float(laplacian_penalty(delta)) == 4.0  # four edges, each difference 1


@pytest.mark.parametrize("loss", [GaussianLoss(), HuberLoss(c=1.0), StudentTLoss(nu=3.0)])
def test_losses_take_and_return_numpy(loss):
    z = np.array([-4.0, -0.3, 0.0, 0.7, 2.5])
    values = loss(z)
    assert isinstance(values, np.ndarray) and values.dtype == np.float64
    np.testing.assert_allclose(values, loss(torch.tensor(z)).numpy(), rtol=1e-15)
    assert isinstance(loss(0.7), float) and loss(0.7) == pytest.approx(values[3], rel=1e-15)


def test_laplacian_penalty_takes_numpy_and_tensors():
    kernel = np.random.default_rng(0).normal(size=(5, 5))
    value = laplacian_penalty(kernel)
    assert isinstance(value, float)
    assert value == pytest.approx(float(kernel.ravel() @ laplacian_matrix(5) @ kernel.ravel()),
                                  rel=1e-12)
    assert float(laplacian_penalty(torch.tensor(kernel))) == pytest.approx(value, rel=1e-12)


# -- closed-form derivatives --------------------------------------------------------------
class _PlainHuber(Loss):
    """Huber's rho only: psi and the re-weighting factor come from autograd."""

    def rho(self, z):
        a = torch.abs(z)
        return torch.where(a <= 1.5, 0.5 * z * z, 1.5 * (a - 0.75))


@pytest.mark.parametrize("loss", [GaussianLoss(), HuberLoss(), HuberLoss(c=0.5),
                                  StudentTLoss(), StudentTLoss(nu=1.5)])
def test_closed_form_psi_and_weight_equal_autograd(loss):
    z = torch.linspace(-7.0, 7.0, 281, dtype=torch.float64)
    z = z[torch.abs(z) > 1e-6]
    leaf = z.clone().requires_grad_(True)
    (psi,) = torch.autograd.grad(loss.rho(leaf).sum(), leaf)
    assert_allclose(loss.psi(z).numpy(), psi.numpy(), rtol=1e-12, atol=1e-14)
    assert_allclose(loss.irls_weight(z).numpy(), (psi / z).numpy(), rtol=1e-12)
    # The generic routes (base class and a plain callable) give the same.
    assert_allclose(loss_psi(loss.rho, z).numpy(), psi.numpy(), rtol=1e-12, atol=1e-14)
    assert_allclose(Loss.irls_weight(loss, z).numpy(), (psi / z).numpy(), rtol=1e-12)


def test_generic_weight_near_zero_is_the_curvature():
    z = torch.tensor([0.0, 1e-5, -2e-4, 3.0], dtype=torch.float64)
    weights = _PlainHuber().irls_weight(z)
    assert_allclose(weights.numpy(), [1.0, 1.0, 1.0, 0.5], rtol=1e-12)
    assert_allclose(loss_irls_weight(_PlainHuber().rho, z).numpy(), weights.numpy())
    assert_allclose(HuberLoss(c=1.5).irls_weight(z).numpy(), weights.numpy(), rtol=1e-12)


@pytest.mark.parametrize("loss", [GaussianLoss(), HuberLoss(c=0.8), StudentTLoss(nu=2.5)])
def test_closed_form_curvature_equals_autograd(loss):
    from astro_dia.uncertainty import loss_curvature
    z = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)
    z = z[torch.abs(torch.abs(z) - getattr(loss, "c", -1.0)) > 1e-6]
    assert_allclose(loss.curvature(z).numpy(), loss_curvature(loss.rho, z).numpy(),
                    rtol=1e-12, atol=1e-14)
    assert_allclose(loss_curvature(loss, z.numpy()), loss.curvature(z).numpy())
