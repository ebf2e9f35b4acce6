"""
The ``astro-dia detect`` command: candidates of change on result files.

::

    astro-dia detect RESULT [RESULT ...] [--threshold T] [--fwhm F [--moffat-beta B]]
                     [--out FILE] [--cutouts DIR] [--size N] [--overwrite]

Each RESULT is a file of `~astro_dia.DifferenceResult.write` (or ``astro-dia
diff`` or ``astro-dia subtract``); `~astro_dia.detection.find_transients`
runs on each and the candidates go into one long table, with the file and
observation time of each row. With ``--cutouts`` the stamps of each file's
candidates are written to ``DIR/<file>_cutouts.fits``.
"""

import os

from ._tables import add_file_and_time, check_out
from .._package_version import version as __version__

__all__ = []


def add_detect_command(commands):
    """Add the ``detect`` sub-command to the parser's sub-commands."""
    detect = commands.add_parser(
        "detect", help="find transients and variables on difference images",
        description="Find, on each RESULT (a result file of 'astro-dia diff', "
                    "'astro-dia subtract' or DifferenceResult.write), the peaks of the "
                    "matched-filter significance image above the threshold, of either "
                    "sign, measure them by PSF photometry, flag edge, masked, dipole, "
                    "saturated, extended and sharp ones (cosmic rays, hot pixels) and the "
                    "residuals of bright stars' cores, and "
                    "write one long table: a row per candidate and file, with the "
                    "observation time from DATE-OBS or MJD-OBS when the header has it.",
        epilog="Example: astro-dia detect diffs/*_diff.fits --threshold 5 --out "
               "candidates.ecsv --cutouts stamps")
    detect.add_argument("results", metavar="RESULT", nargs="+",
                        help="result files written by 'astro-dia diff', 'astro-dia "
                             "subtract' or DifferenceResult.write")
    detect.add_argument("--threshold", metavar="T", type=float, default=5.0,
                        help="detection threshold on |S/N| (default: %(default)s)")
    detect.add_argument("--fwhm", metavar="F", type=float,
                        help="FWHM of the reference PSF in pixels (default: the target "
                             "PSF's FWHM is measured on the stars of the model image)")
    detect.add_argument("--moffat-beta", metavar="B", type=float,
                        help="with --fwhm, a Moffat reference PSF with this beta")
    detect.add_argument("--out", metavar="FILE", default="candidates.ecsv",
                        help="table to write; its format follows the extension "
                             "(default: %(default)s)")
    detect.add_argument("--cutouts", metavar="DIR",
                        help="write the stamps of each file's candidates to "
                             "DIR/<file>_cutouts.fits")
    detect.add_argument("--size", metavar="N", type=int, default=21,
                        help="side of the stamps in pixels (default: %(default)s)")
    detect.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (never an input file)")
    detect.set_defaults(handler=run_detect_command)
    return detect


def _reference_psf(arguments):
    from ..photometry import gaussian_psf, moffat_psf

    if arguments.fwhm is None:
        if arguments.moffat_beta is not None:
            raise ValueError("--moffat-beta needs --fwhm")
        return None
    if arguments.moffat_beta is None:
        return gaussian_psf(arguments.fwhm)
    return moffat_psf(arguments.fwhm, arguments.moffat_beta)


def _cutout_path(directory, path):
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(directory, f"{stem}_cutouts.fits")


def run_detect_command(arguments):
    """Run ``astro-dia detect``: returns the exit status."""
    from astropy.table import vstack

    from ..detection import candidate_cutouts, find_transients, write_cutouts
    from ..result.io import read_result

    out = check_out(arguments.out, arguments.results, arguments.overwrite)
    if arguments.cutouts:
        os.makedirs(arguments.cutouts, exist_ok=True)
    psf = _reference_psf(arguments)
    tables = []
    for path in arguments.results:
        try:
            result = read_result(path)
            table = find_transients(result, arguments.threshold, reference_psf=psf)
        except (OSError, ValueError) as exc:
            raise type(exc)(f"{path}: {exc}") from exc
        if arguments.cutouts:
            write_cutouts(candidate_cutouts(result, table, arguments.size, reference_psf=psf),
                          _cutout_path(arguments.cutouts, path), overwrite=arguments.overwrite)
        meta = dict(table.meta)
        table.meta.clear()
        if "skycoord" in table.colnames:   # one table over files with and without a WCS
            table["ra"] = table["skycoord"].icrs.ra
            table["dec"] = table["skycoord"].icrs.dec
            table.remove_column("skycoord")
        add_file_and_time(table, path, result)
        tables.append(table)
    combined = vstack(tables, metadata_conflicts="silent")
    combined.meta.update({"threshold": meta["threshold"]})
    combined.write(out, overwrite=arguments.overwrite)
    clean = int((combined["flags"] == 0).sum())
    print(f"astro_dia {__version__} detect: {len(combined)} candidates in "
          f"{len(arguments.results)} files ({clean} unflagged), |S/N| >= "
          f"{arguments.threshold:g}; table in {arguments.out}"
          + (f", stamps in {arguments.cutouts}" if arguments.cutouts else ""))
    return 0
