"""pytest configuration for the documentation pages.

pytest runs the examples in the ``*.rst`` pages here (``--doctest-rst`` in
setup.cfg). The Sphinx configuration and the build products are not tests:
``conf.py`` imports Sphinx, and ``_build/`` and ``api/`` hold generated
copies of the pages and of the docstrings.
"""

collect_ignore = ["conf.py"]
collect_ignore_glob = ["_build/*", "api/*"]
