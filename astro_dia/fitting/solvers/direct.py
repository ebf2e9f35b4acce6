"""
The direct solver: Bramich (2008) normal equations, then exact Gauss-Newton steps.

The normal matrix ``A^T W A`` (one row and column per kernel pixel and per
background coefficient) is assembled by chunked matrix products over an
im2col of the reference (see ``astro_dia.fitting._normal``), factorised by
Cholesky, and the weighted least-squares solution with the weights at the
data is the first estimate. For fixed weights and the Gaussian loss that
is the answer. Otherwise (model-dependent CCD/EMCCD variance, robust
losses, the ``sum(ln sigma)`` term of eq. 8) Gauss-Newton steps with the
exact gradient of the objective follow (`~astro_dia.solvers.gauss_newton`),
re-assembling ``A^T W A`` with iteratively re-weighted weights only when
the steps stop shrinking fast, so most fits need one or two assemblies.
A fit that follows a direct fit of nearly the same problem (the fit after
outlier rejection, from the robust pass) need not assemble at all:
`astro_dia.solvers.cg.continue_fit` preconditions matrix-free solves of
its steps with the earlier factor.

Precision: the matrix products run in float32 (twice as fast as float64 on
a CPU) on strips of at most ``astro_dia.fitting._normal.FLOAT32_STRIP_PIXELS``
pixels, and are summed over strips in float64, so that float32 rounding
stays at the level of one strip; the matrix is factorised in float64.
Because every step uses the exact gradient in the fit's dtype, rounding in
the matrix affects only how fast the steps converge, not where they
converge to: a float64 fit reaches the float64 optimum (measured: P equal
to 2e-14 relative with float32 and float64 products). Only when the steps
stall above the tolerance, which happens on noiseless or nearly singular
problems whose weakest directions float32 cannot represent, is the matrix
re-assembled once with float64 products.
"""

import torch

from .._normal import DEFAULT_CHUNK_BYTES, add_regularization, assemble_normal_equations, cholesky
from .gauss_newton import gauss_newton, linear_start, polish_if_stalled, start_weights

__all__ = ["solve_direct"]


class NormalMatrixMetric:
    """``A^T W A`` assembled and factorised; ``solve`` applies its inverse."""

    def __init__(self, problem, weights, *, max_bytes, gemm_dtype):
        self.problem = problem
        self.max_bytes = max_bytes
        self.gemm_dtype = gemm_dtype
        self.n_assemblies = 0
        self.rhs = None
        self.reweight(weights)

    def reweight(self, weights):
        normal, self.rhs = assemble_normal_equations(
            self.problem, weights, max_bytes=self.max_bytes, dtype=self.gemm_dtype)
        add_regularization(normal, self.problem, self.rhs)
        self.n_assemblies += 1
        self.matrix = normal
        self.factor = cholesky(normal)
        self._pinv = None
        if self.factor is None:
            # Singular even with jitter: a pseudo-inverse from the
            # eigen-decomposition, dropping the undetermined directions.
            values, vectors = torch.linalg.eigh(normal)
            keep = values > values.max() * 1e-14
            self._pinv = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T

    def linear_solution(self, precise=False):
        """The weighted least-squares solution with the current weights (always precise)."""
        return self.solve(self.rhs)

    def escalate(self, weights):
        """
        Re-assemble with float64 products, once, when float32 ones stall the steps.

        Returns the weighted least-squares solution with the new matrix (a
        restart point), or None if the products were float64 already.

        Happens only for extremely ill-conditioned problems (e.g. noiseless
        images, where the normal matrix has a condition number near 1e15
        and float32 rounding hides its weakest directions).
        """
        if self.gemm_dtype == torch.float64:
            return None
        self.gemm_dtype = torch.float64
        self.reweight(weights)
        return self.linear_solution()

    def solve(self, vector):
        vector = vector.to(self.matrix.device)
        if self.factor is not None:
            return torch.cholesky_solve(vector[:, None], self.factor)[:, 0]
        return self._pinv @ vector


def solve_direct(problem, *, max_iter=50, max_reweight=10, max_bytes=None, gemm_dtype=None,
                 max_polish_iter=2000, prepare=None, start=None):
    """
    Fit by the normal equations and Gauss-Newton steps on the exact objective.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
    max_iter : int
        Maximum number of Gauss-Newton steps after the first solution.
    max_reweight : int
        Maximum number of re-assemblies of the normal matrix.
    max_bytes : int, optional
        Memory allowed for one strip of the design matrix.
    max_polish_iter : int, optional
        Maximum L-BFGS iterations if the Gauss-Newton steps stall.
    prepare : callable, optional
        ``prepare(kernel, coefficients)`` is called with the linear start
        and returns True if it changed the problem's noise terms; see
        `~astro_dia.solvers.gauss_newton.linear_start`.
    start : tensor, optional
        Parameters to start the Gauss-Newton steps from instead of the
        linear start; see `~astro_dia.solvers.gauss_newton.start_weights`.
    gemm_dtype : `torch.dtype`, optional
        Precision of the matrix products; float32 by default, whatever the
        fit's dtype (the exact gradient makes up for the rounding).

    Returns
    -------
    state : ``astro_dia.fitting._problem.FitState``
        With ``metric`` (the last `NormalMatrixMetric`) attached.
    """
    metric = NormalMatrixMetric(problem, start_weights(problem, start),
                                gemm_dtype=gemm_dtype or torch.float32,
                                max_bytes=max_bytes or DEFAULT_CHUNK_BYTES)
    theta = linear_start(problem, metric, prepare) if start is None else start
    state = gauss_newton(problem, theta, metric, max_iter=max_iter,
                         max_reweight=max_reweight)
    state = polish_if_stalled(problem, state, metric.factor, max_iter=max_polish_iter)
    state.n_assemblies = metric.n_assemblies
    return state
