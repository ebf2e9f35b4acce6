"""Solvers for the kernel and background (functional core of `~astro_dia.DifferenceImager`)."""

from .cg import solve_cg  # noqa: F401
from .choice import choose_solver  # noqa: F401
from .direct import solve_direct  # noqa: F401
from .iterative import solve_iterative  # noqa: F401
from .settings import (AutoSolver, ConjugateGradientSolver, DirectSolver,  # noqa: F401
                       IterativeSolver, Solver, get_solver)

# The solve_* functions and choose_solver act on the private fit problem and
# torch devices: the functional core behind the solver objects, not public.
__all__ = ["Solver", "AutoSolver", "DirectSolver", "ConjugateGradientSolver", "IterativeSolver",
           "get_solver"]
