"""
Steps of a reduction pipeline built around the imager.

Owns the fit as a ccdproc-style reduction step (``ccdproc_step``, public as
`astro_dia.ccdproc_step`). Registration, reference building and the
processing of a series come here next.
"""

from .ccdproc_step import subtract_reference

__all__ = ["subtract_reference"]
