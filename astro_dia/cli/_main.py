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

Errors in the input are reported on one line, ``astro-dia: error:
<message>``, on standard error, with exit status 2 (with ``--verbose``,
after the traceback). ``subtract`` goes on past a target it cannot
difference, reports it on one such line naming the file, and exits with
status 1 at the end.

``diff`` and ``subtract`` write result files (`astro_dia.io.write_result`):
the difference image is their primary HDU, so ``CCDData.read`` reads it,
and ``photometry`` and ``detect`` read the whole fit from them. ``diff``
lives in `astro_dia._cli_diff`, ``detect`` in `astro_dia._cli_detect`, and
the fit options of ``diff`` and ``subtract`` in `astro_dia._cli_options`.
"""

import argparse
import importlib.util
import contextlib
import logging
import os
import sys
import traceback

from astropy.units import UnitsError

from ._detect import add_detect_command
from ._diff import add_diff_command
from ._fit_options import add_fit_options, make_imager
from ._tables import add_file_and_time, check_out
from .._package_version import version as __version__
from ..demo import DEFAULT_SEED, run_demo

__all__ = ["main", "run", "build_parser", "format_report"]

PROG = "astro-dia"

#: Exit status for bad input, as argparse uses.
EXIT_USAGE = 2

#: Exit status of ``subtract`` when some targets could not be differenced.
EXIT_FRAMES_FAILED = 1

#: Exit status after Ctrl-C, as shells report it.
EXIT_INTERRUPTED = 130

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

    demo = commands.add_parser(
        "demo", help="difference a simulated star-field pair and report the fit",
        description="Simulate a crowded star field seen by a CCD twice: a stacked reference "
                    "and a target with a wider PSF, a photometric scale factor P = 0.9, "
                    "a sky difference B0 = 210 adu and a sub-pixel shift. Fit the kernel and "
                    "background, compare them with the truth, and write the difference "
                    "image (FITS) and a figure (PNG, if matplotlib is installed).")
    demo.add_argument("--out", metavar="DIR", default="astro_dia_demo",
                      help="directory for difference.fits and demo.png, created if needed; "
                           "existing files are overwritten (default: %(default)s)")
    demo.add_argument("--size", metavar="N", type=int, default=256,
                      help="side of the square simulated images, in pixels (default: %(default)s)")
    demo.add_argument("--kernel-size", metavar="K", type=int, default=15,
                      help="odd side of the square convolution kernel, in pixels "
                           "(default: %(default)s)")
    demo.add_argument("--seed", metavar="S", type=int, default=DEFAULT_SEED,
                      help="random seed of the simulation, a non-negative integer "
                           "(default: %(default)s)")
    demo.add_argument("--device", metavar="D", default="auto",
                      help="torch device: 'auto' (CUDA when present, else the CPU), 'cpu', "
                           "'cuda' or 'cuda:N' (default: %(default)s)")
    demo.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                      help="floating-point precision of the fit (default: %(default)s)")
    demo.add_argument("--no-plot", dest="plot", action="store_false",
                      help="do not write the PNG figure")
    demo.set_defaults(handler=_run_demo_command)

    add_diff_command(commands)

    subtract = commands.add_parser(
        "subtract", help="difference many target FITS images against one reference",
        description="Fit, for each TARGET, the kernel and background that turn REFERENCE "
                    "into it (FITS images of one field on the same pixel grid, e.g. "
                    "calibrated by ccdproc), and write DIR/<target>_diff.fits: the "
                    "difference image with its uncertainty and mask, the kernel, the "
                    "background coefficients and the fit's results (read it with "
                    "astropy's CCDData.read or astro_dia.io.read_result). A target that "
                    "cannot be differenced is reported and skipped; the exit status is "
                    "then 1. The input files are only read.",
        epilog="Example: astro-dia subtract ref.fits night1/*.fits --out diffs "
               "--kernel-size 15 --plots")
    subtract.add_argument("reference", metavar="REFERENCE", help="FITS file of the reference")
    subtract.add_argument("targets", metavar="TARGET", nargs="+",
                          help="FITS files of the targets")
    subtract.add_argument("--out", metavar="DIR", required=True,
                          help="directory for the results, created if needed")
    subtract.add_argument("--overwrite", action="store_true",
                          help="replace result files that exist (never an input file)")
    subtract.add_argument("--plots", action="store_true",
                          help="also write DIR/<target>_diff.png, a diagnostic figure "
                               "(needs matplotlib)")
    where = subtract.add_mutually_exclusive_group()
    where.add_argument("--workers", metavar="N", type=int, default=1,
                       help="with N >= 2, run on a local dask cluster of N worker "
                            "processes (needs dask.distributed) (default: %(default)s, "
                            "in this process)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the dask cluster of this scheduler, e.g. "
                            "tcp://10.0.0.1:8786; its workers must see the same paths")
    add_fit_options(subtract)
    subtract.set_defaults(handler=_run_subtract_command)

    photometry = commands.add_parser(
        "photometry", help="measure differential fluxes on difference images",
        description="Measure, on each RESULT (a result file of 'astro-dia diff' or "
                    "'astro-dia subtract', <target>_diff.fits), the differential flux of "
                    "the sources listed in TABLE by PSF photometry with the target PSF (the "
                    "reference PSF convolved with the fitted kernel) or by aperture sums, "
                    "put the fluxes on the reference's photometric scale (divided by P), "
                    "and write one long table: a row per source and file, with the "
                    "observation time from DATE-OBS or MJD-OBS when the header has it.",
        epilog="Example: astro-dia photometry diffs/*_diff.fits --positions stars.ecsv "
               "--fwhm 3.2 --out lightcurves.ecsv")
    photometry.add_argument("results", metavar="RESULT", nargs="+",
                            help="result files written by 'astro-dia diff' or "
                                 "'astro-dia subtract'")
    photometry.add_argument("--positions", metavar="TABLE", required=True,
                            help="table of the sources (any format astropy reads, e.g. "
                                 "ECSV or CSV) with columns x and y (0-based pixels) or ra "
                                 "and dec (degrees, with the images' WCS); an id column is "
                                 "kept")
    photometry.add_argument("--fwhm", metavar="F", type=float, required=True,
                            help="FWHM of the reference PSF, in pixels")
    photometry.add_argument("--moffat-beta", metavar="B", type=float,
                            help="use a Moffat reference PSF with this beta instead of a "
                                 "Gaussian")
    photometry.add_argument("--aperture", metavar="R", type=float,
                            help="aperture photometry of radius R pixels (corrected to the "
                                 "total flux with the target PSF) instead of PSF photometry")
    photometry.add_argument("--free-positions", action="store_true",
                            help="fit the positions too (PSF photometry; default: fixed)")
    photometry.add_argument("--out", metavar="FILE", default="photometry.ecsv",
                            help="table to write; its format follows the extension "
                                 "(default: %(default)s)")
    photometry.add_argument("--overwrite", action="store_true",
                            help="replace FILE if it exists (never an input file)")
    photometry.set_defaults(handler=_run_photometry_command)
    add_detect_command(commands)
    return parser


def _run_demo_command(arguments):
    summary = run_demo(arguments.out, size=arguments.size, kernel_size=arguments.kernel_size,
                       seed=arguments.seed, device=arguments.device, dtype=arguments.dtype,
                       plot=arguments.plot)
    print(format_report(summary))
    return 0


def _run_subtract_command(arguments):
    from ..batch import fit_many

    for path in [arguments.reference] + arguments.targets:
        if not os.path.isfile(path):
            what = "reference" if path == arguments.reference else "target"
            raise OSError(f"the {what} file {path!r} does not exist")
    if arguments.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {arguments.workers}")
    if arguments.plots:
        if importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plots needs matplotlib (pip install matplotlib)")
    imager = make_imager(arguments)
    cluster = {}
    if arguments.scheduler is not None:
        cluster = {"scheduler": arguments.scheduler}
    elif arguments.workers > 1:
        cluster = {"workers": arguments.workers}
    try:
        outcomes = fit_many(imager, arguments.reference, arguments.targets,
                            output_dir=arguments.out, overwrite=arguments.overwrite,
                            plots=arguments.plots, unit=arguments.unit, keep_results=False,
                            progress=sys.stderr, **cluster)
    except ImportError as exc:  # dask asked for but not installed
        raise ValueError(str(exc)) from exc
    failed = [outcome for outcome in outcomes if not outcome.ok]
    print(_format_subtract_report(outcomes, imager, arguments.out))
    for outcome in failed:
        print(f"{PROG}: error: {outcome.name}: {outcome.error}",
              file=sys.stderr)
    return EXIT_FRAMES_FAILED if failed else 0


def _read_positions(path):
    """The ``--positions`` table: pixel columns, or ra/dec made into a SkyCoord."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    if not os.path.isfile(path):
        raise OSError(f"the positions file {path!r} does not exist")
    try:
        table = Table.read(path)
    except Exception as exc:  # any reader failure is bad input
        raise ValueError(f"cannot read the positions file {path!r} as a table: {exc}") from exc
    names = {name.lower(): name for name in table.colnames}
    if "x" not in names and "ra" in names and "dec" in names:
        return SkyCoord(table[names["ra"]], table[names["dec"]],
                        unit=(u.deg if table[names["ra"]].unit is None else None))
    return table


def _run_photometry_command(arguments):
    from astropy.table import vstack

    from ..result.io import read_result
    from ..photometry import (aperture_photometry_difference, differential_photometry,
                              gaussian_psf, moffat_psf)

    out = check_out(arguments.out, [path for path in arguments.results + [arguments.positions]
                                    if os.path.exists(path)], arguments.overwrite)
    positions = _read_positions(arguments.positions)
    psf = (gaussian_psf(arguments.fwhm) if arguments.moffat_beta is None
           else moffat_psf(arguments.fwhm, arguments.moffat_beta))
    tables = []
    for path in arguments.results:
        try:
            result = read_result(path)
        except (OSError, ValueError) as exc:
            raise type(exc)(f"{path}: {exc}") from exc
        if arguments.aperture is not None:
            table = aperture_photometry_difference(result, positions, arguments.aperture, psf)
        else:
            table = differential_photometry(result, positions, psf,
                                            fixed_positions=not arguments.free_positions)
        table.meta.clear()
        add_file_and_time(table, path, result)
        tables.append(table)
    combined = vstack(tables, metadata_conflicts="silent")
    combined.write(out, overwrite=arguments.overwrite)
    flagged = int((combined["flags"] != 0).sum())
    print(f"astro_dia {__version__} photometry: {len(arguments.results)} files x "
          f"{len(tables[0])} sources, {flagged} rows flagged; table in {out}")
    return 0


def _format_subtract_report(outcomes, imager, out_dir):
    """
    Format the outcomes of ``astro-dia subtract`` as a short table.

    Parameters
    ----------
    outcomes : list of `~astro_dia.batch.FrameOutcome`
    imager : `~astro_dia.DifferenceImager`
    out_dir : str

    Returns
    -------
    report : str
        A header line, one line per target, and a closing line, without a
        trailing newline.
    """
    width = max(len(outcome.name) for outcome in outcomes)
    lines = [f"astro_dia {__version__} subtract: {len(outcomes)} targets, "
             f"{imager.kernel_size} x {imager.kernel_size} kernel, {imager.solver} solver",
             f"  {'target':<{width}}  {'P':>9} {'sigma_P':>9}  {'B0':>10} {'sigma_B0':>9}"
             "  unit      status"]
    for outcome in outcomes:
        if outcome.ok:
            status = ("converged" if outcome.converged else "NOT converged") + \
                f", {outcome.n_iterations} iterations"
            lines.append(
                f"  {outcome.name:<{width}}  {outcome.scale_factor:9.5f} "
                f"{outcome.scale_factor_err:9.5f}  {outcome.background_offset:10.3f} "
                f"{outcome.background_offset_err:9.3f}  {outcome.unit:<8}  {status}")
        else:
            lines.append(f"  {outcome.name:<{width}}  FAILED (see the error below)")
    n_failed = sum(not outcome.ok for outcome in outcomes)
    lines.append(f"  {len(outcomes) - n_failed} differenced, {n_failed} failed; results in "
                 f"{os.path.abspath(out_dir)}")
    return "\n".join(lines)


def format_report(summary):
    """
    Format the result of `astro_dia.demo.run_demo` as a short human-readable report.

    Parameters
    ----------
    summary : dict
        As returned by `~astro_dia.demo.run_demo`.

    Returns
    -------
    report : str
        Several lines, without a trailing newline.
    """
    ny, nx = summary["shape"]
    size = summary["kernel_size"]
    unit = summary["unit"]
    status = "converged" if summary["converged"] else "NOT converged"
    if summary["plot_path"] is not None:
        plot = summary["plot_path"]
    else:
        plot = f"not written ({summary['plot_note']})"
    lines = [
        f"astro_dia {__version__} demo: {ny} x {nx} simulated star field, {size} x {size} "
        f"kernel, seed {summary['seed']}, {summary['device']}, {summary['dtype']}",
        f"  scale factor P     fitted {summary['scale_factor']:.5f}   "
        f"true {summary['scale_factor_true']:.5f}",
        f"  background B0      fitted {summary['background_offset']:.3f} {unit}   "
        f"true {summary['background_offset_true']:.3f} {unit}",
        f"  std of D / sigma   {summary['normalized_residual_std']:.4f}   "
        "(1 when the noise model is right)",
        f"  iterations         {summary['n_iterations']} ({status})",
        f"  time               {summary['fit_time']:.2f} s fit, "
        f"{summary['total_time']:.2f} s with simulation and output",
        f"  difference image   {summary['difference_path']}",
        f"  figure             {plot}",
    ]
    return "\n".join(lines)


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
