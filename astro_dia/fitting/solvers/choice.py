"""``solver='auto'``: which solver to use for a problem, from measured crossovers."""

from ...losses import GaussianLoss, HuberLoss, StudentTLoss

__all__ = ["choose_solver", "DIRECT_MAX_WORK_CPU", "DIRECT_MAX_WORK_GPU"]

#: Largest ``N_pixels * K**4`` (the cost of the direct solver's matrix
#: products) for which ``direct`` is chosen on a CPU; above it the matrix-free
#: solver, whose FFT products do not grow with ``K``, is faster. Measured with
#: ``benchmarks/bench_solvers.py`` on a 2-core x86_64 CPU (docs/performance.rst):
#: direct is faster at 142 x 142 with 19 x 19 and 25 x 25 kernels
#: (N K^4 = 2.6e9 and 7.9e9), the matrix-free solver at 512 x 512 and above
#: with either kernel (N K^4 >= 3.4e10).
DIRECT_MAX_WORK_CPU = 1.5e10

#: The same on a GPU, where matrix products are relatively cheaper. Not
#: measured (no GPU was available): an assumption, ten times the CPU value.
DIRECT_MAX_WORK_GPU = 1.5e11

#: Losses whose Gauss-Newton (IRLS) weights ``psi(z) / z`` are known to be
#: non-negative, so that the direct and matrix-free steps are well defined.
_NEWTON_LOSSES = (GaussianLoss, HuberLoss, StudentTLoss)


def choose_solver(shape, kernel_size, device, loss=None, *, kernel_terms=1, n_pixels=None):
    """
    The solver ``solver='auto'`` uses.

    Parameters
    ----------
    shape : tuple of int
        Image shape.
    kernel_size : int
        Kernel side.
    device : `torch.device`
        Where the fit runs.
    loss : callable, optional
        The loss; a user-supplied callable (not one of astro_dia's losses)
        gets the ``iterative`` solver, which needs only its gradient.
    kernel_terms : int, optional
        Number of polynomial terms of a spatially varying kernel
        (``(d + 1)(d + 2) / 2`` for ``kernel_degree=d``); the direct
        solver's matrix products grow as its square.
    n_pixels : int, optional
        Pixels in the fit, when fewer than the image's (a fit on stars'
        stamps): the direct solver multiplies only their columns, while the
        matrix-free solver's transforms cover the whole frame and its
        iterations multiply when few pixels are fitted (measured: 1 869
        products for a fit on 3% of a 1024 x 682 frame, 58 on all of it).

    Returns
    -------
    name : {'direct', 'cg', 'iterative'}

    Examples
    --------
    >>> import torch
    >>> choose_solver((142, 142), 19, torch.device("cpu"))
    'direct'
    >>> choose_solver((2048, 2048), 19, torch.device("cpu"))
    'cg'
    """
    if loss is not None and not isinstance(loss, _NEWTON_LOSSES):
        return "iterative"
    if n_pixels is None:
        n_pixels = shape[0] * shape[1]
    return "direct" if direct_work(n_pixels, kernel_size, kernel_terms, device) <= 1 else "cg"


def direct_work(n_pixels, kernel_size, kernel_terms, device):
    """
    The direct solver's matrix-product work, ``N_pixels (T K**2)**2``, over its limit.

    The limit is `DIRECT_MAX_WORK_CPU` or `DIRECT_MAX_WORK_GPU` for ``device``:
    ``solver='auto'`` takes the direct solver up to 1.
    """
    limit = DIRECT_MAX_WORK_GPU if device.type == "cuda" else DIRECT_MAX_WORK_CPU
    return n_pixels * (kernel_terms * kernel_size ** 2) ** 2 / limit
