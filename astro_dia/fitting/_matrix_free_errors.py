"""Matrix-free standard errors of P and the background (private).

The dense route of `astro_dia.uncertainty` assembles the whole Fisher
information ``F = A^T W A`` in float64, a cost of ``N_pix (K**2)**2``
that exceeds the fit itself on large frames. sigma_P, sigma_B0 and the
errors of the other background coefficients need only quadratic forms
``c^T F^{-1} c``: one solve of ``F x = c`` each, by preconditioned
conjugate gradients with the matrix-free product (two FFTs), never
forming ``F``, preconditioned by what the solver left: the Toeplitz
approximation of the ``cg`` solver
(`~astro_dia.solvers.cg.ConjugateGradientMetric`) or the direct solver's
factorised normal matrix.

With a reference variance (``reference_noise=True``) the solves are of the
corrected ``H_c = A^T W A - D_eff`` and each quadratic form becomes the
sandwich ``x^T V x`` of the noisy reference
(``astro_dia.fitting._errors_in_variables``): two correlations more per direction.

Owns `matrix_free_errors`, the rule `use_matrix_free` by which the imager
chooses this route and `dense_is_cheap`, where the dense covariance is
left to be computed on request; the dense route and the validity checks
of the covariance stay in `astro_dia.uncertainty`.
"""

import copy
import math

import numpy as np
import torch

from ._errors_in_variables import (has_reference_noise, predicted_scale_bias,
                                   reference_noise_variance, unweighted_reference_variance)
from .solvers.choice import choose_solver
from .solvers.cg import ConjugateGradientMetric
from .uncertainty import information_weights

__all__ = []

#: Relative residual (preconditioned norm) of each solve. The error of
#: ``c^T x`` is the squared energy norm of the error of ``x``: of the order
#: of RTOL**2 relative, far below the 1% to which errors are quoted. At
#: 1000 x 1000 with a 19 x 19 kernel sigma_P and sigma_B0 agree with the
#: dense values to 7.0e-4 and 6.6e-4 at 6 products per solve (1e-2: 3e-5,
#: 8 products; 0.1: 2.4e-3, 5 products).
RTOL = 5e-2

#: A solve whose true residual ends above this many times RTOL failed.
RESIDUAL_SLACK = 10.0

#: Most conjugate-gradient iterations per solve.
MAX_CG_ITER = 1000


def use_matrix_free(problem, compute_errors):
    """
    Whether sigma_P and the background errors of this fit are found matrix-free.

    For ``compute_errors=True`` (not ``'covariance'``) and a constant
    kernel, on any frame: a few products, where the dense information
    costs a float64 assembly of the whole normal matrix.
    """
    return compute_errors is True and problem.kernel_basis is None


def dense_is_cheap(problem):
    """
    Whether the dense covariance of this frame is cheap enough to offer on request.

    Where the imager's ``'auto'`` rule takes the direct solver: the dense
    information then costs no more than one assembly of that solver.
    """
    return choose_solver(problem.shape, problem.kernel_size, problem.device,
                         n_pixels=problem.n_data) != "cg"


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


def matrix_free_errors(problem, kernel, coefficients, *, n_scale, rtol=RTOL, metric=None,
                       bias_variance=None, reference_variance=None):
    """
    sigma_P and the background errors from matrix-free solves of ``F x = c``.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
        The fitted problem.
    kernel, coefficients : tensor
        The fit, in the problem's centred parametrisation.
    n_scale : int
        Number of leading kernel parameters whose sum is P.
    rtol : float, optional
        Relative (preconditioned) residual of each solve.
    metric : optional
        The solver's final metric. The ``cg`` solver's
        `~astro_dia.solvers.cg.ConjugateGradientMetric`: its Toeplitz
        preconditioner, built from the weights of the last step, is reused
        (not modified). The direct solver's normal matrix: its Cholesky
        factor, of ``A^T W A`` at the last step's weights, preconditions the
        solves (nearly exact: one or two products each). A new Toeplitz
        preconditioner is built otherwise.
    bias_variance : (ny, nx) ndarray, optional
        A reference variance for which to predict the bias of P of this
        (uncorrected) fit from the solution for P
        (``astro_dia.fitting._errors_in_variables.predicted_scale_bias``).

    Returns
    -------
    scale_factor_error : float
    background_errors : (n_terms,) ndarray
        Un-centred: the first is sigma_B0.
    valid : bool
        False when a solve did not converge or gave a non-positive
        quadratic form; the caller then takes the dense route, which
        diagnoses the information matrix.
    predicted_bias : float or None
        With ``bias_variance``: the predicted bias of P.
    reference_variance : (ny, nx) ndarray, optional
        For a fit without ``reference_noise`` (the stars' fit of
        ``fit_region``): a reference variance whose noise each error is to
        include
        (``astro_dia.fitting._errors_in_variables.unweighted_reference_variance``).
    """
    weights = information_weights(problem, kernel, coefficients).to(problem.dtype)
    if isinstance(metric, ConjugateGradientMetric) and metric.problem is problem:
        metric = copy.copy(metric)
        metric.weights = weights    # exact products; the preconditioner is the solver's
        metric.rtol, metric.max_cg_iter = rtol, MAX_CG_ITER
    elif getattr(metric, "problem", None) is problem and getattr(metric, "factor", None) is not None:
        metric = ConjugateGradientMetric.preconditioned_by(
            problem, weights, metric.factor, rtol=rtol, max_cg_iter=MAX_CG_ITER)
    else:
        metric = ConjugateGradientMetric(problem, weights, rtol=rtol, max_cg_iter=MAX_CG_ITER)
    noisy_reference = has_reference_noise(problem)
    # Without a factor the preconditioner failed; the dense route then says
    # why. The corrected information of a noisy reference may have no
    # Toeplitz factor while its solves converge to positive variances (the
    # full 1024 x 682 ProperImage pair): those are kept.
    variances, valid = [], metric.factor is not None or noisy_reference
    predicted_bias = None
    for index, direction in enumerate(error_directions(problem, n_scale)):
        solution = metric.solve(direction)
        if index == 0 and bias_variance is not None:
            predicted_bias = predicted_scale_bias(problem, weights, kernel, solution,
                                                  bias_variance)
        residual = direction - metric.apply(solution)
        reached = math.sqrt(max(float(residual @ metric.precondition(residual)), 0.0))
        scale = math.sqrt(float(direction @ metric.precondition(direction)))
        # c^T x + x^T r: exact up to -r^T F^-1 r, second order in the residual
        # even when x is not a Galerkin iterate (a start M^-1 c that met
        # the tolerance at once), where c^T x alone errs to first order.
        variance = float(direction @ solution + solution @ residual)
        if noisy_reference:
            variance += reference_noise_variance(problem, weights, kernel, solution)
        elif reference_variance is not None:
            variance += unweighted_reference_variance(problem, weights, kernel, solution,
                                                      reference_variance)
        valid = valid and math.isfinite(variance) and variance > 0 and (
            reached <= RESIDUAL_SLACK * rtol * scale)
        variances.append(max(variance, 0.0) if math.isfinite(variance) else math.nan)
    errors = np.sqrt(np.array(variances))
    return float(errors[0]), errors[1:], bool(valid), predicted_bias
