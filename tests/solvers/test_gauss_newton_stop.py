"""When the Gauss-Newton iteration stops: a stalled decrement near the tolerance is convergence."""

import pytest
import torch

from astro_dia.solvers import gauss_newton as gn


class QuadraticProblem:
    """f = |theta - a|^2 / 2 over one kernel pixel and one coefficient, in float32."""

    n_kernel, kernel_shape, dtype, newton_tolerance = 1, (1, 1), torch.float32, None
    regularization = 0.0

    def __init__(self, optimum):
        self.optimum = torch.tensor(optimum, dtype=torch.float32)

    # The model is the parameter vector itself, so its adjoint is the identity.
    def model(self, kernel, coefficients):
        return torch.cat([kernel.reshape(-1), coefficients])

    def transpose(self, image):
        return image[:1].reshape(1, 1), image[1:]

    def normalised_residuals(self, model):
        return torch.ones_like(model), model - self.optimum

    def objective_at_model(self, model, kernel, residuals=None):
        return 0.5 * torch.sum((model - self.optimum) ** 2)

    def data_gradient(self, model, residuals=None):
        return model - self.optimum

    def normalization(self):
        return 0.0


class RoundingMetric:
    """Exact steps plus an error of length ``d`` across them: the decrement stays at ``d``."""

    reweight_every_step = True

    def __init__(self, d):
        self.d, self.calls = d, 0

    def solve(self, gradient):
        self.calls += 1
        across = torch.tensor([0.0, 1.0] if self.calls % 2 else [-1.0, 0.0],
                              dtype=torch.float64)
        return gradient + self.d * across


@pytest.mark.parametrize("factor, converged", [(5.0, True), (50.0, False)])
def test_a_decrement_that_stops_shrinking_near_the_tolerance_is_convergence(factor, converged):
    tol = gn.tolerance(torch.float32)
    d = factor * tol
    problem = QuadraticProblem([1.0, 2.0])
    start = torch.tensor([1.0 + d, 2.0], dtype=torch.float64)
    state = gn.gauss_newton(problem, start, RoundingMetric(d), max_iter=20, max_reweight=0)
    assert state.converged is converged
    assert state.stalled is (not converged)
    assert state.n_iterations <= 3          # stopped at the first step that did not shrink it
    if converged:
        assert "stopped decreasing" in state.message
    else:
        assert "stalled" in state.message
