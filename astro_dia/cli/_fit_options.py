"""
The fit options of ``astro-dia diff`` and ``astro-dia subtract`` (private).

`add_fit_options` adds to a sub-command the options that configure the
`~astro_dia.DifferenceImager`, and `make_imager` builds the imager they
describe. Each option's value is checked by the parser (``type=``), so that
a bad value is a one-line usage error naming the option, before any file is
read; defaults are taken from the imager's own signature.
"""

import argparse
import inspect
import math
import os

from ..fitting._validation import check_clip, check_saturation
from ..core import DifferenceImager

__all__ = []

_DEFAULTS = {name: parameter.default
             for name, parameter in inspect.signature(DifferenceImager).parameters.items()}


def _number(text, expected):
    """``text`` as a float, or the parser's error saying what was ``expected``."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _clip(text):
    """``--clip``: a number of sigma (at least 3), or ``none``."""
    if text.strip().lower() == "none":
        return None
    value = _number(text, "a number of sigma (at least 3) or 'none'")
    try:
        return check_clip(value)    # the imager's own rule
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be finite and at least 3 (sigma), got {text!r}: a lower threshold rejects "
            "good pixels of a Gaussian tail; use --clip none to turn rejection off") from None


def _saturation(text):
    """``--saturation``: a positive level in the target's unit."""
    value = _number(text, "a saturation level in the target's unit")
    try:
        return check_saturation(value)    # the imager's own rule
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive, finite level in the target's unit, got {text!r}") from None


def _regularization(text):
    """``--regularization``: a finite number >= 0."""
    value = _number(text, "a non-negative number")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be non-negative and finite, got {text!r}")
    return value


def add_fit_options(command):
    """Add the options that configure the DifferenceImager to a sub-command."""
    command.add_argument("--kernel-size", metavar="K", type=int, default=19,
                         help="odd side of the square kernel, in pixels (default: "
                              "%(default)s)")
    command.add_argument("--noise-model", choices=("ccd", "emccd", "uniform", "uncertainty"),
                         default="ccd", help="noise model of the target (default: %(default)s)")
    command.add_argument("--gain", metavar="G", type=float,
                         help="gain in electron/adu (default: header GAIN, EGAIN or CCDGAIN)")
    command.add_argument("--read-noise", metavar="RN", type=float,
                         help="read noise in electrons (default: header RDNOISE, READNOIS, "
                              "RON or READNOISE)")
    command.add_argument("--em-gain", metavar="E", type=float,
                         help="EM gain, for --noise-model emccd (default: header EMGAIN)")
    command.add_argument("--flat", metavar="F",
                         help="master flat: a FITS file, or 1 for a flat-fielded image with "
                              "uniform response (default: the file named in header FLATFILE)")
    command.add_argument("--sky", metavar="S", type=float,
                         help="sky level subtracted from the target, in its unit; 0 if none "
                              "(default: header SKYLEVEL, or estimated)")
    command.add_argument("--unit", metavar="U",
                         help="unit of images whose header has no BUNIT, e.g. adu")
    command.add_argument("--saturation", metavar="L", type=_saturation,
                         help="saturation level of both images, in the target's unit, "
                              "overriding their headers: pixels at or above it are left out "
                              "of the fit and flagged SATURATED (default: header SATURATE, "
                              "SATLEVEL, SATURATN, SATURATA or MAXLIN of each image; a "
                              "warning names the level of an image that has none but looks "
                              "saturated)")
    command.add_argument("--clip", metavar="SIGMA", type=_clip, default=_DEFAULTS["clip"],
                         help="outlier rejection: leave out of the fit the pixels (cosmic "
                              "rays, hot pixels) whose residual exceeds SIGMA sigma, with "
                              "their eight neighbours, and flag them OUTLIER; at least 3, or "
                              "'none' to turn rejection off (default: %(default)g)")
    command.add_argument("--reference-noise", action="store_true",
                         help="add the reference's noise, convolved with the kernel, to the "
                              "target's variance (for a single-epoch reference; from its "
                              "uncertainty or its header)")
    command.add_argument("--fit-region", choices=("auto", "all", "stars"), default="auto",
                         help="pixels the fit uses: all of them, the footprints of the "
                              "reference's stars, or 'auto': all, then the stars when the "
                              "reference's noise is predicted to bias P (default: "
                              "%(default)s)")
    command.add_argument("--regularization", metavar="LAMBDA", type=_regularization,
                         default=_DEFAULTS["regularization"],
                         help="strength of the Laplacian penalty that smooths the kernel, "
                              ">= 0; 0 turns it off (default: %(default)g)")
    command.add_argument("--background-degree", metavar="D", type=int, default=0,
                         help="degree of the background polynomial (default: %(default)s)")
    command.add_argument("--kernel-degree", metavar="D", type=int, default=0,
                         help="degree of the kernel's spatial variation, 0 for one kernel "
                              "(default: %(default)s)")
    command.add_argument("--constant-scale", action="store_true",
                         help="with --kernel-degree > 0, hold the scale factor P constant "
                              "over the image")
    command.add_argument("--loss", choices=("gaussian", "huber", "student_t"),
                         default="gaussian", help="loss function (default: %(default)s)")
    command.add_argument("--solver", metavar="S",
                         help="solver of the fit, e.g. 'iterative' (default: that of "
                              "astro_dia.DifferenceImager)")
    command.add_argument("--device", metavar="D", default="auto",
                         help="torch device: 'auto', 'cpu', 'cuda' or 'cuda:N' "
                              "(default: %(default)s)")
    command.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                         help="floating-point precision of the fit (default: %(default)s)")


def make_imager(arguments):
    """The DifferenceImager that the fit options describe."""
    from astropy import units as u

    solver = {} if arguments.solver is None else {"solver": arguments.solver}
    return DifferenceImager(
        arguments.kernel_size, noise_model=arguments.noise_model,
        gain=None if arguments.gain is None else arguments.gain * u.electron / u.adu,
        read_noise=None if arguments.read_noise is None else arguments.read_noise * u.electron,
        em_gain=arguments.em_gain, flat=read_flat(arguments.flat), sky=arguments.sky,
        saturation=arguments.saturation, clip=arguments.clip,
        reference_noise=arguments.reference_noise, regularization=arguments.regularization,
        fit_region=arguments.fit_region,
        background_degree=arguments.background_degree,
        kernel_degree=arguments.kernel_degree, constant_scale=arguments.constant_scale,
        loss=arguments.loss, device=arguments.device, dtype=arguments.dtype, **solver)


def read_flat(value):
    """``--flat``: a number, or the data of a FITS file (read-only)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    from astropy.io import fits

    if not os.path.isfile(value):
        raise OSError(f"--flat {value!r} is neither a number nor an existing FITS file")
    return fits.getdata(value).astype(float)
