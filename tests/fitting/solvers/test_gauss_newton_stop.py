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


class ContractingMetric:
    """Steps that shrink the distance to the optimum by ``c`` each: ``solve(g) = (1 - c) g``."""

    reweight_every_step = True

    def __init__(self, c):
        self.c, self.calls = c, 0

    def solve(self, gradient):
        self.calls += 1
        return (1.0 - self.c) * gradient


@pytest.mark.parametrize("c", [0.05, 0.2])
def test_the_step_that_would_only_confirm_convergence_is_not_made(c):
    tol = gn.tolerance(torch.float32)
    problem = QuadraticProblem([1.0, 2.0])
    start = torch.tensor([1.0 + 0.3, 2.0 - 0.4], dtype=torch.float64)
    metric = ContractingMetric(c)
    state = gn.gauss_newton(problem, start, metric, max_iter=50, max_reweight=0)
    assert state.converged and "below" in state.message
    # The prediction is honest: the final point is within the tolerance ...
    distance = float(torch.linalg.norm(torch.cat([state.kernel.reshape(-1),
                                                  state.coefficients]) - problem.optimum))
    assert distance <= tol
    # ... and was reached without the solve that would have confirmed it: the
    # decrements sqrt(1 - c) |theta_k - a| shrink by c per step, and the last
    # solve made is the first whose step lands within the tolerance.
    decrements = [(1 - c) ** 0.5 * 0.5 * c ** k for k in range(50)]
    confirming = next(k for k, d in enumerate(decrements) if d <= tol) + 1
    assert metric.calls == confirming - 1


@pytest.mark.parametrize("arguments, expected", [
    ((2e-3, 0.1, 0.0, 1e-3), True),      # 2e-3 * 0.1 / 0.9 = 2.2e-4 <= 1e-3
    ((2e-3, 0.1, 0.5, 1e-3), False),     # the solve's residual makes c = 0.6: not predictable
    ((9e-3, 0.2, 0.0, 1e-3), False),     # 9e-3 * 0.25 = 2.3e-3 > 1e-3
    ((6e-2, 0.01, 0.0, 1e-3), False),    # more than fifty times the tolerance away
    ((2e-3, 0.0, 0.0, 1e-3), False),     # no earlier step: no contraction measured
    ((2e-7, 0.01, 0.0, 0.0), False),     # tolerance 0 (float64): never
])
def test_predicts_convergence(arguments, expected):
    assert gn.predicts_convergence(*arguments) is expected


def test_float64_fits_confirm_every_step():
    problem = QuadraticProblem([1.0, 2.0])
    problem.dtype = torch.float64
    start = torch.tensor([1.3, 1.6], dtype=torch.float64)
    metric = ContractingMetric(0.05)
    state = gn.gauss_newton(problem, start, metric, max_iter=50, max_reweight=0)
    assert state.converged and "Newton decrement below" in state.message


def test_a_resumed_fit_predicts_from_the_contraction_of_the_fit_it_resumes():
    problem = QuadraticProblem([1.0, 2.0])
    start = torch.tensor([1.3, 1.6], dtype=torch.float64)
    first = gn.gauss_newton(problem, start, ContractingMetric(0.05), max_iter=50,
                            max_reweight=0)
    assert first.contraction == pytest.approx(0.05, rel=1e-3)
    # The problem changed a little (a few pixels more or less): 0.01 sigma to go.
    nearby = torch.tensor([1.0 + 0.006, 2.0 + 0.008], dtype=torch.float64)
    counted = {}
    for carried in (None, first.contraction):
        metric = ContractingMetric(0.05)
        state = gn.gauss_newton(problem, nearby, metric, max_iter=50, max_reweight=0,
                                contraction=carried)
        distance = float(torch.linalg.norm(torch.cat([state.kernel.reshape(-1),
                                                      state.coefficients]) - problem.optimum))
        assert state.converged and distance <= gn.tolerance(torch.float32)
        counted[carried] = metric.calls
    # one step, where a fit measuring its own contraction needs a second to confirm it
    assert counted[first.contraction] == 1 and counted[None] == 2
