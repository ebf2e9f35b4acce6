"""The name of the ``astro-dia`` program and its exit statuses, shared by the commands."""

__all__ = []

PROG = "astro-dia"

#: Exit status for bad input, as argparse uses.
EXIT_USAGE = 2

#: Exit status of ``subtract`` when some targets could not be differenced.
EXIT_FRAMES_FAILED = 1

#: Exit status after Ctrl-C, as shells report it.
EXIT_INTERRUPTED = 130
