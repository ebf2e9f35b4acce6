"""
The ``astro-dia diff`` command: one target against one reference.

::

    astro-dia diff REFERENCE TARGET [--out FILE] [--overwrite] [the fit options]

It writes a result file (`astro_dia.io.write_result`), as ``astro-dia
subtract`` does for each target: its primary HDU is the difference image
with its MASK and UNCERT extensions, so ``CCDData.read`` reads it as
before, and the kernel, background coefficients, model and fit results
follow, so that ``astro-dia detect`` and ``astro-dia photometry`` read the
whole fit. The fit options are those of `astro_dia.cli._fit_options`.
"""

import os

from ._fit_options import add_fit_options, make_imager
from .._package_version import version as __version__

__all__ = []


def add_diff_command(commands):
    """Add the ``diff`` sub-command to the parser's sub-commands."""
    diff = commands.add_parser(
        "diff", help="difference a target FITS image against a reference FITS image",
        description="Fit the kernel and background that turn REFERENCE into TARGET (two "
                    "FITS images of one field on the same pixel grid) and write the result "
                    "file: the difference image with its uncertainty and mask (what "
                    "astropy's CCDData.read reads from it), then the kernel, the background "
                    "coefficients, the model and the fit's results as extensions (read "
                    "them with astro_dia.io.read_result), so that 'astro-dia detect' and "
                    "'astro-dia photometry' run on it. The input files are only read. "
                    "Detector settings not given here are read from the target's header "
                    "(GAIN, RDNOISE, ...).",
        epilog="Example: astro-dia diff ref.fits night1.fits --out night1_diff.fits "
               "--flat 1 --saturation 65000, then astro-dia detect night1_diff.fits")
    diff.add_argument("reference", metavar="REFERENCE", help="FITS file of the reference")
    diff.add_argument("target", metavar="TARGET", help="FITS file of the target")
    diff.add_argument("--out", metavar="FILE", default="difference.fits",
                      help="result file to write, the difference image first "
                           "(default: %(default)s)")
    diff.add_argument("--overwrite", action="store_true",
                      help="replace FILE if it exists (never an input file)")
    add_fit_options(diff)
    diff.set_defaults(handler=run_diff_command)
    return diff


def _read_image(path, unit, what):
    """Read one FITS image as CCDData; the unit comes from BUNIT or ``--unit``."""
    from astropy.io import fits
    from astropy.nddata import CCDData

    if not os.path.isfile(path):
        raise OSError(f"the {what} file {path!r} does not exist")
    header = fits.getheader(path)
    if unit is None and "BUNIT" not in header:
        raise ValueError(f"the {what} file {path!r} has no BUNIT keyword; give its unit "
                         "with --unit (e.g. --unit adu)")
    return CCDData.read(path, unit=unit)


def run_diff_command(arguments):
    """Run ``astro-dia diff``: returns the exit status."""
    out = os.path.abspath(arguments.out)
    for path in (arguments.reference, arguments.target):
        if os.path.exists(path) and os.path.abspath(path) == out:
            raise ValueError(f"--out {arguments.out!r} is an input file; choose another name")
    if os.path.exists(out) and not arguments.overwrite:
        raise OSError(f"{arguments.out!r} exists; pass --overwrite to replace it")
    imager = make_imager(arguments)
    reference = _read_image(arguments.reference, arguments.unit, "reference")
    target = _read_image(arguments.target, arguments.unit, "target")
    result = imager.fit(reference, target)
    result.write(out, overwrite=arguments.overwrite)
    unit = result.difference.unit
    status = "converged" if result.converged else "NOT converged"
    outliers = ("off (--clip none)" if imager.clip is None
                else f"{result.n_outliers} pixels (--clip {imager.clip:g})")
    print("\n".join([
        f"astro_dia {__version__} diff: {target.shape[0]} x {target.shape[1]} pixels, "
        f"{imager.kernel_size} x {imager.kernel_size} kernel, {result.n_data} pixels fitted",
        f"  scale factor P     {result.scale_factor:.5f}",
        f"  background B0      {result.background_offset.to_value(unit):.3f} {unit}",
        f"  iterations         {result.n_iterations} ({status})",
        f"  outliers rejected  {outliers}",
        f"  difference image   {out}",
    ]))
    return 0
