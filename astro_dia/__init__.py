"""
astro_dia: Difference Image Analysis of CCD and EMCCD images on PyTorch.

Fit a pixel convolution kernel and a differential background that turn a
reference image into a target image, and return the difference image as a
`~astropy.nddata.CCDData` with propagated uncertainty, mask and provenance.
"""

from ._package_version import version as __version__
from .core import DifferenceImager
from .result import DifferenceResult
from .ccdproc_step import subtract_reference
from .exceptions import ConvergenceWarning, DIAError, KernelFitWarning, NoiseModelWarning

__all__ = ["__version__", "DifferenceImager", "DifferenceResult", "DIAError",
           "KernelFitWarning", "ConvergenceWarning", "NoiseModelWarning", "subtract_reference"]
