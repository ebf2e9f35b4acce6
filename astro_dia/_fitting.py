"""Orchestration of the solvers for one fit (private; functional core of `DifferenceImager.fit`).

Owns the order in which a prepared `FitProblem` is solved: the robust pass
and outlier rejection (``clip``), the choice of solver for ``'auto'``, the
linear start of the iterative solver and the start hook of the Newton
solvers, the reference-noise passes (written once, for every solver), the
refit after the sky is estimated, the constant of the 'uniform' model, the
memory budget of the direct solver and the resumption of a fit after its
weights or mask changed. The solvers themselves live in `astro_dia.solvers`;
the functions here take the problem and a settings record explicitly.
"""

import logging
import warnings

import numpy as np
import torch
from astropy.stats import mad_std

from ._normal import add_regularization, assemble_normal_equations, cholesky
from ._outliers import MAX_CLIP_PASSES, find_outliers, robust_twin, set_fit_mask
from ._tolerances import passes_converged
from ._torch import flush_denormals, to_numpy, to_tensor
from .exceptions import ConvergenceWarning, DIAError
from .noise import SKY_ESTIMATED, refine_sky
from .solvers import choose_solver, solve_cg, solve_direct, solve_iterative
from .solvers.gauss_newton import resume

__all__ = []

log = logging.getLogger(__name__)

#: Most Gauss-Newton steps of the direct and matrix-free solvers.
MAX_NEWTON_STEPS = 100

#: Most Gauss-Newton (and L-BFGS) steps of the robust pass before clipping.
MAX_ROBUST_STEPS = 10

#: Most fits with ``reference_noise=True``, each with the reference variance
#: propagated through the previous pass's ``K**2``.
REFERENCE_PASSES = 10


def run_fit(problem, terms, valid, settings, *, clip, check_pixels):
    """
    Solve ``problem`` with rejection, sky refinement and the convergence warning.

    Parameters
    ----------
    problem : `~astro_dia._problem.FitProblem`
    terms : VarianceTerms
        The target's variance terms (full image; cropped to ``valid`` here).
    valid : tuple of slice
        The region where the convolution is defined.
    settings : `~astro_dia.solvers.SolverSettings`
        The solver's name and settings.
    clip : float or None
        Rejection threshold in sigma; None turns rejection off.
    check_pixels : callable
        ``check_pixels(fit_mask)`` raises if too few pixels are left.

    Returns
    -------
    state : FitState
    outliers : (M', N') bool ndarray
        The rejected pixels of the valid region.
    """
    with flush_denormals():
        state, outliers = solve_clipped(problem, terms, settings, clip, check_pixels)
        if terms.settings.get("sky") == SKY_ESTIMATED:
            state = refit_with_refined_sky(problem, terms, valid, state, settings)
    if not state.converged:
        warnings.warn(
            f"the {state.solver} solver stopped after {state.n_iterations} iterations "
            f"without converging ({state.message}); raise max_iter, or check the inputs",
            ConvergenceWarning)
    log.info("fit: %d iterations, %s", state.n_iterations, state.message)
    return state, outliers


def solve_clipped(problem, terms, settings, clip, check_pixels):
    """
    The fit with outlier rejection (``clip``): robust pass, clip, fit, re-check.

    Returns the final state and the rejected pixels (a bool ndarray on
    the valid region, all False with ``clip=None``).
    """
    candidates = problem.mask
    if clip is None:
        return solve(problem, terms, settings), np.zeros(tuple(candidates.shape), bool)
    robust = solve_robust(problem, settings)
    outliers = find_outliers(problem, robust.kernel, robust.coefficients, clip,
                             candidates, scale_from_residuals=terms.estimate_scale)
    set_fit_mask(problem, candidates & ~outliers)
    check_pixels(to_numpy(problem.mask))
    state = solve(problem, terms, settings)
    for _ in range(MAX_CLIP_PASSES):
        found = find_outliers(problem, state.kernel, state.coefficients, clip,
                              candidates, scale_from_residuals=terms.estimate_scale)
        if torch.equal(found, outliers):
            break
        # Judged afresh at each fit: a pixel the robust pass rejected
        # comes back when the fit proper explains it.
        outliers = found
        set_fit_mask(problem, candidates & ~outliers)
        check_pixels(to_numpy(problem.mask))
        state = resume_fit(problem, state, settings)
    return state, to_numpy(outliers).astype(bool)


def solve_robust(problem, settings):
    """
    The robust pass before clipping: Huber loss, variance fixed at the data.

    Its influence function is bounded, so outliers of any amplitude
    cannot drag it (see ``astro_dia._outliers``).
    """
    twin = robust_twin(problem)
    solver = settings.name
    if solver not in ("direct", "cg"):
        solver = choose_solver(problem.shape, problem.kernel_size, problem.device, twin.loss,
                               kernel_terms=problem.kernel_terms)
    steps = dict(max_iter=MAX_ROBUST_STEPS, max_polish_iter=MAX_ROBUST_STEPS)
    if solver == "direct":
        return solve_direct(twin, max_bytes=strip_budget(twin, settings.max_memory), **steps)
    return solve_cg(twin, **steps)


def resume_fit(problem, state, settings):
    """Continue a fit after the problem's weights or fit mask changed."""
    if state.solver == "iterative":
        resumed = solve_iterative(problem, state.kernel, state.coefficients,
                                  max_iter=settings.max_iter, cholesky_factor=None)
    else:
        resumed = resume(problem, state, max_iter=min(settings.max_iter, MAX_NEWTON_STEPS),
                         max_polish_iter=settings.max_iter)
    resumed.n_iterations += state.n_iterations
    resumed.solver = state.solver
    return resumed


def solve(problem, terms, settings):
    """Run the chosen solver (``auto`` resolved per problem)."""
    solver = settings.name
    if solver == "auto":
        solver = choose_solver(problem.shape, problem.kernel_size, problem.device,
                               problem.loss, kernel_terms=problem.kernel_terms)
    if solver == "iterative":
        state = solve_iterative_fit(problem, terms, settings)
    else:
        state = solve_newton(problem, terms, settings, solver)
    state.solver = solver
    return state


def reference_passes(problem, first, again, start_kernel=None):
    """
    The reference-noise passes, for every solver.

    ``first()`` runs the first fit; while the problem has a reference
    variance, ``again(state)`` refits with it propagated through the last
    pass's ``K**2``, until P changes by less than the data type resolves
    (compared with ``start_kernel``'s too, if given) or `REFERENCE_PASSES`
    fits were made. The iterations of all passes are summed.
    """
    state = first()
    n_iterations = state.n_iterations
    if problem.reference_variance_spectrum is not None:
        previous = None if start_kernel is None else float(start_kernel.sum())
        for _ in range(REFERENCE_PASSES - 1):
            if previous is not None and passes_converged(previous, float(state.kernel.sum()),
                                                         problem.dtype):
                break
            previous = float(state.kernel.sum())
            problem.update_reference_variance(state.kernel)
            state = again(state)
            n_iterations += state.n_iterations
    state.n_iterations = n_iterations
    return state


def solve_newton(problem, terms, settings, solver):
    """Direct or matrix-free: a weighted linear solution, then exact Newton steps."""
    steps = dict(max_iter=min(settings.max_iter, MAX_NEWTON_STEPS),
                 max_polish_iter=settings.max_iter)
    if solver == "direct":
        solve_once = solve_direct
        first_steps = dict(steps, max_bytes=strip_budget(problem, settings.max_memory))
    else:
        solve_once, first_steps = solve_cg, steps
    return reference_passes(
        problem,
        lambda: solve_once(problem, prepare=start_hook(problem, terms), **first_steps),
        lambda state: resume(problem, state, **steps))


def start_hook(problem, terms):
    """
    What the iterative solver does with its start, for the other solvers.

    The reference variance through the start's ``K**2`` and the constant
    of the 'uniform' model are set from the linear start, so that every
    solver optimises the same objective. None when there is nothing to set.
    """
    if problem.reference_variance_spectrum is None and not terms.estimate_scale:
        return None

    def prepare(kernel, coefficients):
        problem.update_reference_variance(kernel)
        if terms.estimate_scale:
            set_uniform_scale(problem, kernel, coefficients)
        return True

    return prepare


def strip_budget(problem, max_memory):
    """Bytes for one im2col strip: what ``max_memory`` leaves after the problem's arrays."""
    if max_memory is None:
        return None
    ny, nx = problem.shape
    n = problem.n_kernel + problem.basis.shape[0]
    # Images on the device (reference, target, weights, model, basis,
    # FFT buffers), and the float64 normal matrix and its factor.
    fixed = ((12 + problem.basis.shape[0] + 2 * problem.kernel_terms) * ny * nx * 8
             + 3 * n * n * 8)
    budget = max_memory - fixed
    if budget <= 0:
        raise DIAError(
            f"max_memory={max_memory} bytes is less than the {fixed} bytes that the "
            f"images and the normal matrix of this fit need; raise max_memory or use "
            f"solver='cg'")
    return budget


def solve_iterative_fit(problem, terms, settings):
    """Start from the linear solution, then minimise the exact objective."""
    weights = problem.weights(problem.target)   # variance at the data, for the start
    factor = None
    if settings.preconditioner == "normal":
        kernel, coefficients, factor = normal_start(problem, weights)
    if factor is None:
        shape = to_tensor(settings.initial_kernel(problem.kernel_size),
                          device=problem.device, dtype=problem.dtype)
        kernel, coefficients = problem.linear_start(shape, weights)
    if terms.estimate_scale:
        set_uniform_scale(problem, kernel, coefficients)

    def fit_from(kernel, coefficients):
        return solve_iterative(problem, kernel, coefficients, max_iter=settings.max_iter,
                               adam_tol=settings.adam_tol,
                               max_adam_iter=settings.max_adam_iter, cholesky_factor=factor)

    def first():
        problem.update_reference_variance(kernel)
        return fit_from(kernel, coefficients)

    return reference_passes(problem, first,
                            lambda state: fit_from(state.kernel, state.coefficients),
                            start_kernel=kernel)


def refit_with_refined_sky(problem, terms, valid, state, settings):
    """Estimate the subtracted sky from the residuals, then polish the fit."""
    with torch.no_grad():
        model = problem.model(state.kernel, state.coefficients)
        residual = to_numpy(problem.target - model)
    terms.offset = refine_sky(terms.cropped(valid), to_numpy(model), residual,
                              to_numpy(problem.mask).astype(bool))
    problem.offset = terms.offset
    return resume_fit(problem, state, settings)


def normal_start(problem, weights):
    """Weighted linear least-squares solution (float64) and its Cholesky factor."""
    normal, rhs = assemble_normal_equations(problem, weights, dtype=torch.float64)
    add_regularization(normal, problem, rhs)
    factor = cholesky(normal)
    if factor is None:
        return None, None, None
    theta = torch.cholesky_solve(rhs[:, None], factor)[:, 0]
    kernel = theta[:problem.n_kernel].reshape(problem.kernel_shape)
    return kernel.to(problem.dtype), theta[problem.n_kernel:].to(problem.dtype), factor


def set_uniform_scale(problem, kernel, coefficients):
    """For the uniform model, set the constant variance from the start's residuals."""
    with torch.no_grad():
        residual = (problem.target - problem.model(kernel, coefficients))[problem.mask]
    sigma = float(mad_std(to_numpy(residual)))
    problem.constant = torch.full_like(problem.constant, max(sigma, 1e-30) ** 2)
