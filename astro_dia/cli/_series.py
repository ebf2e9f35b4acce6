"""
The ``astro-dia series`` command: a night of frames to light curves.

::

    astro-dia series FRAME [FRAME ...] --out DIR [--reference FILE]
                     [--reference-frames N] [--registration {auto,wcs,stars}]
                     [--workers N] [--threshold T] [--max-stars N] [--no-plots]
                     [--overwrite] [the fit options of diff]

It runs `astro_dia.pipeline.process_series` and prints where the outputs
are, the frames that failed (each on one line; the exit status is then 1)
and the most variable sources.
"""

import sys

from ._fit_options import add_fit_options, make_imager
from ._status import EXIT_FRAMES_FAILED, PROG

__all__ = []


def add_series_command(commands):
    """Add the ``series`` sub-command to the parser's sub-commands."""
    series = commands.add_parser(
        "series", help="register, build a reference, difference and measure a night of frames",
        description="Register every FRAME (calibrated FITS frames of one field, each with "
                    "DATE-OBS or MJD-OBS; they need not be aligned) to a reference built "
                    "from the sharpest of them (or --reference), difference each against "
                    "it, find what changed across the epochs and measure light curves of "
                    "the reference's stars and of the candidates by PSF photometry with "
                    "the reference's effective PSF. Writes DIR/reference.fits, "
                    "DIR/registered/, DIR/differences/ (a result file per frame), "
                    "DIR/frames.ecsv, DIR/candidates.ecsv, DIR/light_curves.ecsv (a row "
                    "per source and epoch; flux on the reference's scale, "
                    "reference_flux for totals), DIR/variability.ecsv and "
                    "DIR/light_curves.png. A frame that fails is reported and the rest "
                    "go on; the exit status is then 1.",
        epilog="Example: astro-dia series night/*.fits --out night_dia --unit adu "
               "--reference-frames 10 --workers 2")
    series.add_argument("frames", metavar="FRAME", nargs="+", help="FITS files of the frames")
    series.add_argument("--out", metavar="DIR", required=True,
                        help="directory for the outputs, created if needed")
    series.add_argument("--reference", metavar="FILE",
                        help="use this reference (on its own grid) instead of building one")
    series.add_argument("--reference-frames", metavar="N", type=int,
                        help="combine the N sharpest frames into the reference (default: "
                             "all within 1.25 times the best seeing)")
    series.add_argument("--registration", choices=("auto", "wcs", "stars"), default="auto",
                        help="registration method (default: %(default)s)")
    series.add_argument("--workers", metavar="N", type=int, default=1,
                        help="with N >= 2, difference on a local dask cluster of N worker "
                             "processes (default: %(default)s)")
    series.add_argument("--threshold", metavar="T", type=float, default=5.0,
                        help="detection threshold on |S/N| at each epoch (default: "
                             "%(default)s)")
    series.add_argument("--max-stars", metavar="N", type=int, default=300,
                        help="light curves of at most N reference stars, the brightest "
                             "(default: %(default)s)")
    series.add_argument("--no-plots", action="store_true",
                        help="do not plot the most variable light curves")
    series.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run (never an input file)")
    add_fit_options(series)
    series.set_defaults(handler=_run_series_command)


def _run_series_command(arguments):
    from ..pipeline import process_series

    if arguments.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {arguments.workers}")
    imager = make_imager(arguments)
    result = process_series(
        arguments.frames, arguments.out, reference=arguments.reference, imager=imager,
        unit=arguments.unit, n_reference_frames=arguments.reference_frames,
        registration=arguments.registration, saturation=arguments.saturation,
        workers=arguments.workers if arguments.workers > 1 else None,
        threshold=arguments.threshold, max_sources=arguments.max_stars,
        plots=not arguments.no_plots, overwrite=arguments.overwrite, progress=sys.stderr.isatty())
    frames = result.frames
    failed = [row for row in frames if row["error"]]
    print(f"{PROG} series: {len(frames)} frames, {len(frames) - len(failed)} differenced, "
          f"{len(failed)} failed; reference of {result.reference.header.get('NCOMBINE', 1)} "
          f"frames; {len(result.candidates)} candidates; {len(result.variability)} light "
          f"curves ({result.psf_kind} PSF); outputs in {result.output_dir}")
    print("most variable:")
    for row in result.variability[:5]:
        print(f"  {row['kind']:<9} {row['id']:5d}  chi2/dof {row['chi2_dof']:9.1f} "
              f"({row['chi2_robust']:.1f} without its worst epoch)  {row['n_good']} epochs")
    for row in failed:
        print(f"{PROG}: error: {row['name']}: {row['error']}", file=sys.stderr)
    return EXIT_FRAMES_FAILED if failed else 0
