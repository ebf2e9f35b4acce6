"""
Steps of a reduction pipeline built around the imager.

Owns the fit as a ccdproc-style reduction step (``ccdproc_step``, public as
`astro_dia.ccdproc_step`) and the processing of a whole series of frames
(`process_series`: registration with `astro_dia.registration`, a reference
from `astro_dia.reference`, differences, candidates across epochs and
light curves), behind ``astro-dia series``.
"""

from .ccdproc_step import subtract_reference
from .series import SeriesResult, process_series

__all__ = ["subtract_reference", "process_series", "SeriesResult"]
