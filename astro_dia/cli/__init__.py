"""
The ``astro-dia`` command: one module per command.

Owns the parser and the error handling (``_main``), the program's name and
exit statuses (``_status``), the commands ``diff`` (``_diff``), ``subtract``
(``_subtract``), ``photometry`` (``_photometry``), ``detect`` (``_detect``)
and ``demo`` (``_demo``), the fit options of ``diff`` and ``subtract``
(``_fit_options``) and what ``photometry`` and ``detect`` share
(``_tables``).
"""

from ._demo import format_report
from ._main import build_parser, main, run

__all__ = ["main", "run", "build_parser", "format_report"]
