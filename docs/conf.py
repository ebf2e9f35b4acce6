# Licensed under a 3-clause BSD style license - see LICENSE
"""
Sphinx configuration of the astro_dia documentation.

Build it from this directory with warnings as errors, as tox's
``build_docs`` environment does::

    sphinx-build -W -b html . _build/html

Offline builds
--------------
Cross-references to Python, numpy, scipy, astropy, ccdproc, photutils and
PyTorch use intersphinx, whose inventories are downloaded at build time.
Sphinx reports an inventory it cannot download as a plain warning (one
without a type, so ``suppress_warnings`` cannot silence it), and ``-W``
turns that into an error. So intersphinx fetching is switched off when
the machine is offline:

- ``ASTRO_DIA_OFFLINE_DOCS=1`` forces an offline build (no download is
  tried);
- ``ASTRO_DIA_OFFLINE_DOCS=0`` forces an online build (a failed download
  is then an error under ``-W``);
- otherwise one connection to docs.python.org is tried with a short
  timeout, and the build goes offline if it fails.

``sphinx-build -D disable_intersphinx=1`` (sphinx-astropy's switch) also
turns intersphinx off, but does not relax the nitpicky checks below.

Offline, references into other packages cannot be resolved, so the
nitpicky check ignores targets in the standard library, numpy, scipy,
astropy, ccdproc, photutils, torch and matplotlib, and Python builtins
(``nitpick_ignore_regex`` below), while still checking every other
reference, in particular those to astro_dia itself. Online, everything is
checked.
Set ``ASTRO_DIA_NITPICKY=0`` to turn the nitpicky check off altogether.
"""

import builtins
import datetime
import os
import re
import socket
import sys

# The shared astropy configuration: extensions (autodoc, numpydoc,
# automodapi, intersphinx, doctestplus, ...), theme and defaults.
from sphinx_astropy.conf.v2 import *  # noqa: F401,F403

import astro_dia

# -- Project information ------------------------------------------------------

project = "astro_dia"
author = "The astro_dia developers"
copyright = f"{datetime.datetime.now().year}, {author}"

# The full version (e.g. 0.1.dev12+g1234abc) and the short X.Y version.
release = astro_dia.__version__
version = ".".join(release.split(".")[:2])

# -- General configuration ----------------------------------------------------

exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# Graphviz (``dot``) is not a Python package and is not installed on the
# project's machines; automodapi's inheritance diagrams would need it.
automodapi_inheritance_diagram = False

# Put each public object on its own page under api/ (ignored by git).
automodapi_toctreedirnm = "api"

# numpydoc: keep the types in Parameters sections as plain text (shapes such
# as ``(M, N) ndarray`` do not name classes).
numpydoc_xref_param_type = False

# -- Intersphinx ----------------------------------------------------------------


def _online(host="docs.python.org", port=443, timeout=3.0):
    """Whether a connection to ``host`` can be opened within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_offline_setting = os.environ.get("ASTRO_DIA_OFFLINE_DOCS", "").strip().lower()
if _offline_setting in ("1", "true", "yes", "on"):
    OFFLINE = True
elif _offline_setting in ("0", "false", "no", "off"):
    OFFLINE = False
else:
    OFFLINE = not _online()

intersphinx_mapping.update({  # noqa: F405
    "python": ("https://docs.python.org/3/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "scipy": ("https://docs.scipy.org/doc/scipy/", None),
    "astropy": ("https://docs.astropy.org/en/stable/", None),
    "ccdproc": ("https://ccdproc.readthedocs.io/en/latest/", None),
    "photutils": ("https://photutils.readthedocs.io/en/stable/", None),
    "torch": ("https://pytorch.org/docs/stable/", None),
})
# Inventories this documentation does not refer to.
for _name in ("matplotlib", "h5py", "astropy.org"):
    intersphinx_mapping.pop(_name, None)  # noqa: F405

if OFFLINE:
    print("astro_dia docs: offline build, intersphinx inventories are not fetched "
          "(set ASTRO_DIA_OFFLINE_DOCS=0 to force fetching)")
    # Keep only the inventory that sphinx-astropy ships as a local file.
    for _name in list(intersphinx_mapping):  # noqa: F405
        _location = intersphinx_mapping[_name][1]  # noqa: F405
        if not (isinstance(_location, str) and os.path.isfile(_location)):
            del intersphinx_mapping[_name]  # noqa: F405

intersphinx_timeout = 10

# -- Nitpicky checks ------------------------------------------------------------

nitpicky = os.environ.get("ASTRO_DIA_NITPICKY", "1").strip().lower() not in (
    "0", "false", "no", "off")
nitpick_ignore = []
nitpick_ignore_regex = []
if OFFLINE:
    # Without the inventories, references into other packages (numpy, astropy,
    # torch, the standard library, ...) and to Python builtins cannot resolve;
    # ignore exactly those, so that a bare or misspelt name of our own (say
    # `NoiseModelWarning` written without its module) is still reported.
    _external = sorted(set(sys.stdlib_module_names)
                       | {"numpy", "scipy", "astropy", "ccdproc", "photutils", "torch",
                          "matplotlib"})
    nitpick_ignore_regex.append(
        (r"py:.*", r"(%s)(\..*)?" % "|".join(re.escape(name) for name in _external)))
    nitpick_ignore_regex.append(
        (r"py:.*", r"(%s)" % "|".join(re.escape(name) for name in dir(builtins)
                                     if not name.startswith("_"))))

# -- Options for HTML output ----------------------------------------------------

html_title = f"{project} v{release}"
htmlhelp_basename = project + "doc"
html_theme_options = dict(html_theme_options)  # noqa: F405 (from the v2 star-import)
html_theme_options.update({
    "navigation_with_keys": False,
})

# -- Options for the other builders ------------------------------------------

latex_documents = [("index", project + ".tex", project + " documentation", author,
                    "manual")]
man_pages = [("index", project.lower(), project + " documentation", [author], 1)]
