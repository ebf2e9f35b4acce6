"""
A self-contained demonstration: simulate a star-field pair, difference it, save the result.

`run_demo` draws a reference and a target of one crowded star field with
`astro_dia.simulate.make_image_pair` (a target PSF wider than the
reference's, a photometric scale factor, a sky difference, a sub-pixel
shift and CCD noise, with the gain and read noise in the FITS headers),
fits them with `~astro_dia.DifferenceImager`, and writes the difference
image as a FITS file and, when matplotlib is installed, a four-panel PNG.
The command ``astro-dia demo`` (see `astro_dia.cli`) runs it.
"""

import logging
import os
import time

import numpy as np

from .core import DifferenceImager
from .kernels import check_kernel_size
from .simulate import make_image_pair

__all__ = ["DEFAULT_SEED", "DIFFERENCE_FILENAME", "PLOT_FILENAME", "run_demo"]

log = logging.getLogger(__name__)

#: Seed of the simulated pair when none is given, so that runs are repeatable.
DEFAULT_SEED = 2024

#: Name of the difference image written in the output directory.
DIFFERENCE_FILENAME = "difference.fits"

#: Name of the four-panel figure written in the output directory.
PLOT_FILENAME = "demo.png"

# The simulated field: what the demo differences, and the truth it is scored against.
_SIMULATION = dict(
    psf_sigma=1.5,                  # reference PSF sigma (pixels)
    kernel_sigma=1.5,               # the target PSF is wider: sqrt(1.5**2 + 1.5**2)
    density=40.0,                   # stars per 100 x 100 pixels
    reference_variance_ratio=0.1,   # a stacked reference, ten times less noisy
    scale_factor=0.9,               # the target is 10 per cent fainter (P = 0.9)
    reference_sky=100.0,            # adu
    target_sky=300.0,               # adu; true B0 = 300 - 0.9 * 100 = 210 adu
    shift=(0.3, -0.2),              # sub-pixel shift (dy, dx) of the target's stars
    gain=2.0,                       # e-/adu, written to GAIN
    read_noise=4.0,                 # adu; RDNOISE holds it in electrons
    noise_model="ccd",
)


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    if size <= 0:
        raise ValueError(f"size must be a positive integer, got {size}")
    return size


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer or None, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed}")
    return int(seed)


def run_demo(out_dir, *, size=256, kernel_size=15, seed=DEFAULT_SEED, device="auto",
             dtype="float32", plot=True):
    """
    Simulate a star-field pair, difference it and write the results.

    The pair is a ``size`` x ``size`` field of about 40 stars per
    100 x 100 pixels with a reference PSF of sigma 1.5 pixels, a target
    PSF widened by a Gaussian kernel of sigma 1.5 pixels, a scale factor
    P = 0.9, skies of 100 and 300 adu (so B0 = 210 adu), a shift of
    (0.3, -0.2) pixel, CCD noise (gain 2 e-/adu, read noise 4 adu) and a
    reference ten times less noisy than the target. It is fitted with
    ``DifferenceImager(kernel_size, flat=1, sky=0)``: the simulated
    headers name no flat field, and the images are not sky-subtracted.

    Parameters
    ----------
    out_dir : str or path-like
        Directory for the output files; created if it does not exist.
        Existing files of the same names are overwritten.
    size : int, optional
        Side of the square images in pixels.
    kernel_size : int, optional
        Odd side of the square kernel; at most ``size``.
    seed : int or None, optional
        Seed of the simulation; None draws a fresh field each time.
    device : str, optional
        ``'auto'`` (CUDA when present, else the CPU), ``'cpu'`` or ``'cuda'``.
    dtype : {'float32', 'float64'}, optional
        Precision of the fit.
    plot : bool, optional
        Write a PNG of the reference, target, difference and kernel when
        matplotlib can be imported.

    Returns
    -------
    summary : dict
        With keys ``scale_factor`` and ``scale_factor_true`` (P),
        ``background_offset`` and ``background_offset_true`` (B0, floats
        in ``unit``), ``unit``, ``normalized_residual_std`` (standard
        deviation of difference / uncertainty over the fitted pixels, 1 for
        a perfect noise model), ``n_iterations``, ``converged``,
        ``fit_time`` and ``total_time`` (seconds), ``shape``,
        ``kernel_size``, ``seed``, ``device``, ``dtype``,
        ``difference_path`` (the FITS file), ``plot_path`` (the PNG, or
        None) and ``plot_note`` (why no PNG was written, or None).

    Raises
    ------
    TypeError, ValueError
        For a size, kernel size, seed, device or dtype that is not usable
        (before anything is simulated or written), or for an image with
        too few pixels for the kernel's unknowns.
    OSError
        If ``out_dir`` cannot be created or written to.

    Examples
    --------
    >>> import tempfile
    >>> from astro_dia.demo import run_demo
    >>> with tempfile.TemporaryDirectory() as out_dir:
    ...     summary = run_demo(out_dir, size=64, kernel_size=7, plot=False)
    >>> abs(summary["scale_factor"] - summary["scale_factor_true"]) < 0.05
    True
    """
    start = time.perf_counter()
    size = _check_size(size)
    seed = _check_seed(seed)
    kernel_size = check_kernel_size(kernel_size, (size, size))
    # Validates the device and dtype before any work is done.
    imager = DifferenceImager(kernel_size=kernel_size, flat=1, sky=0, device=device,
                              dtype=dtype)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    log.info("simulating a %d x %d star-field pair (seed %s)", size, size, seed)
    reference, target, truth = make_image_pair(shape=(size, size), seed=seed, **_SIMULATION)
    log.info("fitting a %d x %d kernel on %s in %s", kernel_size, kernel_size,
             imager.device, imager.dtype)
    result = imager.fit(reference, target)
    normalized = result.normalized_residuals()
    normalized = normalized[np.isfinite(normalized)]

    difference_path = os.path.join(out_dir, DIFFERENCE_FILENAME)
    result.difference.write(difference_path, overwrite=True)
    log.info("wrote the difference image to %s", difference_path)

    plot_path, plot_note = None, None
    if plot:
        plot_path, plot_note = _write_plot(os.path.join(out_dir, PLOT_FILENAME), reference,
                                           target, result, truth)
    else:
        plot_note = "plot not requested"

    unit = result.difference.unit
    summary = dict(
        scale_factor=float(result.scale_factor),
        scale_factor_true=float(truth.scale_factor),
        background_offset=float(result.background_offset.to_value(unit)),
        background_offset_true=float(truth.background),
        unit=unit.to_string(),
        normalized_residual_std=float(np.std(normalized)) if normalized.size else float("nan"),
        n_iterations=int(result.n_iterations),
        converged=bool(result.converged),
        fit_time=float(result.fit_time),
        total_time=time.perf_counter() - start,
        shape=(size, size),
        kernel_size=kernel_size,
        seed=seed,
        device=imager.device,
        dtype=imager.dtype,
        difference_path=difference_path,
        plot_path=plot_path,
        plot_note=plot_note,
    )
    log.info("P = %.5f (true %.5f), B0 = %.3f (true %.3f) %s, std(D/sigma) = %.4f",
             summary["scale_factor"], summary["scale_factor_true"],
             summary["background_offset"], summary["background_offset_true"], summary["unit"],
             summary["normalized_residual_std"])
    return summary


def _centred(array, size):
    """``array`` (odd square) cropped or zero-padded to ``size`` x ``size`` about its centre."""
    half, own_half = size // 2, array.shape[0] // 2
    out = np.zeros((size, size))
    common = min(half, own_half)
    out[half - common:half + common + 1, half - common:half + common + 1] = \
        array[own_half - common:own_half + common + 1, own_half - common:own_half + common + 1]
    return out


def _write_plot(path, reference, target, result, truth):
    """
    Write the four-panel figure; return ``(path, None)`` or ``(None, reason)``.

    The kernel panel shows the fitted kernel in colour and the true kernel
    as contours at 10, 30, 50, 70 and 90 per cent of its peak.

    Uses `matplotlib.figure.Figure` directly, which renders with the Agg
    canvas and leaves pyplot, its backend and any open figures untouched.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        note = "matplotlib is not installed, so no PNG was written (pip install matplotlib)"
        log.warning(note)
        return None, note
    from astropy.visualization import ImageNormalize, ZScaleInterval

    def zscale(data):
        finite = np.asarray(data, dtype=float)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return None
        vmin, vmax = ZScaleInterval().get_limits(finite)
        return ImageNormalize(vmin=vmin, vmax=vmax)

    difference = np.where(result.difference.mask, np.nan, result.difference.data)
    half = result.kernel.shape[0] // 2
    kernel_extent = (-half - 0.5, half + 0.5, -half - 0.5, half + 0.5)
    unit = result.difference.unit.to_string()
    panels = (
        (reference.data, zscale(reference.data), None, "gray", "reference", unit),
        (target.data, zscale(target.data), None, "gray", "target", unit),
        (difference, zscale(difference), None, "gray", "difference (zscale)", unit),
        (result.kernel, None, kernel_extent, "viridis",
         f"kernel, P = {result.scale_factor:.4f} (contours: truth)", ""),
    )
    true_kernel = _centred(np.asarray(truth.kernel, dtype=float), result.kernel.shape[0])
    figure = Figure(figsize=(9.0, 8.0), layout="constrained")
    all_axes = figure.subplots(2, 2).ravel()
    for axes, (data, norm, extent, cmap, title, label) in zip(all_axes, panels):
        image = axes.imshow(data, origin="lower", cmap=cmap, norm=norm, extent=extent,
                            interpolation="nearest")
        axes.set_title(title)
        axes.set_xlabel("x offset (pixels)" if extent else "x (pixels)")
        axes.set_ylabel("y offset (pixels)" if extent else "y (pixels)")
        colorbar = figure.colorbar(image, ax=axes, shrink=0.85)
        if label:
            colorbar.set_label(label)
    levels = true_kernel.max() * np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    all_axes[3].contour(true_kernel, levels=levels, colors="white", linewidths=0.8,
                        origin="lower", extent=kernel_extent)
    figure.suptitle(f"astro_dia demo: B0 = {result.background_offset:.2f}, "
                    f"{result.n_iterations} iterations")
    figure.savefig(path, dpi=100)
    log.info("wrote the figure to %s", path)
    return path, None
