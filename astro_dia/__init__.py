"""
astro_dia: Difference Image Analysis of CCD and EMCCD images on PyTorch.

Fit a pixel convolution kernel and a differential background that turn a
reference image into a target image, and return the difference image as a
`~astropy.nddata.CCDData` with propagated uncertainty, mask and provenance.
"""

import sys as _sys

from ._package_version import version as __version__
from .core import DifferenceImager
from .result import DifferenceResult
from .pipeline import subtract_reference
from .exceptions import ConvergenceWarning, DIAError, KernelFitWarning, NoiseModelWarning
from .fitting import solvers, uncertainty
from .pipeline import ccdproc_step
from .result import io

__all__ = ["__version__", "DifferenceImager", "DifferenceResult", "DIAError",
           "KernelFitWarning", "ConvergenceWarning", "NoiseModelWarning", "subtract_reference"]


def _keep_public_name(public_name, module):
    """
    Make ``module`` (and its loaded submodules) importable as ``astro_dia.<public_name>`` too.

    The public modules that live in a subpackage keep the names users import
    them by, as ``os.path`` is ``posixpath``: ``import astro_dia.io`` gives
    `astro_dia.result.io` itself, not a copy.
    """
    home = module.__name__
    for name, loaded in list(_sys.modules.items()):
        if name == home or name.startswith(home + "."):
            _sys.modules[__name__ + "." + public_name + name[len(home):]] = loaded


# Public name -> module whose home is a subpackage (astro_dia.solvers: astro_dia.fitting.solvers).
for _public_name, _module in (("io", io), ("uncertainty", uncertainty), ("solvers", solvers),
                              ("ccdproc_step", ccdproc_step)):
    _keep_public_name(_public_name, _module)
del _public_name, _module
