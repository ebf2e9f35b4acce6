"""The kernel and P of a spatially varying fit at pixel positions (private).

Shared by `~astro_dia.DifferenceResult` and the kernel read back from a
difference image's header, so that both answer from one formula.
"""

import numpy as np

from ..background import basis_at

__all__ = []


def kernel_at(kernel, kernel_terms, degree, shape, x, y):
    """The kernel at one 0-based position: ``kernel`` itself when it does not vary."""
    if np.ndim(x) or np.ndim(y):
        raise ValueError("kernel_at takes one position; loop for several")
    if kernel_terms is None:
        return kernel.copy()
    return np.tensordot(basis_at(shape, degree, x, y), kernel_terms, axes=1)


def scale_factor_at(scale_factor, kernel_terms, degree, shape, x, y):
    """P at 0-based positions: a float for a scalar position, else an array."""
    if kernel_terms is None:
        values = np.full(np.broadcast(np.asarray(x), np.asarray(y)).shape, scale_factor)
    else:
        sums = kernel_terms.sum(axis=(1, 2))
        values = np.tensordot(sums, basis_at(shape, degree, x, y), axes=1)
    return float(values) if values.ndim == 0 else values
