"""Convergence tolerances per floating data type, in one table (private).

Owns every dtype-dependent stopping threshold of the fit: the Newton
decrement of the direct and matrix-free solvers, the whitened gradient and
step tolerances of L-BFGS, and the relative change of P at which the
reference-noise passes stop. Solvers look their thresholds up here rather
than keeping tables of their own.
"""

import torch

__all__ = []

#: dtype -> thresholds. ``newton``: Newton decrement (in standard deviations)
#: at which a Gauss-Newton fit has converged; ``gradient`` and ``step``:
#: L-BFGS tolerances in whitened units (about one sigma each); ``passes``:
#: relative change of P between two reference-noise passes; ``predicted``:
#: the distance to the optimum (in standard deviations), predicted from the
#: contraction of the last steps, below which a Gauss-Newton fit stops
#: without a step to confirm it. In float32 that is the decrement tolerance
#: itself, at the rounding noise of the gradient, where a confirming step
#: buys nothing. A float64 fit is asked for its precision: it confirms
#: every step (0: never predicted), since on an ill-conditioned problem the
#: rounding of a step, not the contraction, sets where it lands (a
#: noiseless pair of condition 1e15 stopped at |P - 1| = 2.3e-9 on a
#: prediction, 1e-9 with the confirming step).
TOLERANCES = {
    torch.float64: dict(newton=1e-6, predicted=0.0, gradient=1e-8, step=1e-9, passes=1e-9),
    torch.float32: dict(newton=1e-3, predicted=1e-3, gradient=1e-4, step=1e-4, passes=1e-6),
}


def tolerance(dtype, name):
    """Threshold ``name`` for ``dtype`` (the float32 value for any other dtype)."""
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])[name]


def passes_converged(previous, current, dtype):
    """Whether P changed by less than the data type resolves between two passes."""
    return abs(current - previous) <= tolerance(dtype, "passes") * abs(current)
