"""
The fitting engine: a prepared pair solved for the kernel and the background.

Owns the inputs of a fit prepared and checked (``_inputs``, ``_validation``),
the fit problem on its device (``_problem``) with its normal equations
(``_normal``) and tolerances per data type (``_tolerances``), the solvers
(``solvers``, public as ``astro_dia.solvers``), the fit loop (``_fitting``)
with its outlier rejection (``_outliers``) and the correction for a noisy
reference (``_errors_in_variables``), the errors from the Fisher information
(``uncertainty``, public as `astro_dia.uncertainty`; ``_matrix_free_errors``),
the guard's fit-quality checks (``_guard``), and glibc's reuse of freed
blocks during fits of large frames (``_heap``), a process-wide setting that
`heap_reuse` and the ``ASTRO_DIA_HEAP`` environment variable turn off.
"""

from ._heap import HEAP_ENVIRONMENT_VARIABLE, heap_reuse

__all__ = ["heap_reuse", "HEAP_ENVIRONMENT_VARIABLE"]
