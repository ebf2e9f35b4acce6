"""
The ``astro-dia`` command.

::

    astro-dia --version
    astro-dia [-v] demo [--out DIR] [--size N] [--kernel-size K] [--seed S]
                   [--device D] [--dtype {float32,float64}] [--no-plot]
    astro-dia [-v] diff REFERENCE TARGET [--out FILE] [--overwrite] [--kernel-size K]
                   [--noise-model M] [--gain G] [--read-noise RN] [--em-gain E]
                   [--flat F] [--sky S] [--unit U] [--saturation L] [--clip SIGMA]
                   [--reference-noise] [--regularization LAMBDA] [--background-degree D]
                   [--kernel-degree D] [--constant-scale] [--loss L] [--solver S]
                   [--device D] [--dtype {float32,float64}]
    astro-dia [-v] subtract REFERENCE TARGET [TARGET ...] --out DIR [--overwrite]
                   [--plots] [--workers N | --scheduler ADDRESS] [the fit options of diff]
    astro-dia [-v] photometry RESULT [RESULT ...] --positions TABLE --fwhm F
                   [--moffat-beta B] [--aperture R] [--free-positions] [--out FILE]
                   [--overwrite]
    astro-dia [-v] detect RESULT [RESULT ...] [--threshold T] [--fwhm F] [--out FILE]
                   [--cutouts DIR] [--size N] [--overwrite]
    astro-dia [-v] series FRAME [FRAME ...] --out DIR [--reference FILE]
                   [--reference-frames N] [--registration M] [--workers N] [--threshold T]
                   [--max-stars N] [--no-plots] [--overwrite] [the fit options of diff]

The command runs torch on one thread unless ``ASTRO_DIA_THREADS`` (or
``OMP_NUM_THREADS``) says otherwise (`set_threads`).

Errors in the input are reported on one line, ``astro-dia: error:
<message>``, on standard error, with exit status 2 (with ``--verbose``,
after the traceback). ``subtract`` goes on past a target it cannot
difference, reports it on one such line naming the file, and exits with
status 1 at the end.

``diff`` and ``subtract`` write result files (`astro_dia.io.write_result`):
the difference image is their primary HDU, so ``CCDData.read`` reads it,
and ``photometry`` and ``detect`` read the whole fit from them. ``diff``
lives in `astro_dia.cli._diff`, ``detect`` in `astro_dia.cli._detect`, and
the fit options of ``diff`` and ``subtract`` in `astro_dia.cli._fit_options`;
``demo``, ``subtract`` and ``photometry`` have a module each too
(`astro_dia.cli._demo`, `astro_dia.cli._subtract`, `astro_dia.cli._photometry`).
This module owns the parser and the one-line errors; the program's name and
exit statuses are in `astro_dia.cli._status`.
"""

import argparse
import contextlib
import logging
import os
import sys
import traceback

from astropy.units import UnitsError

from ._demo import add_demo_command
from ._detect import add_detect_command
from ._diff import add_diff_command
from ._photometry import add_photometry_command
from ._series import add_series_command
from ._status import EXIT_INTERRUPTED, EXIT_USAGE, PROG
from ._subtract import add_subtract_command
from .._package_version import version as __version__

__all__ = ["main", "run", "build_parser", "set_threads"]

# Errors that mean "the input was not usable", reported without a traceback.
# astropy.units.UnitsError does not derive from ValueError, so it is listed.
_INPUT_ERRORS = (ValueError, TypeError, OSError, UnitsError)


class _UsageError(Exception):
    """A command-line parsing error, raised instead of argparse's exit."""


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises `_UsageError` instead of printing usage and exiting."""

    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _one_line(message):
    return " ".join(str(message).split())


def set_threads():
    """
    The command's torch threads: one, unless the environment says otherwise.

    On torch's default of one thread per core, a fit beside one other busy
    process took 3 to 20 times as long as alone on a 2-core machine; on one
    thread 1.0 times, for 1.1-1.4 times the time on an idle machine (see the
    Threads section of the performance page). ``ASTRO_DIA_THREADS=N`` sets
    N threads; with ``OMP_NUM_THREADS`` set and no ``ASTRO_DIA_THREADS``,
    torch's own choice from it is kept. The library itself never changes
    torch's settings: a program that imports it chooses.
    """
    import torch

    value = os.environ.get("ASTRO_DIA_THREADS")
    if value is None:
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(1)
        return
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"ASTRO_DIA_THREADS must be a whole number of threads (1 or more), "
                         f"got {value!r}")
    torch.set_num_threads(threads)


def build_parser():
    """
    Build the argument parser of the ``astro-dia`` command.

    Returns
    -------
    parser : `argparse.ArgumentParser`
        Its ``error`` method raises an exception rather than exiting; use
        `main` to run the command.
    """
    parser = _ArgumentParser(
        prog=PROG,
        description="Difference Image Analysis of CCD and EMCCD images on PyTorch. "
                    "Fits a pixel convolution kernel and a differential background that "
                    "turn a reference image into a target image.",
        epilog="Run 'astro-dia demo' to try it on a simulated star field.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the astro_dia version and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log the steps of the run to standard error, and show the "
                             "traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add_demo_command(commands)
    add_diff_command(commands)
    add_subtract_command(commands)
    add_photometry_command(commands)
    add_detect_command(commands)
    add_series_command(commands)
    return parser


def main(argv=None):
    """
    Run the ``astro-dia`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments, without the program name; ``sys.argv[1:]`` by
        default.

    Returns
    -------
    status : int
        0 on success (and for ``--help`` and ``--version``), 2 for bad
        input, reported on one line on standard error, 130 if interrupted.
    """
    parser = build_parser()
    try:
        arguments = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    with _verbose_logging(arguments.verbose):
        try:
            set_threads()
            return arguments.handler(arguments)
        except _INPUT_ERRORS as exc:
            if arguments.verbose:
                traceback.print_exc(file=sys.stderr)
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def run():
    """
    The console entry point: `main`, then leave the interpreter at once.

    A process that has imported torch spends about half a second in the
    interpreter's shutdown, finalising torch's modules, after the command
    has finished. By the time `main` returns every file the command wrote
    is closed; the log handlers and the standard streams are flushed here,
    and the process exits with `os._exit` and `main`'s status. An exception
    that `main` does not handle leaves through the ordinary shutdown, with
    its traceback.
    """
    status = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe or stream: nothing to flush to
            pass
    os._exit(status if isinstance(status, int) else 0)


@contextlib.contextmanager
def _verbose_logging(verbose):
    """Send astro_dia's INFO log records to standard error for the duration, if asked."""
    if not verbose:
        yield
        return
    logger = logging.getLogger("astro_dia")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(name)s: %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
