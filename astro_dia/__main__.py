"""Run the ``astro-dia`` command as ``python -m astro_dia``."""

import sys

from .cli import main

__all__ = []

if __name__ == "__main__":
    sys.exit(main())
