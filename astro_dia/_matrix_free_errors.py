"""Matrix-free standard errors of P and the background (private).

The dense route of `astro_dia.uncertainty` assembles the whole Fisher
information ``F = A^T W A`` in float64, a cost of ``N_pix (K**2)**2``
that exceeds the fit itself on large frames. sigma_P, sigma_B0 and the
errors of the other background coefficients need only quadratic forms
``c^T F^{-1} c``: one solve of ``F x = c`` each, by preconditioned
conjugate gradients with the matrix-free product (two FFTs) and the
Toeplitz preconditioner of the ``cg`` solver
(`~astro_dia.solvers.cg.ConjugateGradientMetric`), never forming ``F``.

Owns `matrix_free_errors` and the rule `use_matrix_free` by which the
imager chooses this route; the dense route and the validity checks of the
covariance stay in `astro_dia.uncertainty`.
"""

import copy
import math

import numpy as np
import torch

from .solvers.choice import choose_solver
from .solvers.cg import ConjugateGradientMetric
from .uncertainty import information_weights

__all__ = []

#: Relative residual (preconditioned norm) of each solve. The error of
#: ``c^T x`` is the squared energy norm of the error of ``x``: of the order
#: of RTOL**2 relative, far below the 1% to which errors are quoted (at
#: 1000 x 1000 with a 19 x 19 kernel, sigma_P agrees with the dense value
#: to 2.5e-4, at 8 products per solve where 1e-3 took 12).
RTOL = 1e-2

#: A solve whose true residual ends above this many times RTOL failed.
RESIDUAL_SLACK = 10.0

#: Most conjugate-gradient iterations per solve.
MAX_CG_ITER = 1000


def use_matrix_free(problem, compute_errors):
    """
    Whether the errors of this fit take the matrix-free route.

    Only for ``compute_errors=True`` (not ``'covariance'``), a constant
    kernel, and a frame large enough that the imager's ``'auto'`` choice
    for it is the matrix-free solver (the dense information would then cost
    more than the fit).
    """
    if compute_errors == "covariance" or problem.kernel_basis is not None:
        return False
    return choose_solver(problem.shape, problem.kernel_size, problem.device) == "cg"


def error_directions(problem, n_scale):
    """
    The vectors ``c`` of P, B0 and each further background coefficient.

    In the fit's centred parameters (kernel pixels, then background
    coefficients with ``c0' = B0 + r P``): ``P = 1^T k`` over the first
    ``n_scale`` kernel parameters, ``B0 = c0' - r P``, ``c_j`` itself.
    """
    n_kernel = problem.n_kernel
    n = n_kernel + problem.basis.shape[0]
    directions = torch.zeros((1 + n - n_kernel, n), dtype=torch.float64,
                             device=problem.device)
    directions[0, :n_scale] = 1.0
    directions[1, :n_scale] = -float(problem.reference_mean)
    for j in range(n - n_kernel):
        directions[1 + j, n_kernel + j] = 1.0
    return directions


def matrix_free_errors(problem, kernel, coefficients, *, n_scale, rtol=RTOL, metric=None):
    """
    sigma_P and the background errors from matrix-free solves of ``F x = c``.

    Parameters
    ----------
    problem : ``astro_dia._problem.FitProblem``
        The fitted problem.
    kernel, coefficients : tensor
        The fit, in the problem's centred parametrisation.
    n_scale : int
        Number of leading kernel parameters whose sum is P.
    rtol : float, optional
        Relative (preconditioned) residual of each solve.
    metric : `~astro_dia.solvers.cg.ConjugateGradientMetric`, optional
        The ``cg`` solver's final metric: its preconditioner, built from
        the weights of the last step, is reused (not modified); a new one
        is built otherwise.

    Returns
    -------
    scale_factor_error : float
    background_errors : (n_terms,) ndarray
        Un-centred: the first is sigma_B0.
    valid : bool
        False when a solve did not converge or gave a non-positive
        quadratic form; the caller then takes the dense route, which
        diagnoses the information matrix.
    """
    weights = information_weights(problem, kernel, coefficients).to(problem.dtype)
    if isinstance(metric, ConjugateGradientMetric) and metric.problem is problem:
        metric = copy.copy(metric)
        metric.weights = weights    # exact products; the preconditioner is the solver's
        metric.rtol, metric.max_cg_iter = rtol, MAX_CG_ITER
    else:
        metric = ConjugateGradientMetric(problem, weights, rtol=rtol, max_cg_iter=MAX_CG_ITER)
    variances, valid = [], metric.factor is not None
    for direction in error_directions(problem, n_scale):
        solution = metric.solve(direction)
        residual = direction - metric.apply(solution)
        reached = math.sqrt(max(float(residual @ metric.precondition(residual)), 0.0))
        scale = math.sqrt(float(direction @ metric.precondition(direction)))
        variance = float(direction @ solution)
        valid = valid and math.isfinite(variance) and variance > 0 and (
            reached <= RESIDUAL_SLACK * rtol * scale)
        variances.append(max(variance, 0.0) if math.isfinite(variance) else math.nan)
    errors = np.sqrt(np.array(variances))
    return float(errors[0]), errors[1:], bool(valid)
