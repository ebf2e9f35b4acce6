"""
The iterative solver: the paper's Adam then L-BFGS (section 2.9-2.10), preconditioned.

The objective (any differentiable loss, model-dependent variance) is
minimised by L-BFGS with a strong-Wolfe line search, optionally after
Adam steps with the paper's per-parameter learning rates until the
relative loss change falls below ``adam_tol``.

A pixel kernel is badly conditioned: the reference PSF suppresses the high
spatial frequencies of the kernel, so plain L-BFGS needs hundreds to
thousands of steps on a sharp star field (measured: 500-1700 on 142 x 142
pairs) and, in float32, stalls short of the optimum. `DifferenceImager`
(``preconditioner='normal'``, the default) therefore assembles the
Gauss-Newton normal matrix ``A^T W A`` once in float64 (chunked matrix
products), starts from the weighted least-squares solution, and passes
its Cholesky factor ``L`` here: L-BFGS then works on whitened parameters
``phi = L^T theta``, whose Hessian is close to the identity, and a handful
of iterations reach the precision of the data type (float32 included,
because the float32 rounding of the gradient is no longer amplified along
the badly determined kernel directions by a distant first step). Without a
factor (``preconditioner='diagonal'``) only the diagonal curvature is used,
which is the paper's cost per step and its slow convergence. The whitened
parameters are kept in float64; the model and loss are computed in the
problem's dtype and the loss is accumulated in float64. Convergence is
judged on the gradient and the step in whitened units (about one
statistical sigma per unit) and on the progress of the loss, never on a
relative loss change finer than the data type resolves.
"""

import math

import torch

from .._problem import FitState
from .._tolerances import tolerance

__all__ = ["solve_iterative"]

#: L-BFGS iterations between two convergence checks.
_INNER_ITERATIONS = 10


def _tolerances(dtype):
    """Gradient and step tolerances in whitened units (about one sigma each)."""
    return tolerance(dtype, "gradient"), tolerance(dtype, "step")


class _Whitening:
    """The linear map between parameters ``theta`` and whitened ``phi``."""

    def __init__(self, problem, kernel, coefficients, factor=None):
        self.n_kernel = problem.n_kernel
        self.kernel_shape = kernel.shape
        self.factor = factor
        if factor is None:  # diagonal scaling
            weights = problem.weights(problem.model(kernel, coefficients))
            d_kernel, d_background = problem.curvature_scales(weights)
            self.scale = torch.sqrt(torch.cat([d_kernel.reshape(-1), d_background])
                                    .to(torch.float64))

    def to_phi(self, kernel, coefficients):
        theta = torch.cat([kernel.reshape(-1), coefficients]).to(torch.float64)
        if self.factor is None:
            return theta * self.scale
        return self.factor.T @ theta

    def to_theta(self, phi):
        if self.factor is None:
            theta = phi / self.scale
        else:
            theta = torch.linalg.solve_triangular(self.factor.T, phi[:, None], upper=True)[:, 0]
        return theta[:self.n_kernel].reshape(self.kernel_shape), theta[self.n_kernel:]


def solve_iterative(problem, kernel, coefficients, *, max_iter=2000, adam_tol=1e-6,
                    max_adam_iter=0, kernel_lr=1e-3, background_lr=None,
                    cholesky_factor=None):
    """
    Minimise ``problem.objective`` from a starting kernel and background.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
    kernel : (K, K) tensor
        Starting kernel.
    coefficients : (n_terms,) tensor
        Starting background coefficients (centred parametrisation).
    max_iter : int
        Maximum number of L-BFGS iterations.
    adam_tol : float
        Relative loss change at which Adam hands over to L-BFGS.
    max_adam_iter : int
        Maximum number of Adam steps (0, the default, skips Adam).
    kernel_lr, background_lr : float
        Adam learning rates; ``background_lr=None`` uses one hundredth of
        the typical pixel standard deviation.
    cholesky_factor : (n, n) float64 tensor, optional
        Lower Cholesky factor of the normal matrix, to whiten the L-BFGS
        parameters with; None whitens with the diagonal curvature only.

    Returns
    -------
    state : ``astro_dia.fitting._problem.FitState``
    """
    kernel = kernel.detach().clone()
    coefficients = coefficients.detach().clone()
    n_adam = 0
    if max_adam_iter > 0:
        kernel, coefficients, n_adam = _adam_phase(
            problem, kernel, coefficients, tol=adam_tol, max_steps=max_adam_iter,
            kernel_lr=kernel_lr, background_lr=background_lr)

    whitening = _Whitening(problem, kernel, coefficients, cholesky_factor)
    phi = whitening.to_phi(kernel, coefficients).detach().requires_grad_(True)
    optimizer = torch.optim.LBFGS([phi], lr=1, max_iter=_INNER_ITERATIONS, history_size=50,
                                  tolerance_grad=0.0, tolerance_change=0.0,
                                  line_search_fn="strong_wolfe")
    dtype = problem.dtype

    def objective(phi):
        k, c = whitening.to_theta(phi)
        return problem.objective(k.to(dtype), c.to(dtype))

    def closure():
        optimizer.zero_grad()
        value = objective(phi)
        value.backward()
        return value

    gtol, xtol = _tolerances(dtype)
    converged, message = False, "maximum number of iterations reached"
    previous = math.inf
    n_lbfgs = 0
    while n_lbfgs < max_iter:
        before = phi.detach().clone()
        optimizer.step(closure)
        n_lbfgs = optimizer.state[phi]["n_iter"]
        value = float(closure().detach())
        gradient = float(phi.grad.abs().max())
        step = float((phi.detach() - before).abs().max())
        if not math.isfinite(value):
            message = "the loss became non-finite"
            break
        if gradient <= gtol:
            converged, message = True, f"gradient below {gtol:g}"
            break
        if step <= xtol:
            converged, message = True, f"steps below {xtol:g} sigma"
            break
        if value >= previous:
            # No progress over a whole pass: the loss is at the resolution
            # of the data type.
            converged, message = True, "loss stopped decreasing"
            break
        previous = value
    with torch.no_grad():
        kernel, coefficients = whitening.to_theta(phi.detach())
        kernel, coefficients = kernel.to(dtype), coefficients.to(dtype)
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
        current = float(value.detach())
        if previous is not None and abs(previous - current) <= tol * abs(current):
            break
        previous = current
    return kernel.detach(), coefficients.detach(), steps
