"""
The iterative solver of the paper (section 2.9-2.10): Adam, then L-BFGS.

Adam takes steepest-descent steps with the paper's per-parameter learning
rates until the relative change of the loss falls below ``adam_tol``;
L-BFGS (strong-Wolfe line search) then converges. L-BFGS works on
parameters divided by the square root of the diagonal of the Gauss-Newton
normal matrix, so that kernel pixels and background coefficients have
comparable curvature. Convergence is judged on the gradient in those
units and on the progress of the float64-accumulated loss, never on a
relative loss change finer than the data type resolves.
"""

import math

import torch

from .._problem import FitState

__all__ = ["solve_iterative"]

#: L-BFGS iterations between two convergence checks.
_INNER_ITERATIONS = 20


def _gradient_tolerance(dtype):
    # In curvature-scaled units a gradient g moves the optimum by ~g sigma.
    return 1e-9 if dtype == torch.float64 else 1e-4


def solve_iterative(problem, kernel, coefficients, *, max_iter=5000, adam_tol=1e-6,
                    max_adam_iter=200, kernel_lr=1e-3, background_lr=None):
    """
    Minimise ``problem.objective`` from a starting kernel and background.

    Parameters
    ----------
    problem : `~astro_dia._problem.FitProblem`
    kernel : (K, K) tensor
        Starting kernel.
    coefficients : (n_terms,) tensor
        Starting background coefficients (centred parametrisation).
    max_iter : int
        Maximum number of L-BFGS iterations.
    adam_tol : float
        Relative loss change at which Adam hands over to L-BFGS.
    max_adam_iter : int
        Maximum number of Adam steps (0 skips Adam).
    kernel_lr, background_lr : float
        Adam learning rates; ``background_lr=None`` uses one hundredth of
        the typical pixel standard deviation.

    Returns
    -------
    state : `~astro_dia._problem.FitState`
    """
    kernel = kernel.detach().clone()
    coefficients = coefficients.detach().clone()
    n_adam = 0
    if max_adam_iter > 0:
        kernel, coefficients, n_adam = _adam_phase(
            problem, kernel, coefficients, tol=adam_tol, max_steps=max_adam_iter,
            kernel_lr=kernel_lr, background_lr=background_lr)

    weights = problem.weights(problem.model(kernel, coefficients))
    d_kernel, d_background = problem.curvature_scales(weights)
    scale_k, scale_b = torch.sqrt(d_kernel), torch.sqrt(d_background)
    phi_k = (kernel * scale_k).requires_grad_(True)
    phi_b = (coefficients * scale_b).requires_grad_(True)
    optimizer = torch.optim.LBFGS([phi_k, phi_b], lr=1, max_iter=_INNER_ITERATIONS,
                                  history_size=50, tolerance_grad=0.0, tolerance_change=0.0,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = problem.objective(phi_k / scale_k, phi_b / scale_b)
        value.backward()
        return value

    gtol = _gradient_tolerance(problem.dtype)
    converged, message = False, "maximum number of iterations reached"
    previous = math.inf
    n_lbfgs = 0
    while n_lbfgs < max_iter:
        optimizer.step(closure)
        n_lbfgs = optimizer.state[optimizer._params[0]]["n_iter"]
        value = float(closure())
        gradient = max(float(phi_k.grad.abs().max()), float(phi_b.grad.abs().max()))
        if not math.isfinite(value):
            message = "the loss became non-finite"
            break
        if gradient <= gtol:
            converged, message = True, f"gradient below {gtol:g}"
            break
        if value >= previous:
            # No progress over a whole L-BFGS pass: the loss is at the
            # resolution of the data type.
            converged, message = True, "loss stopped decreasing"
            break
        previous = value
    with torch.no_grad():
        kernel = (phi_k / scale_k).detach()
        coefficients = (phi_b / scale_b).detach()
        final = float(problem.objective(kernel, coefficients)) + problem.normalization()
    return FitState(kernel=kernel, coefficients=coefficients, n_iterations=n_adam + n_lbfgs,
                    converged=converged, loss_value=final, message=message)


def _adam_phase(problem, kernel, coefficients, *, tol, max_steps, kernel_lr, background_lr):
    """Steepest-descent steps until the relative loss change is below ``tol``."""
    if background_lr is None:
        with torch.no_grad():
            model = problem.model(kernel, coefficients)
            typical = float(torch.sqrt(problem.variance(model)[problem.mask].mean()))
        background_lr = 1e-2 * typical
    kernel = kernel.clone().requires_grad_(True)
    coefficients = coefficients.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([{"params": [kernel], "lr": kernel_lr},
                                  {"params": [coefficients], "lr": background_lr}])
    previous = None
    steps = 0
    for steps in range(1, max_steps + 1):
        optimizer.zero_grad()
        value = problem.objective(kernel, coefficients)
        value.backward()
        optimizer.step()
        current = float(value)
        if previous is not None and abs(previous - current) <= tol * abs(current):
            break
        previous = current
    return kernel.detach(), coefficients.detach(), steps
