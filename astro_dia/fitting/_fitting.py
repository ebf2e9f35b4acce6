"""Orchestration of the solvers for one fit (private; functional core of `DifferenceImager.fit`).

Owns the order in which a prepared `FitProblem` is solved: the robust pass
and outlier rejection (``clip``), the choice of solver for ``'auto'``, the
linear start of the iterative solver and the start hook of the Newton
solvers, the reference-noise passes (written once, for every solver), the
points at which the noise model refines its terms (`Refinement`: the
constant of the 'uniform' model at the start, a refitted sky after the fit;
the models own what they do, see `astro_dia.noise.NoiseModel.refine`), the
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
from ..model._torch import flush_denormals, to_numpy, to_tensor
from ..exceptions import ConvergenceWarning, DIAError
from .solvers import choose_solver, solve_cg, solve_direct, solve_iterative
from .solvers.choice import direct_work
from .solvers.cg import ProductBudgetExceeded, continue_fit, start_factor
from .solvers.gauss_newton import pack, resume

__all__ = []

log = logging.getLogger(__name__)

#: Most Gauss-Newton steps of the direct and matrix-free solvers.
MAX_NEWTON_STEPS = 100

#: After the robust pass, a pixel joins the outliers only beyond this many times ``clip``.
ADDED_CLIP_FACTOR = 2.0

#: Most Gauss-Newton (and L-BFGS) steps of the robust pass before clipping.
#: Its re-weighted Huber steps converge linearly: on the crowded pyDIA frames
#: the direct solver's pass needed 11-18 steps in 8 of 26 frames, and its
#: outliers after 10 moved P by up to 2.5 sigma_P.
MAX_ROBUST_STEPS = 30

#: Relative residual of the robust pass's matrix-free steps: they converge
#: linearly (re-weighted Huber), so a more precise solve buys nothing
#: (50 -> 29 products at 1000 x 1000, the same decrements).
ROBUST_STEP_RTOL = 0.1

#: Most products of the robust pass's matrix-free solver before it gives way to
#: the direct solver (as does a pass that ends without converging). Its Toeplitz preconditioner assumes weights that vary slowly
#: across a kernel; on simulated frames the pass takes 15-30 products, on the
#: crowded pyDIA frames, whose bright stars make the weights vary within a kernel,
#: 200-1000, and the fit after it, preconditioned by the same factor, thousands
#: (4-40 s for a 512 x 512 frame, against 3-8 s by the direct solver).
ROBUST_PRODUCT_BUDGET = 60

#: The direct solver replaces a robust pass over budget only up to this many
#: times the work at which ``solver='auto'`` chooses it (``N_pixels K**4``):
#: up to about 1000 x 1000 pixels with a 19 x 19 kernel on a CPU.
DIRECT_FALLBACK_FACTOR = 10

#: Most fits with ``reference_noise=True``, each with the reference variance
#: propagated through the previous pass's ``K**2``.
REFERENCE_PASSES = 10


class Refinement:
    """
    The noise model's refinement of the target's terms during one fit.

    Holds the current terms of the whole image; `apply` hands the noise
    model the model and residuals of a solution as numpy arrays and puts
    what it returns on the problem.
    """

    def __init__(self, noise_model, terms, valid):
        self.noise_model, self.terms, self.valid = noise_model, terms, valid

    def wants(self, stage):
        """Whether the noise model refines its terms at ``stage`` ('start' or 'fit')."""
        return self.noise_model.refines(self.terms, stage)

    def apply(self, problem, kernel, coefficients, stage):
        """Refine the terms from the solution ``kernel, coefficients``, on the problem too."""
        with torch.no_grad():
            model = problem.model(kernel, coefficients)
            residual = problem.target - model
        self.terms = self.noise_model.refine(
            self.terms, to_numpy(model), to_numpy(residual),
            to_numpy(problem.mask).astype(bool), region=self.valid, stage=stage)
        problem.set_noise_terms(self.terms.cropped(self.valid))


def run_fit(problem, noise_model, terms, valid, settings, *, clip, check_pixels):
    """
    Solve ``problem`` with rejection, the noise model's refinement and the convergence warning.

    Parameters
    ----------
    problem : `~astro_dia.fitting._problem.FitProblem`
    noise_model : `~astro_dia.noise.NoiseModel`
        The model that resolved ``terms``; it refines them (`Refinement`).
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
    terms : VarianceTerms
        The target's terms after the noise model's refinement.
    """
    refinement = Refinement(noise_model, terms, valid)
    with flush_denormals():
        state, outliers = solve_clipped(problem, refinement, settings, clip, check_pixels)
        if refinement.wants("fit"):
            refinement.apply(problem, state.kernel, state.coefficients, "fit")
            state = resume_fit(problem, state, settings)
    if not state.converged:
        warnings.warn(
            f"the {state.solver} solver stopped after {state.n_iterations} iterations "
            f"without converging ({state.message}); raise max_iter, or check the inputs",
            ConvergenceWarning)
    log.info("fit: %d iterations, %s", state.n_iterations, state.message)
    return state, outliers, refinement.terms


def solve_clipped(problem, refinement, settings, clip, check_pixels):
    """
    The fit with outlier rejection (``clip``): robust pass, clip, fit, re-check.

    Returns the final state and the rejected pixels (a bool ndarray on
    the valid region, all False with ``clip=None``). The state's
    ``pass_scale_factors`` are P of the robust pass and of each fit on the
    clipped pixels, for the guard (`astro_dia.fitting._guard`).
    """
    candidates = problem.mask
    if clip is None:
        return solve(problem, refinement, settings), np.zeros(tuple(candidates.shape), bool)
    estimate_scale = refinement.terms.estimate_scale
    robust = solve_robust(problem, settings, estimate_scale=estimate_scale)
    outliers, changed = find_outliers(problem, robust.kernel, robust.coefficients, clip,
                                      candidates, scale_from_residuals=estimate_scale)
    set_fit_mask(problem, candidates & ~outliers)
    check_pixels(to_numpy(problem.mask))
    state = solve(problem, refinement, settings, start=robust)
    passes = [float(problem.scale_factor(robust.kernel)),
              float(problem.scale_factor(state.kernel))]
    for _ in range(MAX_CLIP_PASSES):
        found, _ = find_outliers(problem, state.kernel, state.coefficients, clip, candidates,
                                 scale_from_residuals=estimate_scale, changed=changed,
                                 keep=outliers, added_clip=ADDED_CLIP_FACTOR * clip)
        if torch.equal(found, outliers):
            break
        # Judged afresh at each fit: a pixel the robust pass rejected
        # comes back when the fit proper explains it (the changed sources'
        # boxes, judged at the robust pass, stay out). A pixel is added only
        # beyond ADDED_CLIP_FACTOR times clip: a set that grew pass by pass
        # with the tail of a single-epoch reference's noise moved P by 18
        # sigma_P (1%) on a crowded real pair, while the cosmic rays that the
        # robust pass's model hid are far beyond.
        outliers = found
        set_fit_mask(problem, candidates & ~outliers)
        check_pixels(to_numpy(problem.mask))
        state = resume_fit(problem, state, settings)
        passes.append(float(problem.scale_factor(state.kernel)))
    state.pass_scale_factors = tuple(passes)
    state.robust_converged = bool(robust.converged)
    return state, to_numpy(outliers).astype(bool)


def solve_robust(problem, settings, *, estimate_scale=False):
    """
    The robust pass before clipping: Huber loss, variance fixed at the data.

    Its influence function is bounded, so outliers of any amplitude
    cannot drag it (see ``astro_dia.fitting._outliers``). With
    ``estimate_scale`` (the 'uniform' model, whose variance is unknown
    until a fit has residuals) the variance is set from the residuals of
    the linear start (`scale_from_start`), since the Huber loss has a
    scale. A pass that ends without converging is warned about by the
    guard (``ROBUST``, `astro_dia.fitting._guard`): the outliers are judged
    at its model.
    """
    twin = robust_twin(problem)
    prepare = scale_from_start(twin) if estimate_scale else None
    solver = settings.name
    if solver not in ("direct", "cg"):
        solver = choose_solver(problem.shape, problem.kernel_size, problem.device, twin.loss,
                               kernel_terms=problem.kernel_terms, n_pixels=problem.n_data)
    steps = dict(max_iter=MAX_ROBUST_STEPS, max_polish_iter=MAX_ROBUST_STEPS, prepare=prepare)
    direct = lambda: solve_direct(  # noqa: E731
        twin, max_bytes=strip_budget(twin, settings.max_memory), **steps)
    if solver == "direct":
        return direct()
    budget = None
    if settings.name == "auto" and direct_affordable(twin):
        budget = ROBUST_PRODUCT_BUDGET
    try:
        state = solve_cg(twin, step_rtol=ROBUST_STEP_RTOL, product_budget=budget, **steps)
    except ProductBudgetExceeded as exc:
        # The Toeplitz preconditioner is far from the normal matrix here (weights
        # that vary within a kernel); the direct solver's exact factor then also
        # preconditions the fit proper (`solve_newton`, `continue_fit`).
        log.info("robust pass: %s; the direct solver takes over", exc)
        return direct()
    if budget is not None and not state.converged:
        # Its outliers would be those of a model short of the robust optimum (a
        # pyDIA frame's fit on stars: 295 pixels rejected where the direct solver
        # rejects 693, P 1.4% higher).
        log.info("robust pass: %s; the direct solver takes over", state.message)
        return direct()
    return state


def scale_from_start(twin):
    """
    A ``prepare`` hook that sets ``twin``'s variance from its linear start.

    The robust (MAD) variance of the start's residuals on the fitted
    pixels, for a model whose variance is known only up to a constant
    (the 'uniform' model's 1 until then): with a variance of 1 data unit
    the Huber loss is nearly an L1 loss, whose Newton steps stall (25
    sigma short of converging on a 72 x 72 simulated pair).
    """
    unit = twin.constant      # a pass that the direct solver takes over starts again

    def prepare(kernel, coefficients):
        with torch.no_grad():
            residual = (twin.target - twin.model(kernel, coefficients))[twin.mask]
            sigma = float(mad_std(to_numpy(residual)))
        if not sigma > 0:
            return False
        twin.constant = unit * sigma ** 2
        return True

    return prepare


def direct_affordable(problem):
    """Whether the direct solver may replace a matrix-free pass over its budget."""
    return direct_work(problem.n_data, problem.kernel_size, problem.kernel_terms,
                       problem.device) <= DIRECT_FALLBACK_FACTOR


def resume_fit(problem, state, settings):
    """Continue a fit after the problem's weights or fit mask changed (its pass record kept)."""
    if state.solver == "iterative":
        resumed = solve_iterative(problem, state.kernel, state.coefficients,
                                  max_iter=settings.max_iter, cholesky_factor=None)
    else:
        resumed = resume(problem, state, max_iter=min(settings.max_iter, MAX_NEWTON_STEPS),
                         max_polish_iter=settings.max_iter)
    resumed.n_iterations += state.n_iterations
    resumed.solver = state.solver
    resumed.pass_scale_factors = state.pass_scale_factors
    resumed.robust_converged = state.robust_converged
    return resumed


def solve(problem, refinement, settings, start=None):
    """
    Run the chosen solver (``auto`` resolved per problem).

    ``start`` (a `FitState`, the robust pass's) is where the direct and
    matrix-free solvers begin their Gauss-Newton steps when nothing is set
    from the linear start (`start_hook`), instead of that start: a
    solution of the same data with the outliers still in, a few sigma from
    the optimum, where the linear start is tens of sigma away.
    """
    solver = settings.name
    if solver == "auto":
        solver = choose_solver(problem.shape, problem.kernel_size, problem.device,
                               problem.loss, kernel_terms=problem.kernel_terms,
                               n_pixels=problem.n_data)
    if solver == "iterative":
        state = solve_iterative_fit(problem, refinement, settings)
    else:
        state = solve_newton(problem, refinement, settings, solver, start)
    state.solver = solver
    return state


def reference_passes(problem, first, again, start_kernel=None):
    """
    The reference-noise passes, for every solver.

    ``first()`` runs the first fit; while the problem has a reference
    variance, ``again(state)`` refits with it propagated through the last
    pass's ``K**2`` and the errors-in-variables correction of the noisy
    reference at the last pass's weights
    (``FitProblem.update_reference_variance``), until P changes by less
    than the data type resolves (compared with ``start_kernel``'s too, if
    given) or `REFERENCE_PASSES` fits were made. The iterations of all
    passes are summed.
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
            problem.update_reference_variance(state.kernel, state.coefficients)
            state = again(state)
            n_iterations += state.n_iterations
    state.n_iterations = n_iterations
    return state


def solve_newton(problem, refinement, settings, solver, start=None):
    """Direct or matrix-free: a weighted linear solution (or ``start``), then exact Newton steps."""
    steps = dict(max_iter=min(settings.max_iter, MAX_NEWTON_STEPS),
                 max_polish_iter=settings.max_iter)
    if solver == "direct":
        solve_once = solve_direct
        first_steps = dict(steps, max_bytes=strip_budget(problem, settings.max_memory))
    else:
        solve_once, first_steps = solve_cg, dict(steps)   # `start`: first fit only
    prepare = start_hook(problem, refinement)
    if prepare is None and start is not None:
        if start_factor(start) is not None:
            # The robust pass's factor preconditions the steps: no second
            # assembly (direct) or Toeplitz approximation (cg).
            first = lambda: continue_fit(problem, start, **steps)   # noqa: E731
            return reference_passes(problem, first, lambda state: resume(problem, state, **steps))
        first_steps["start"] = pack(start.kernel, start.coefficients)
    return reference_passes(
        problem, lambda: solve_once(problem, prepare=prepare, **first_steps),
        lambda state: resume(problem, state, **steps))


def start_hook(problem, refinement):
    """
    What the iterative solver does with its start, for the other solvers.

    The reference variance through the start's ``K**2`` and the noise
    model's refinement at the start (the constant of the 'uniform' model)
    are set from the linear start, so that every solver optimises the same
    objective. None when there is nothing to set.
    """
    refine = refinement.wants("start")
    if problem.reference_variance_spectrum is None and not refine:
        return None

    def prepare(kernel, coefficients):
        problem.update_reference_variance(kernel, coefficients)
        if refine:
            refinement.apply(problem, kernel, coefficients, "start")
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


def solve_iterative_fit(problem, refinement, settings):
    """Start from the linear solution, then minimise the exact objective."""
    weights = problem.weights(problem.target)   # variance at the data, for the start
    factor = None
    if settings.preconditioner == "normal":
        kernel, coefficients, factor = normal_start(problem, weights)
    if factor is None:
        shape = to_tensor(settings.initial_kernel(problem.kernel_size),
                          device=problem.device, dtype=problem.dtype)
        kernel, coefficients = problem.linear_start(shape, weights)
    if refinement.wants("start"):
        refinement.apply(problem, kernel, coefficients, "start")

    def fit_from(kernel, coefficients):
        return solve_iterative(problem, kernel, coefficients, max_iter=settings.max_iter,
                               adam_tol=settings.adam_tol,
                               max_adam_iter=settings.max_adam_iter, cholesky_factor=factor)

    def first():
        problem.update_reference_variance(kernel, coefficients)
        return fit_from(kernel, coefficients)

    return reference_passes(problem, first,
                            lambda state: fit_from(state.kernel, state.coefficients),
                            start_kernel=kernel)


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
