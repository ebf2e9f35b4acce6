"""Run the ``astro-dia`` command as ``python -m astro_dia``."""

from .cli import run

__all__ = []

if __name__ == "__main__":
    run()
