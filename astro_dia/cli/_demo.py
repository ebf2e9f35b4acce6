"""
The ``astro-dia demo`` command: a simulated star-field pair, differenced and reported.

::

    astro-dia demo [--out DIR] [--size N] [--kernel-size K] [--seed S]
                   [--device D] [--dtype {float32,float64}] [--no-plot]

The work is `astro_dia.demo.run_demo`'s; this module owns the command's
options and `format_report`, the report it prints.
"""

from .._package_version import version as __version__
from ..demo import DEFAULT_SEED, run_demo

__all__ = ["format_report"]


def add_demo_command(commands):
    """Add the ``demo`` sub-command to the parser's sub-commands."""
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


def _run_demo_command(arguments):
    summary = run_demo(arguments.out, size=arguments.size, kernel_size=arguments.kernel_size,
                       seed=arguments.seed, device=arguments.device, dtype=arguments.dtype,
                       plot=arguments.plot)
    print(format_report(summary))
    return 0


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
