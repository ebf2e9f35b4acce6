"""
astro_dia: Difference Image Analysis of CCD and EMCCD images on PyTorch.

Fit a pixel convolution kernel and a differential background that turn a
reference image into a target image, and return the difference image as a
`~astropy.nddata.CCDData` with propagated uncertainty, mask and provenance.
"""

try:
    from ._version import version as __version__
except ImportError:  # not installed, e.g. a source tree without setuptools_scm
    __version__ = "0.0.0"

from .core import DifferenceImager, DifferenceResult  # noqa: E402
from .ccdproc_step import subtract_reference  # noqa: E402
from .exceptions import (ConvergenceWarning, DIAError, KernelFitWarning,  # noqa: E402
                         NoiseModelWarning)

__all__ = ["__version__", "DifferenceImager", "DifferenceResult", "DIAError",
           "KernelFitWarning", "ConvergenceWarning", "NoiseModelWarning", "subtract_reference"]
