"""
The matrix-free solver: preconditioned conjugate gradients with FFT operators.

The normal matrix ``A^T W A`` is never formed. Its product with a vector is
a convolution of the reference with the kernel part (the model of that
vector), a multiplication by the weights and a correlation with the
reference (``A^T``), all with FFTs, so that one product costs the same for
any kernel size. The conjugate-gradient iterations are preconditioned by a
*Toeplitz approximation* of ``A^T W A``: the kernel block of the exact
matrix is ``sum_p w_p R(p + u) R(p + v)``, which is close to the weighted
autocorrelation ``a(u - v)`` of ``sqrt(w) R``, one FFT for all ``(2K-1)**2``
lags; the kernel-background and background blocks are computed exactly (one
correlation each). This ``K**2 + n_terms`` square matrix is factorised by
Cholesky (a cost independent of the image size), and captures the
ill-conditioning that the reference PSF gives a pixel kernel, so that a
few tens of iterations reach the solution where a diagonal (Jacobi)
preconditioner needs hundreds.

Outer Gauss-Newton steps with the exact gradient
(`~astro_dia.solvers.gauss_newton`) then lead to the optimum of the exact
objective; the weights are refreshed at every outer step, which costs no
more than one product.
"""

import torch
from scipy.fft import next_fast_len

from ...model._model import lag_values
from .._normal import add_regularization, cholesky
from .gauss_newton import (gauss_newton, irls_weights, linear_start, pack, polish_if_stalled,
                           start_weights, unpack)

__all__ = ["solve_cg", "ProductBudgetExceeded"]


class ProductBudgetExceeded(RuntimeError):
    """A matrix-free fit needed more products than its ``product_budget``."""

#: Relative residual of the solves of `continue_fit`'s steps (and what the
#: forcing of `FORCING` loosens near the tolerance).
CONTINUE_RTOL = 1e-2

#: The preconditioner is rebuilt only when the weights moved by more than
#: this fraction (``sum |w - w0| / sum w0``) since it was built; the
#: products always use the current weights, so a stale preconditioner
#: costs at most a few conjugate-gradient iterations, where a rebuild
#: costs several products' worth of FFTs.
REBUILD_CHANGE = 0.05

#: Forcing of a Gauss-Newton step's solve (inexact Newton): a solve stops
#: at the relative residual ``FORCING * goal / lambda`` when that is looser
#: than ``rtol`` (``goal`` the decrement tolerance of the steps, ``lambda``
#: this step's decrement as the preconditioner estimates it), but never
#: looser than ``FORCING_CEILING``. Near the tolerance a step only has to
#: confirm it, not be solved to ``rtol``; a tighter solve than ``rtol``
#: earlier does not pay, as the re-weighting limits the contraction of
#: the steps (measured: about 0.01 per step at 1000 x 1000 either way).
FORCING = 0.5
FORCING_CEILING = 0.1

#: Conjugate-gradient iterations between two reads of the residual on a GPU.
CHECK_EVERY_ON_GPU = 8


def check_interval(device):
    """Iterations between convergence checks: every one on the CPU (a read costs nothing)."""
    return 1 if device.type == "cpu" else CHECK_EVERY_ON_GPU


def _times(image, factor):
    """``image * factor``, or ``image`` itself when ``factor`` is None (an image of ones)."""
    return image if factor is None else image * factor


class ConjugateGradientMetric:
    """
    Apply ``(A^T W A)^{-1}`` approximately by preconditioned conjugate gradients.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
    weights : tensor
        Per-pixel weights on the valid region.
    rtol : float
        Relative residual at which the iterations stop.
    max_cg_iter : int
        Maximum iterations per solve.
    """

    #: Refreshing the weights costs nothing until the preconditioner is
    #: rebuilt (`REBUILD_CHANGE`): do it every step.
    reweight_every_step = True

    def __init__(self, problem, weights, *, rtol=1e-2, max_cg_iter=500):
        self.problem = problem
        self.rtol, self.max_cg_iter = rtol, max_cg_iter
        self.n_products = 0
        #: Most products before `ProductBudgetExceeded` is raised (None: no limit).
        self.budget = None
        #: Relative residual the last solve reached.
        self.solve_residual = 0.0
        #: Decrement tolerance of the Gauss-Newton steps being solved for
        #: (set by them, see `FORCING`); None: every solve to ``rtol``.
        self.goal = None
        self.n_kernel = problem.n_kernel
        self._built_for = None
        self._fixed = False
        self._prepare_reference()
        self.reweight(weights)

    @classmethod
    def preconditioned_by(cls, problem, weights, factor, *, rtol, max_cg_iter):
        """
        A metric with exact products at ``weights`` and a given preconditioner.

        ``factor`` is the Cholesky factor of a matrix close to ``A^T W A``,
        e.g. the direct solver's, assembled at the weights of its last step:
        nothing of the Toeplitz approximation is built, and the factor is
        kept: `reweight` only changes the weights of the products.
        """
        metric = cls.__new__(cls)
        metric.problem, metric.rtol, metric.max_cg_iter = problem, rtol, max_cg_iter
        metric.n_products, metric.goal, metric.n_kernel = 0, None, problem.n_kernel
        metric.budget = None
        metric.solve_residual = 0.0
        metric.weights, metric.factor = weights, factor
        metric._fixed = True
        return metric

    def _prepare_reference(self):
        """What the Toeplitz approximation needs of the reference, which reweighting keeps."""
        problem = self.problem
        size, h = problem.kernel_size, problem.half
        ny, nx = problem.shape
        with torch.no_grad():
            self._fft_shape = (next_fast_len(ny + size, real=True),
                               next_fast_len(nx + size, real=True))
            centred = problem.reference[0, 0].to(torch.float64, copy=True)
            self._mean = float(centred[h:ny - h, h:nx - h].mean())
            self._centred = centred.sub_(self._mean)
            self._centred_spectrum = torch.fft.rfft2(self._centred.to(problem.dtype),
                                                     s=problem.fft_shape)
            # Kernel pixel u = (i, j) is flat index i * K + j; the lag of (u, v)
            # is u - v.
            i, j = torch.meshgrid(torch.arange(size, device=problem.device),
                                  torch.arange(size, device=problem.device), indexing="ij")
            i, j = i.reshape(-1), j.reshape(-1)
            # Only the (2K - 1)**2 lags -(K - 1)..K - 1 of the inverse transform
            # are needed (`lag_values`); lag d is index d + K - 1 of that block.
            self._offsets = tuple(range(-(size - 1), size))
            self._lags = (i[:, None] - i[None, :] + size - 1, j[:, None] - j[None, :] + size - 1)
            # The kernel's polynomial images; None stands for the image of ones
            # of a constant kernel, which is never made.
            self._terms = ([None] if problem.kernel_basis is None
                           else list(problem.kernel_basis.to(torch.float64)))

    def reweight(self, weights):
        """Use ``weights`` in the products; rebuild the preconditioner if they moved enough."""
        self.weights = weights
        if self._fixed:
            return
        if self._built_for is not None:
            with torch.no_grad():
                moved = float(torch.sum(torch.abs(weights - self._built_for))
                              / torch.sum(self._built_for))
            if moved <= REBUILD_CHANGE:
                return
        self._built_for = weights
        self.preconditioner = self._toeplitz_approximation(weights)
        self.factor = cholesky(self.preconditioner)
        if self.factor is None:   # fall back to the diagonal
            self.diagonal = torch.clamp(torch.diagonal(self.preconditioner), min=1e-300)

    def _toeplitz_approximation(self, weights):
        """
        ``A^T W A`` with its centred-reference kernel block replaced by a Toeplitz one.

        The reference is split into ``R_c + r`` (``r`` its mean on the valid
        region; zero when the problem centred it already). The kernel columns
        are then ``b_s(p) R_c(p + u)`` plus ``r b_s(p)``, a column that does
        not depend on ``u``: the design is ``[A_c, B_k, B] J`` with ``B_k``
        the kernel's polynomial images and ``J`` summing each term's kernel
        (times ``r``). Only the ``A_c`` block is approximated; everything
        else is exact.
        """
        problem = self.problem
        size, h = problem.kernel_size, problem.half
        ny, nx = problem.shape
        mean, shape, terms = self._mean, self._fft_shape, self._terms
        with torch.no_grad():
            # x_s = sqrt(w) b_s R_c per kernel term s (one term without spatial
            # variation); block (s, t) is the cross-correlation of x_s and x_t
            # at lag u - v. A Gram matrix of shifted signals: positive
            # semi-definite by construction. Frame-sized temporaries are made
            # one at a time (a 1000 x 1000 build peaked at 96 MiB).
            w64 = weights.to(torch.float64)
            centred_valid = self._centred[h:ny - h, h:nx - h]
            spectra = []
            for term in terms:
                full = torch.zeros(problem.shape, dtype=torch.float64, device=problem.device)
                inner = full[h:ny - h, h:nx - h]
                inner.copy_(w64).sqrt_().mul_(centred_valid)
                if term is not None:
                    inner.mul_(term)
                spectra.append(torch.fft.rfft2(full, s=shape))
                del full, inner
            n_terms = len(spectra)
            blocks = [[None] * n_terms for _ in range(n_terms)]
            for a in range(n_terms):
                for b in range(a, n_terms):
                    lag = lag_values(spectra[a].conj() * spectra[b], shape, self._offsets)
                    blocks[a][b] = lag[self._lags]
                    blocks[b][a] = blocks[a][b].T
            del spectra
            kernel_block = torch.cat([torch.cat(row, 1) for row in blocks])
            # Exact blocks of the columns that are images, G = [B_k, B]
            # (None: the image of ones of a constant kernel or background).
            images = terms + ([None] if problem.constant_background
                              else list(problem.basis.to(torch.float64)))
            cross = torch.stack([torch.cat([
                problem.correlate(_times(_times(weights, term), image).to(problem.dtype),
                                  spectrum=self._centred_spectrum).reshape(-1)
                for term in terms]) for image in images]).T.to(torch.float64)
            image_block = torch.stack([
                torch.stack([torch.sum(_times(_times(w64, a), b)) for b in images])
                for a in images])
            # J^T [[T, C], [C^T, G]] J, block by block: J adds r times each
            # term's image column to every pixel column of that term.
            n_kernel = self.n_kernel
            term = torch.arange(n_kernel, device=problem.device) // (size * size)
            cross_terms, cross_basis = cross[:, :n_terms], cross[:, n_terms:]
            spread = cross_terms[:, term]
            kernel_part = (kernel_block + mean * (spread + spread.T)
                           + mean ** 2 * image_block[:n_terms, :n_terms][term][:, term])
            mixed = cross_basis + mean * image_block[:n_terms, n_terms:][term]
            matrix = torch.cat([torch.cat([kernel_part, mixed], 1),
                                torch.cat([mixed.T, image_block[n_terms:, n_terms:]], 1)])
            # The penalty, and the constraint of constant_scale.
            add_regularization(matrix, problem)
            return 0.5 * (matrix + matrix.T)

    def apply(self, vector):
        """``A^T W A vector`` (plus the quadratic kernel terms' Hessian), matrix-free."""
        self.n_products += 1
        if self.budget is not None and self.n_products > self.budget:
            raise ProductBudgetExceeded(
                f"{self.n_products} products exceed the budget of {self.budget}")
        problem = self.problem
        with torch.no_grad():
            kernel, coefficients = unpack(problem, vector)
            image = self.weights * problem.model(kernel, coefficients)
            k_part, b_part = problem.transpose(image)
            if problem.regularization > 0 or getattr(problem, "correction", None) is not None:
                k_part = k_part + problem.quadratic_product(kernel)
            out = pack(k_part, b_part)
            # The fixed parameters (constant_scale) have a unit diagonal.
            out[problem.fixed] = vector[problem.fixed]
            return out

    def linear_solution(self, precise=False):
        """
        The weighted least-squares solution with the current weights.

        To ``rtol``, or to 1e-8 with ``precise=True`` (when noise terms are
        set from it, so that they do not depend on the solver).
        """
        with torch.no_grad():
            rhs = pack(*self.problem.transpose(self.weights * self.problem.target))
        rtol, self.rtol = self.rtol, (1e-8 if precise else self.rtol)
        try:
            return self.solve(rhs)
        finally:
            self.rtol = rtol

    def precondition(self, vector):
        if self.factor is not None:
            return torch.cholesky_solve(vector[:, None], self.factor)[:, 0]
        return vector / self.diagonal

    def solve(self, rhs):
        """
        Preconditioned conjugate gradients for ``A^T W A x = rhs``.

        The scalars stay on the device; convergence (and a non-positive
        curvature) is read back every `check_interval` iterations only, so
        that a GPU is not made to wait for the host at every iteration. An
        iteration after the stop changes nothing (its step is zero).
        """
        x = self.precondition(rhs)
        residual = rhs - self.apply(x)
        z = self.precondition(residual)
        direction = z.clone()
        rz = residual @ z
        scale = rhs @ self.precondition(rhs)
        target = self.rtol ** 2 * scale
        if self.goal is not None and self.rtol < FORCING_CEILING:
            eta = torch.clamp(FORCING * self.goal / torch.sqrt(scale), min=self.rtol,
                              max=FORCING_CEILING)
            target = eta ** 2 * scale
        every = check_interval(rhs.device)
        stopped = torch.zeros((), dtype=torch.bool, device=rhs.device)
        for iteration in range(self.max_cg_iter):
            stopped = stopped | (rz <= target)
            if iteration % every == 0 and bool(stopped):
                break
            product = self.apply(direction)
            curvature = direction @ product
            stopped = stopped | ~(torch.isfinite(curvature) & (curvature > 0))
            alpha = torch.where(stopped, 0.0, rz / curvature)
            x = x + alpha * direction
            residual = residual - alpha * product
            z = self.precondition(residual)
            rz_new = residual @ z
            direction = z + torch.where(stopped, 0.0, rz_new / rz) * direction
            rz = torch.where(stopped, rz, rz_new)
        # What this solve reached, for the steps' prediction of convergence
        # (`~astro_dia.solvers.gauss_newton.predicts_convergence`).
        self.solve_residual = float(torch.sqrt(torch.clamp(rz, min=0.0) / scale))
        return x


def solve_cg(problem, *, max_iter=50, max_reweight=50, rtol=1e-2, max_cg_iter=500,
             max_polish_iter=2000, prepare=None, step_rtol=None, start=None,
             product_budget=None):
    """
    Fit by matrix-free conjugate gradients and Gauss-Newton steps on the exact objective.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
    max_iter : int
        Maximum number of Gauss-Newton steps after the first solution.
    max_reweight : int
        Maximum number of weight refreshes.
    rtol : float
        Relative residual of each conjugate-gradient solve.
    max_cg_iter : int
        Maximum conjugate-gradient iterations per solve.
    step_rtol : float, optional
        Relative residual of the solves of the Gauss-Newton steps after
        the linear start (default ``rtol``): a looser one where the steps
        converge no faster than linearly anyway (the robust pass).
    max_polish_iter : int, optional
        Maximum L-BFGS iterations if the Gauss-Newton steps stall (whitened
        by the Cholesky factor of the Toeplitz preconditioner).
    prepare : callable, optional
        Called with the linear start; see
        `~astro_dia.solvers.gauss_newton.linear_start`.
    start : tensor, optional
        Parameters to start the Gauss-Newton steps from instead of the
        linear start; see `~astro_dia.solvers.gauss_newton.start_weights`.
    product_budget : int, optional
        Most products with the normal matrix: beyond them
        `ProductBudgetExceeded` is raised (the caller then takes the direct
        solver, see ``astro_dia.fitting._fitting.solve_robust``).

    Returns
    -------
    state : ``astro_dia.fitting._problem.FitState``
        With ``metric`` (the `ConjugateGradientMetric`) attached.

    Raises
    ------
    ProductBudgetExceeded
        With ``product_budget``, when the fit needs more products.
    """
    metric = ConjugateGradientMetric(problem, start_weights(problem, start), rtol=rtol,
                                     max_cg_iter=max_cg_iter)
    metric.budget = product_budget
    theta = linear_start(problem, metric, prepare) if start is None else start
    if step_rtol is not None:
        metric.rtol = step_rtol
    state = gauss_newton(problem, theta, metric, max_iter=max_iter, max_reweight=max_reweight)
    state = polish_if_stalled(problem, state, metric.factor, max_iter=max_polish_iter)
    state.n_products = metric.n_products
    metric.budget = None        # the metric lives on in the state (errors, resumed fits)
    return state


def start_factor(state):
    """
    The Cholesky factor a direct or matrix-free fit left, or None.

    That of the direct solver's normal matrix ``A^T W A`` or of the ``cg``
    solver's Toeplitz approximation of it, at the weights of its last step.
    """
    return getattr(getattr(state, "metric", None), "factor", None)


def continue_fit(problem, start, *, max_iter, max_polish_iter):
    """
    Gauss-Newton steps from a neighbouring fit, preconditioned by its factor.

    ``start`` is a direct or matrix-free fit of nearly the same problem
    (the robust pass before clipping: the same design, other weights and
    a few more pixels), with a `start_factor`. That factor preconditions
    conjugate-gradient solves with exact products at the current weights
    (`ConjugateGradientMetric.preconditioned_by`), so the fit neither
    assembles a normal matrix (``N_pix (K**2)**2`` operations) nor builds a
    Toeplitz approximation again. The steps use the exact gradient, so
    they reach the same optimum as a fresh fit.

    Returns
    -------
    state : ``astro_dia.fitting._problem.FitState``
        With ``metric`` (the preconditioned metric) attached.
    """
    theta = pack(start.kernel, start.coefficients)
    metric = ConjugateGradientMetric.preconditioned_by(
        problem, irls_weights(problem, theta), start_factor(start), rtol=CONTINUE_RTOL,
        max_cg_iter=10 * (problem.n_kernel + problem.basis.shape[0]))
    state = gauss_newton(problem, theta, metric, max_iter=max_iter, max_reweight=max_iter)
    state = polish_if_stalled(problem, state, metric.factor, max_iter=max_polish_iter)
    state.n_products = metric.n_products
    return state
