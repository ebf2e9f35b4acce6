"""
The Gauss-Newton iteration shared by the direct and matrix-free solvers.

Both solvers minimise ``problem.objective`` itself, the exact negative
log-likelihood (with its ``sum(ln sigma)`` term and any differentiable
loss) plus the Laplacian penalty, by Newton-type steps

.. math::

    \\theta_{k+1} = \\theta_k - t_k\\, H^{-1} \\nabla f(\\theta_k),

where ``H = A^T W A`` is the Gauss-Newton (iteratively re-weighted
least-squares) metric with weights ``W = psi(z) / (z sigma**2)`` and the
gradient is computed exactly (`~astro_dia.solvers.evaluation`: from the
model image the line search made, no further convolution). Because the
gradient is exact, the fixed point is the optimum of the objective, not the
fixed point of re-weighted chi**2; ``H`` only sets the speed. The first
step from nothing is the weighted least-squares solution of Bramich (2008)
with the weights at the data. The solvers differ in how they apply
``H^{-1}``: a Cholesky factor of the assembled matrix (`solve_direct`) or
preconditioned conjugate gradients (`solve_cg`).

The iteration stops when the Newton decrement
``lambda = sqrt(g^T H^{-1} g)``, the length of the step in units of the
statistical standard deviations of the parameters, falls below ``1e-6``
(float64) or ``1e-3`` (float32), or the problem's own ``newton_tolerance``
(1.0 for the robust pass before clipping), or stops decreasing within ten
times that tolerance (the rounding noise of the gradient), or when the
contraction of the last steps predicts that the step just taken has
brought it below the tolerance (`predicts_convergence`). Where the
objective is far from quadratic
(gross outliers under the Gaussian loss with a model-dependent variance) or
at the resolution of float32, the steps stall; `polish_if_stalled` then
hands over to the whitened L-BFGS of `~astro_dia.solvers.iterative`.
"""

import math

import torch

from .._problem import FitState
from .._tolerances import tolerance as _tolerance
from .evaluation import Evaluation, Evaluations, pack, unpack
from .iterative import solve_iterative

__all__ = []

#: Above this decrement ratio between two steps the metric is re-weighted.
_REWEIGHT_RATIO = 0.3

#: ... unless the tolerance is this few steps away at the current ratio.
_CHEAP_STEPS = 8

#: Largest contraction per step (the ratio of the last two decrements plus
#: the relative residual of the step's solve) from which the decrement
#: after a step is predicted (`predicts_convergence`).
_PREDICTABLE_CONTRACTION = 0.5

#: ... and only from a decrement within this factor of the tolerance, where
#: the rounding of the step is far below the step itself.
_PREDICTABLE_RANGE = 50

#: A decrement that stops shrinking within this factor of the tolerance is
#: the rounding noise of the gradient (in float32 on frames of ten million
#: pixels and more it is a few 1e-3 sigma): the fit has converged.
_RESOLVED = 10


def tolerance(dtype):
    """Newton-decrement tolerance for a data type (from `astro_dia.fitting._tolerances`)."""
    return _tolerance(dtype, "newton")


def predicts_convergence(decrement, ratio, solve_residual, tol):
    """
    Whether the step just taken has brought the decrement below ``tol``.

    Gauss-Newton steps with an approximate metric and inexact solves
    converge linearly: each step shrinks the distance to the optimum by
    about the contraction ``c`` = ``ratio`` (the last two decrements' ratio,
    which holds the metric's error and the previous solve's) plus
    ``solve_residual`` (the relative residual of this step's solve). After
    a full step of decrement ``lambda`` the next decrement is then at most
    about ``c lambda``, and the distance to the optimum ``lambda c / (1 - c)``
    (the geometric tail). When that is below ``tol`` the step that would
    confirm it, a solve and a gradient, is not made.

    Parameters
    ----------
    decrement : float
        The decrement of the step just taken, in sigma.
    ratio : float
        ``decrement`` over the previous step's decrement (0 or less: no
        previous step, nothing is predicted).
    solve_residual : float
        Relative residual of this step's solve (0 for an exact solve).
    tol : float
        The predicted distance to accept (0: never).
    """
    contraction = ratio + solve_residual
    return (0.0 < ratio and contraction < _PREDICTABLE_CONTRACTION
            and decrement <= _PREDICTABLE_RANGE * tol
            and decrement * contraction / (1.0 - contraction) <= tol)


def irls_weights(problem, theta):
    """`~astro_dia.solvers.evaluation.irls_weights_at` the model of ``theta``."""
    return Evaluation(problem, theta).irls_weights()


def _escalate(metric, evaluations, theta):
    """
    Ask the metric for more precision when the steps stall.

    ``evaluations`` is the iteration's `Evaluations`: the point ``theta``
    is not evaluated again, and the better point is left as its latest.

    Returns
    -------
    theta : tensor or None
        The better (lower objective) of ``theta`` and the metric's fresh
        weighted least-squares solution, or None if the metric had no more
        precision to give.
    """
    escalate = getattr(metric, "escalate", None)
    if escalate is None:
        return None
    here = evaluations.at(theta)
    solution = escalate(here.irls_weights())
    if solution is None:
        return None
    candidate = Evaluation(evaluations.problem, solution)
    if candidate.value < here.value:
        evaluations.latest = candidate
        return solution
    return theta


def gauss_newton(problem, theta, metric, *, max_iter, max_reweight, contraction=None):
    """
    Newton steps with an exact gradient and a Gauss-Newton metric.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
    theta : float64 tensor
        Starting parameters (kernel pixels, then background coefficients).
    metric : object
        Has ``solve(g)`` (approximately ``H^{-1} g``) and
        ``reweight(weights)`` (rebuild ``H`` with new weights).
    max_iter : int
        Maximum number of Newton steps.
    max_reweight : int
        Maximum number of times the metric is rebuilt.
    contraction : float, optional
        The ratio of decrements measured by an earlier fit of nearly the
        same problem (the fit this one resumes after its mask or weights
        changed), with the same metric: it stands for the ratio at the
        first step, where none is measured yet, in `predicts_convergence`.

    Returns
    -------
    state : ``astro_dia.fitting._problem.FitState``
        With ``contraction``, the last ratio of decrements measured (or
        the one given), for a fit that resumes this one.
    """
    own = getattr(problem, "newton_tolerance", None)
    tol = own or tolerance(problem.dtype)
    predicted_tol = own or _tolerance(problem.dtype, "predicted")
    previous = math.inf
    n_reweight = 0
    reweighted = False
    converged, message = False, "maximum number of iterations reached"
    stalled = False
    iteration = 0
    evaluations = Evaluations(problem)
    if hasattr(metric, "goal"):
        metric.goal = tol
    for iteration in range(1, max_iter + 1):
        here = evaluations.at(theta)
        value = here.value
        if not math.isfinite(value):
            message = "the loss became non-finite"
            break
        gradient = here.gradient()
        step = metric.solve(gradient)
        decrement = math.sqrt(max(float(gradient @ step), 0.0))
        # Below the rounding noise of the loss a line search cannot judge
        # the step; the full Gauss-Newton step is then taken as it is.
        noise = 64 * torch.finfo(problem.dtype).eps * max(abs(value), 1.0)
        t = 1.0
        proposal = theta - step
        if 0.5 * decrement ** 2 > noise:
            while evaluations.at(proposal).value > (
                    value - 1e-4 * t * decrement ** 2 + noise):
                t *= 0.5
                if t < 1.0 / 64:
                    t = 0.0
                    break
                proposal = theta - t * step
        if t == 0.0:
            escalated = _escalate(metric, evaluations, theta)
            if escalated is not None:
                theta, reweighted = escalated, True
                continue
        if t == 0.0:
            stalled, message = True, (
                f"the loss stopped decreasing along the Gauss-Newton step, at a Newton "
                f"decrement of {decrement:.2g} sigma")
            break
        theta = proposal   # evaluated by the line search: reused below
        if decrement <= tol:
            converged, message = True, f"Newton decrement below {tol:g} sigma"
            break
        ratio = decrement / previous
        if math.isfinite(previous):
            contraction = ratio
        previous = decrement
        if t == 1.0 and predicts_convergence(decrement, contraction or 0.0,
                                             getattr(metric, "solve_residual", 0.0),
                                             predicted_tol):
            converged, message = True, (
                f"Newton decrement {decrement:.2g} sigma, shrinking {1 / contraction:.3g} "
                f"times per step: below {predicted_tol:g} sigma after this step")
            break
        if ratio > 0.9 and (reweighted or getattr(metric, "reweight_every_step", False)):
            escalated = _escalate(metric, evaluations, theta)
            if escalated is not None:
                theta = escalated
                continue
            # A fresh metric did not shrink the step.
            if decrement <= _RESOLVED * tol:
                converged, message = True, (
                    f"Newton decrement stopped decreasing at {decrement:.2g} sigma, within "
                    f"{_RESOLVED}x the tolerance (the rounding of the gradient)")
                break
            stalled, message = True, f"the Newton decrement stalled at {decrement:.2g} sigma"
            break
        if getattr(metric, "reweight_every_step", False):
            if n_reweight < max_reweight:
                metric.reweight(evaluations.at(theta).irls_weights())
                n_reweight += 1
            continue
        if ratio <= _REWEIGHT_RATIO:
            reweighted = False
            continue
        if ratio < 1 and math.log(tol / decrement) / math.log(ratio) <= _CHEAP_STEPS:
            # Slow, but so close that a few more steps cost less than a new metric.
            continue
        if reweighted:
            # A fresh metric still converges slowly: ask for more precision.
            escalated = _escalate(metric, evaluations, theta)
            if escalated is not None:
                theta = escalated
        elif n_reweight < max_reweight:
            metric.reweight(evaluations.at(theta).irls_weights())
            n_reweight += 1
            reweighted = True
    if hasattr(metric, "goal"):
        metric.goal = None
    kernel, coefficients = unpack(problem, theta)
    final = evaluations.at(theta).value + problem.normalization()
    state = FitState(kernel=kernel, coefficients=coefficients, n_iterations=iteration,
                     converged=converged, loss_value=final, message=message)
    state.n_reweight = n_reweight
    state.contraction = contraction
    state.metric = metric
    state.stalled = stalled
    return state


def polish_if_stalled(problem, state, factor, *, max_iter):
    """
    Finish a stalled Gauss-Newton fit with the whitened L-BFGS of the iterative solver.

    Gauss-Newton steps stall where the objective is far from quadratic in
    the parameters (e.g. gross outliers under the Gaussian loss with a
    model-dependent variance, where raising the model at an outlier
    inflates its sigma) or at the resolution of float32. L-BFGS with a
    strong-Wolfe line search, whitened by ``factor`` (the Cholesky factor
    of the metric), then finishes from where the steps stopped.
    """
    if not state.stalled:
        return state
    polished = solve_iterative(problem, state.kernel, state.coefficients, max_iter=max_iter,
                               cholesky_factor=factor)
    polished.n_iterations += state.n_iterations
    polished.metric = state.metric
    polished.stalled = False
    polished.contraction = None
    polished.message = f"{polished.message} (L-BFGS after {state.message})"
    return polished


def resume(problem, state, *, max_iter, max_polish_iter):
    """
    Continue a direct or matrix-free fit after the problem's weights changed.

    Used when the noise terms are updated between passes (the reference
    variance through the new ``K**2``, a refined sky level): Gauss-Newton
    steps from ``state`` with its metric, re-weighted at the current model.
    """
    theta = pack(state.kernel, state.coefficients)
    metric = state.metric
    metric.reweight(irls_weights(problem, theta))
    resumed = gauss_newton(problem, theta, metric, max_iter=max_iter, max_reweight=10,
                           contraction=getattr(state, "contraction", None))
    return polish_if_stalled(problem, resumed, metric.factor, max_iter=max_polish_iter)


def start_weights(problem, start=None):
    """
    The weights of the first metric: at the data, or at the model of ``start``.

    ``start`` (packed parameters, e.g. the robust pass's solution before
    clipping) replaces the weighted least-squares start; the first metric
    then has the Gauss-Newton weights of its model, as any later step.
    """
    if start is None:
        return problem.weights(problem.target)
    return irls_weights(problem, start)


def linear_start(problem, metric, prepare):
    """
    The weighted least-squares start, after ``prepare`` has seen it.

    ``prepare(kernel, coefficients)`` may update the problem's noise terms
    from the start (the reference variance through ``K**2``, the constant of
    the 'uniform' model) and returns True if it did; the metric is then
    rebuilt with the new weights at the data and the start recomputed.
    """
    theta = metric.linear_solution(precise=prepare is not None)
    if prepare is not None and prepare(*unpack(problem, theta)):
        metric.reweight(problem.weights(problem.target))
        theta = metric.linear_solution()
    return theta
