"""``solver='auto'``: which solver to use for a problem, from measured crossovers."""

__all__ = ["choose_solver"]

#: Largest kernel side for which the direct solver is chosen on a CPU. The
#: direct solver's matrix products cost ``N_data K**4`` and the matrix-free
#: solver's FFT products do not grow with ``K``; measured by
#: ``benchmarks/bench_solvers.py`` (see docs/performance.rst).
DIRECT_MAX_KERNEL_CPU = 19

#: The same on a GPU, where the matrix products are relatively cheaper.
DIRECT_MAX_KERNEL_GPU = 31


def choose_solver(shape, kernel_size, device):
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

    Returns
    -------
    name : {'direct', 'cg'}
    """
    limit = DIRECT_MAX_KERNEL_GPU if device.type == "cuda" else DIRECT_MAX_KERNEL_CPU
    return "direct" if kernel_size <= limit else "cg"
