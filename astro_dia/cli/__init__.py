"""
The ``astro-dia`` command: one module per command.

Owns the parser, the error handling and the exit statuses (``_main``), the
commands ``diff`` (``_diff``), ``subtract`` (``_subtract``), ``photometry``
(``_photometry``), ``detect`` (``_detect``) and ``demo`` (``_demo``), the
fit options of ``diff`` and ``subtract`` (``_fit_options``) and what
``photometry`` and ``detect`` share (``_tables``).
"""

from ._main import build_parser, format_report, main, run

__all__ = ["main", "run", "build_parser", "format_report"]
