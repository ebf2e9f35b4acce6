"""
The installed version of astro_dia, read from the file setuptools_scm writes.

Modules that stamp the version into their output import it from here, not
from the package ``__init__``, so that no module imports the package that
imports it.
"""

try:
    from ._version import version
except ImportError:  # not installed, e.g. a source tree without setuptools_scm
    version = "0.0.0"

__all__ = ["version"]
