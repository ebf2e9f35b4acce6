"""
Solver objects: the name of a solver together with its own settings.

Owns the ``solver=`` argument of `~astro_dia.DifferenceImager`: the
public classes `AutoSolver`, `DirectSolver`, `ConjugateGradientSolver` and
`IterativeSolver`, each validating its settings once, in ``__init__``, and
`get_solver`, which turns a name plus the imager's keyword shortcuts
(``max_iter``, ``max_adam_iter``, ``adam_tol``, ``preconditioner``,
``max_memory``, ``kernel_init``) into one of them. The algorithms
themselves are in ``astro_dia.solvers.direct``, ``astro_dia.solvers.cg``
and ``astro_dia.solvers.iterative``.
"""

import numpy as np

from .._validation import parse_memory
from ...kernels import delta_kernel, gaussian_kernel

__all__ = ["Solver", "AutoSolver", "DirectSolver", "ConjugateGradientSolver",
           "IterativeSolver", "get_solver"]

#: Every setting and its default, whatever solver reads it.
_DEFAULTS = dict(max_iter=2000, max_adam_iter=0, adam_tol=1e-6, preconditioner="normal",
                 max_memory=None, kernel_init="flat")


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_kernel_init(kernel_init, kernel_size=None):
    """``kernel_init`` checked: 'flat', 'delta', a Gaussian sigma, or an array."""
    if isinstance(kernel_init, str):
        if kernel_init not in ("flat", "delta"):
            raise ValueError(
                f"kernel_init must be 'flat', 'delta', a Gaussian sigma or an array, "
                f"got {kernel_init!r}")
        return kernel_init
    if np.ndim(kernel_init) == 0:
        gaussian_kernel(3 if kernel_size is None else kernel_size,
                        float(kernel_init))  # validates sigma
        return float(kernel_init)
    kernel_init = np.array(kernel_init, dtype=float)
    if kernel_size is None:
        kernel_size = kernel_init.shape[0] if kernel_init.ndim == 2 else -1
    shape = (kernel_size, kernel_size)
    if kernel_init.shape != shape or not np.isfinite(kernel_init).all():
        raise ValueError(f"a kernel_init array must be finite with shape {shape}, "
                         f"got shape {kernel_init.shape}")
    return kernel_init


class Solver:
    """
    Base class of the solver objects: a solver name and its settings.

    Use one of the subclasses; they differ in the settings they take.
    The settings a solver does not take keep their defaults and are not
    used by it.
    """

    #: Name recorded in ``result.solver`` (``'auto'`` is resolved per fit).
    name = None
    #: Settings the class takes, in the order of its signature.
    _settings = ()

    def __init__(self, **settings):
        values = dict(_DEFAULTS, **settings)
        self.max_iter = _check_count("max_iter", values["max_iter"])
        if self.max_iter == 0:
            raise ValueError("max_iter must be at least 1")
        self.max_adam_iter = _check_count("max_adam_iter", values["max_adam_iter"])
        self.adam_tol = float(values["adam_tol"])
        if values["preconditioner"] not in ("normal", "diagonal"):
            raise ValueError(f"preconditioner must be 'normal' or 'diagonal', got "
                             f"{values['preconditioner']!r}")
        self.preconditioner = values["preconditioner"]
        self.max_memory = parse_memory(values["max_memory"])
        self.kernel_init = check_kernel_init(values["kernel_init"])

    def initial_kernel(self, kernel_size):
        """Starting kernel shape with ``preconditioner='diagonal'``, a (K, K) ndarray."""
        if isinstance(self.kernel_init, str):
            if self.kernel_init == "flat":
                return np.full((kernel_size, kernel_size), 1.0 / kernel_size ** 2)
            return delta_kernel(kernel_size)
        if isinstance(self.kernel_init, float):
            return gaussian_kernel(kernel_size, self.kernel_init)
        return self.kernel_init

    def __repr__(self):
        settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._settings
                             if not isinstance(getattr(self, name), np.ndarray))
        return f"{type(self).__name__}({settings})"


class AutoSolver(Solver):
    """
    ``solver='auto'``: direct or matrix-free by problem size, iterative for a custom loss.

    The choice is made per fit by ``astro_dia.solvers.choose_solver``; the
    settings apply to whichever solver is chosen.

    Parameters
    ----------
    max_iter : int, optional
        Most iterations (Newton steps are capped at 100 within it).
    max_memory : int, str or `~astropy.units.Quantity`, optional
        Memory budget of the direct solver, e.g. ``'2GB'``.
    max_adam_iter, adam_tol, preconditioner, kernel_init : optional
        Settings of the iterative solver, when it is chosen; see
        `IterativeSolver`.

    Examples
    --------
    >>> from astro_dia.solvers import AutoSolver
    >>> AutoSolver(max_iter=500)
    AutoSolver(max_iter=500, max_memory=None, max_adam_iter=0, adam_tol=1e-06,
               preconditioner='normal', kernel_init='flat')
    """

    name = "auto"
    _settings = ("max_iter", "max_memory", "max_adam_iter", "adam_tol", "preconditioner",
                 "kernel_init")

    def __init__(self, *, max_iter=2000, max_memory=None, max_adam_iter=0, adam_tol=1e-6,
                 preconditioner="normal", kernel_init="flat"):
        super().__init__(max_iter=max_iter, max_memory=max_memory, max_adam_iter=max_adam_iter,
                         adam_tol=adam_tol, preconditioner=preconditioner,
                         kernel_init=kernel_init)


class DirectSolver(Solver):
    """
    Gauss-Newton steps with the assembled normal matrix (``astro_dia.solvers.solve_direct``).

    Parameters
    ----------
    max_iter : int, optional
        Most iterations (Newton steps are capped at 100 within it; the
        rest may go to the L-BFGS polish).
    max_memory : int, str or `~astropy.units.Quantity`, optional
        Memory budget, e.g. ``'2GB'``; None (default) for no budget.

    Examples
    --------
    >>> from astro_dia.solvers import DirectSolver
    >>> DirectSolver(max_memory="1GB")
    DirectSolver(max_iter=2000, max_memory=1000000000)
    """

    name = "direct"
    _settings = ("max_iter", "max_memory")

    def __init__(self, *, max_iter=2000, max_memory=None):
        super().__init__(max_iter=max_iter, max_memory=max_memory)


class ConjugateGradientSolver(Solver):
    """
    Matrix-free Gauss-Newton steps by conjugate gradients (``astro_dia.solvers.solve_cg``).

    Parameters
    ----------
    max_iter : int, optional
        Most iterations (Newton steps are capped at 100 within it).

    Examples
    --------
    >>> from astro_dia.solvers import ConjugateGradientSolver
    >>> ConjugateGradientSolver(max_iter=300)
    ConjugateGradientSolver(max_iter=300)
    """

    name = "cg"
    _settings = ("max_iter",)

    def __init__(self, *, max_iter=2000):
        super().__init__(max_iter=max_iter)


class IterativeSolver(Solver):
    """
    The paper's optimisation: optional Adam, then whitened L-BFGS.

    The algorithm is ``astro_dia.solvers.solve_iterative``.

    Parameters
    ----------
    max_iter : int, optional
        Most L-BFGS iterations.
    max_adam_iter : int, optional
        Most Adam steps before L-BFGS; 0 (default) skips Adam.
    adam_tol : float, optional
        Relative loss change at which Adam hands over to L-BFGS.
    preconditioner : {'normal', 'diagonal'}, optional
        Whitening by the Cholesky factor of the normal matrix (default) or
        by its diagonal only (the paper's cost per step).
    kernel_init : {'flat', 'delta'}, float or ndarray, optional
        Starting kernel shape with ``preconditioner='diagonal'``.

    Examples
    --------
    >>> from astro_dia.solvers import IterativeSolver
    >>> IterativeSolver(max_iter=500, preconditioner="diagonal")
    IterativeSolver(max_iter=500, max_adam_iter=0, adam_tol=1e-06,
                    preconditioner='diagonal', kernel_init='flat')
    """

    name = "iterative"
    _settings = ("max_iter", "max_adam_iter", "adam_tol", "preconditioner", "kernel_init")

    def __init__(self, *, max_iter=2000, max_adam_iter=0, adam_tol=1e-6,
                 preconditioner="normal", kernel_init="flat"):
        super().__init__(max_iter=max_iter, max_adam_iter=max_adam_iter, adam_tol=adam_tol,
                         preconditioner=preconditioner, kernel_init=kernel_init)


_SOLVERS = {cls.name: cls for cls in (AutoSolver, DirectSolver, ConjugateGradientSolver,
                                      IterativeSolver)}


def get_solver(solver, **shortcuts):
    """
    A solver object from a name or an object, and the imager's keyword shortcuts.

    Parameters
    ----------
    solver : {'auto', 'direct', 'cg', 'iterative'} or `Solver`
    **shortcuts
        ``max_iter``, ``max_adam_iter``, ``adam_tol``, ``preconditioner``,
        ``max_memory``, ``kernel_init``; None means not given. With a name
        they set the solver's settings (those the named solver does not
        use are accepted and ignored, as always); with an object they are
        an error, since the object carries its own.

    Returns
    -------
    solver : `Solver`

    Raises
    ------
    ValueError
        For an unknown name, a bad setting, or shortcuts given together
        with a solver object.

    Examples
    --------
    >>> from astro_dia.solvers import get_solver
    >>> get_solver("cg", max_iter=100)
    ConjugateGradientSolver(max_iter=100)
    """
    given = {name: value for name, value in shortcuts.items() if value is not None}
    unknown = sorted(set(given) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown solver settings {unknown}")
    if isinstance(solver, Solver):
        if given:
            raise ValueError(
                f"solver settings {sorted(given)} were given together with a "
                f"{type(solver).__name__} instance; set them on the instance instead")
        return solver
    if not isinstance(solver, str) or solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {list(_SOLVERS)}, got {solver!r}; a Solver "
                         f"instance (DirectSolver(...), IterativeSolver(...)) is also accepted")
    instance = _SOLVERS[solver].__new__(_SOLVERS[solver])
    Solver.__init__(instance, **given)   # every shortcut, as a name always accepted
    return instance
