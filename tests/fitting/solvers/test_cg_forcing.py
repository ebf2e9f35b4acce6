"""The forcing of the conjugate-gradient solves of Gauss-Newton steps."""

import math

import torch

from astro_dia.solvers import cg
from astro_dia.solvers.gauss_newton import gauss_newton, pack, tolerance

from .test_evaluation import _point, _problem, pair  # noqa: F401 (fixture)


def _relative_residual(metric, rhs, x):
    residual = rhs - metric.apply(x)
    return math.sqrt(float(residual @ metric.precondition(residual))
                     / float(rhs @ metric.precondition(rhs)))


def test_a_solve_near_the_goal_stops_looser_but_within_the_ceiling(pair):  # noqa: F811
    problem = _problem(pair)
    theta = _point(problem, 1)
    metric = cg.ConjugateGradientMetric(problem, problem.weights(problem.target), rtol=1e-6)
    rhs = pack(*problem.transpose(problem.weights(problem.target) * problem.target))
    rhs = rhs - metric.apply(theta)
    decrement = math.sqrt(float(rhs @ metric.precondition(rhs)))
    metric.n_products = 0
    exact = metric.solve(rhs)
    tight = metric.n_products
    assert _relative_residual(metric, rhs, exact) < 1e-5
    # A goal far below the decrement: the forcing would be tighter than rtol -> rtol.
    metric.goal = 1e-9 * decrement
    metric.n_products = 0
    metric.solve(rhs)
    assert metric.n_products == tight
    # A goal near the decrement: stop at the ceiling, in fewer products.
    metric.goal = decrement
    metric.n_products = 0
    loose = metric.solve(rhs)
    assert metric.n_products < tight
    assert _relative_residual(metric, rhs, loose) <= cg.FORCING_CEILING * 1.01


def test_gauss_newton_sets_the_goal_and_clears_it(pair):  # noqa: F811
    problem = _problem(pair)
    metric = cg.ConjugateGradientMetric(problem, problem.weights(problem.target))
    seen = []
    solve = metric.solve

    def spy(rhs):
        seen.append(metric.goal)
        return solve(rhs)

    theta = metric.linear_solution()
    metric.solve = spy
    state = gauss_newton(problem, theta, metric, max_iter=20, max_reweight=20)
    assert state.converged
    assert seen and all(goal == tolerance(torch.float64) for goal in seen)
    assert metric.goal is None
