"""
The ``astro-dia subtract`` command: many targets against one reference.

::

    astro-dia subtract REFERENCE TARGET [TARGET ...] --out DIR [--overwrite]
                       [--plots] [--workers N | --scheduler ADDRESS] [the fit options of diff]

It runs `astro_dia.batch.fit_many`, in this process or on a dask cluster,
writes a result file per target, prints a table of the outcomes, and goes
on past a target it cannot difference: that target is reported on one
line naming the file, and the exit status is then 1.
"""

import importlib.util
import os
import sys

from ._fit_options import add_fit_options, make_imager
from ._status import EXIT_FRAMES_FAILED, PROG
from .._package_version import version as __version__

__all__ = []


def add_subtract_command(commands):
    """Add the ``subtract`` sub-command to the parser's sub-commands."""
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
