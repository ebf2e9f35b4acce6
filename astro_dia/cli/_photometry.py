"""
The ``astro-dia photometry`` command: differential fluxes on result files.

::

    astro-dia photometry RESULT [RESULT ...] --positions TABLE --fwhm F
                         [--moffat-beta B | --epsf REFERENCE [--unit U] [--saturation L]] [--aperture R] [--free-positions] [--out FILE]
                         [--overwrite]

PSF photometry with the target PSF, or aperture sums, of the sources of a
table on each result file, written as one long table (a row per source and
file) with the ``file`` and ``time`` columns of `astro_dia.cli._tables`.
"""

import os

from ._tables import add_file_and_time, check_out
from .._package_version import version as __version__

__all__ = []


def add_photometry_command(commands):
    """Add the ``photometry`` sub-command to the parser's sub-commands."""
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
    photometry.add_argument("--epsf", metavar="REFERENCE",
                            help="use an effective PSF built (photutils EPSFBuilder) from the "
                                 "bright isolated stars of this reference FITS file (found with "
                                 "--fwhm) instead of a Gaussian or Moffat")
    photometry.add_argument("--unit", metavar="U",
                            help="unit of the --epsf reference when its header has no BUNIT")
    photometry.add_argument("--saturation", metavar="L", type=float,
                            help="with --epsf, leave out stars peaking above 90%% of this "
                                 "level")
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


def _reference_psf(arguments):
    """The reference PSF the options ask for: an ePSF, a Moffat or a Gaussian."""
    from ..photometry import build_reference_psf, find_psf_stars, gaussian_psf, moffat_psf
    from ..photometry._psf_stars import epsf_size
    from ..result.io import read_image

    if arguments.epsf is None:
        return (gaussian_psf(arguments.fwhm) if arguments.moffat_beta is None
                else moffat_psf(arguments.fwhm, arguments.moffat_beta))
    if arguments.moffat_beta is not None:
        raise ValueError("--epsf and --moffat-beta exclude each other: the ePSF has its own "
                         "profile")
    reference = read_image(arguments.epsf, unit=arguments.unit, what="--epsf reference")
    stars = find_psf_stars(reference, arguments.fwhm, saturation=arguments.saturation)
    if len(stars) < 5:
        raise ValueError(f"only {len(stars)} bright isolated unsaturated stars found in "
                         f"{arguments.epsf!r} for the ePSF (5 or more needed); check --fwhm "
                         "and --saturation, or use a Gaussian (no --epsf)")
    return build_reference_psf(reference, stars, size=epsf_size(arguments.fwhm))


def _run_photometry_command(arguments):
    from astropy.table import vstack

    from ..result.io import read_result
    from ..photometry import aperture_photometry_difference, differential_photometry

    out = check_out(arguments.out, [path for path in arguments.results + [arguments.positions]
                                    if os.path.exists(path)], arguments.overwrite)
    positions = _read_positions(arguments.positions)
    psf = _reference_psf(arguments)
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
