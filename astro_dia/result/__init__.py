"""
The result of a fit: `DifferenceResult`, its files and its header cards.

Owns the record of one fit (``_record``), the assembly of its values from
the solved fit (``_assemble``), the kernel and P of a spatially varying fit
at any position (``_varying_kernel``), the fit written into headers
(``_provenance``, and ``_kernel_header`` for the kernel of a difference
image), and the result as a FITS file (``io``, public as `astro_dia.io`, on
the layout of ``_fits_layout``).
"""

from ._record import DifferenceResult

__all__ = ["DifferenceResult"]
