"""
Diagnostic figures of a difference-imaging fit (needs matplotlib).

`plot_result` draws, on one `matplotlib.figure.Figure`, the reference, the
target and the difference image (on a z-scale stretch), the kernel, and the
histogram of the normalised residuals ``D / sigma`` of the fitted pixels
against the unit Gaussian they follow when the noise model is right.
matplotlib is imported only when a figure is drawn; pyplot is not used, so
no window opens and the current backend is left alone.
"""

import numpy as np

__all__ = ["plot_result", "plot_stamps"]

_MATPLOTLIB_HINT = 'pip install "astro_dia[plot]" (or pip install matplotlib)'

#: The fields of a `~astro_dia.DifferenceResult` that the figure reads. The
#: result is recognised by them, so that this module need not import the
#: result module (whose ``plot`` method imports this one).
_RESULT_FIELDS = ("difference", "model", "kernel", "scale_factor", "background_offset",
                  "normalized_residuals", "n_data", "n_iterations", "converged", "solver")


def plot_result(result, *, reference=None, target=None, figure=None, bins=50):
    """
    Draw the diagnostic panels of one fit.

    Parameters
    ----------
    result : `~astro_dia.DifferenceResult`
        The fit to show (from `~astro_dia.DifferenceImager.fit` or
        `~astro_dia.io.read_result`).
    reference : `~astropy.nddata.NDData` or (M, N) ndarray, optional
        The reference image; its panel says "not given" without it.
    target : `~astropy.nddata.NDData` or (M, N) ndarray, optional
        The target image. By default it is rebuilt as ``difference +
        model`` (defined where the model is).
    figure : `matplotlib.figure.Figure`, optional
        Figure to draw on (it is cleared first); a new 12 x 7.5 inch one by
        default.
    bins : int, optional
        Number of histogram bins.

    Returns
    -------
    figure : `matplotlib.figure.Figure`
        Six axes, in ``figure.axes`` order: reference, target, difference,
        kernel, histogram, and a text panel with P, B0 and the solver
        status (colour bars follow as extra axes). Save it with
        ``figure.savefig('fit.png')``.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    TypeError
        If ``result`` is not a fit result.

    Examples
    --------
    >>> from astro_dia import DifferenceImager
    >>> from astro_dia.plotting import plot_result
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, target, truth = make_image_pair(shape=(48, 48), density=100, seed=5)
    >>> result = DifferenceImager(kernel_size=7, flat=1, sky=0).fit(reference, target)
    >>> figure = plot_result(result, reference=reference)
    >>> [axes.get_title() for axes in figure.axes[:3]]
    ['reference', 'target', 'difference (zscale)']
    """
    missing = [name for name in _RESULT_FIELDS if not hasattr(result, name)]
    if missing:
        raise TypeError(f"result must be a DifferenceResult, got {type(result).__name__} "
                        f"(without {', '.join(missing)})")
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"plot_result needs matplotlib: {_MATPLOTLIB_HINT}") from exc

    difference = result.difference
    shape = difference.shape
    unit = difference.unit.to_string()
    difference_data = np.where(difference.mask, np.nan, difference.data) \
        if difference.mask is not None else np.asarray(difference.data, float)
    reference_data = _image_data(reference, shape, "reference")
    if target is None and result.model is not None:
        target_data = np.asarray(difference.data, float) + np.asarray(result.model.data, float)
    else:
        target_data = _image_data(target, shape, "target")

    if figure is None:
        figure = Figure(figsize=(12.0, 7.5), layout="constrained")
    else:
        figure.clear()
    axes = figure.subplots(2, 3).ravel()
    for ax, data, title in ((axes[0], reference_data, "reference"),
                            (axes[1], target_data, "target"),
                            (axes[2], difference_data, "difference (zscale)")):
        _show_image(figure, ax, data, title, unit)
    _show_kernel(figure, axes[3], result.kernel, result.scale_factor)
    _show_histogram(axes[4], result, bins)
    _show_summary(axes[5], result)
    return figure


def _image_data(image, shape, name):
    if image is None:
        return None
    data = np.asarray(getattr(image, "data", image), dtype=float)
    if data.shape != shape:
        raise ValueError(f"{name} must have the shape of the difference image {shape}, got "
                         f"{data.shape}")
    mask = getattr(image, "mask", None)
    if mask is not None:
        data = np.where(mask, np.nan, data)
    return data


def _zscale_norm(data):
    from astropy.visualization import ImageNormalize, ZScaleInterval

    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return None
    vmin, vmax = ZScaleInterval().get_limits(finite)
    return ImageNormalize(vmin=vmin, vmax=vmax)


def _show_image(figure, ax, data, title, unit):
    ax.set_title(title)
    if data is None:
        ax.text(0.5, 0.5, "not given", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    image = ax.imshow(data, origin="lower", cmap="gray", norm=_zscale_norm(data),
                      interpolation="nearest")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    figure.colorbar(image, ax=ax, shrink=0.8).set_label(unit)


def _show_kernel(figure, ax, kernel, scale_factor):
    half = kernel.shape[0] // 2
    extent = (-half - 0.5, half + 0.5, -half - 0.5, half + 0.5)
    image = ax.imshow(kernel, origin="lower", cmap="viridis", extent=extent,
                      interpolation="nearest")
    ax.set_title(f"kernel, P = {scale_factor:.4f}")
    ax.set_xlabel("x offset (pixels)")
    ax.set_ylabel("y offset (pixels)")
    figure.colorbar(image, ax=ax, shrink=0.8)


def _show_histogram(ax, result, bins):
    from scipy.stats import norm

    z = result.normalized_residuals()
    z = z[np.isfinite(z)]
    ax.set_title("D / sigma on the fitted pixels")
    ax.set_xlabel("normalised residual")
    ax.set_ylabel("probability density")
    if z.size == 0:
        ax.text(0.5, 0.5, "no fitted pixel", ha="center", va="center", transform=ax.transAxes)
        return
    limit = max(5.0, min(float(np.percentile(np.abs(z), 99.5)), 20.0))
    ax.hist(z, bins=bins, range=(-limit, limit), density=True, histtype="stepfilled",
            alpha=0.6, label=f"data (std {np.std(z):.3f})")
    grid = np.linspace(-limit, limit, 401)
    ax.plot(grid, norm.pdf(grid), color="k", label="unit Gaussian")
    ax.legend(loc="upper right", fontsize="small")


def _show_summary(ax, result):
    ax.set_axis_off()
    unit = result.difference.unit
    lines = [f"P = {result.scale_factor:.5f}"]
    if result.scale_factor_error is not None:
        lines[0] += f" +/- {result.scale_factor_error:.5f}"
    b0 = f"B0 = {result.background_offset.to_value(unit):.3f}"
    if result.background_error is not None:
        b0 += f" +/- {result.background_error[0].to_value(unit):.3f}"
    lines += [f"{b0} {unit}",
              f"kernel {result.kernel.shape[0]} x {result.kernel.shape[1]}, "
              f"{result.n_data} pixels fitted",
              f"{result.solver} solver: {result.n_iterations} iterations, "
              f"{'converged' if result.converged else 'NOT converged'}"]
    ax.text(0.02, 0.95, "\n".join(lines), ha="left", va="top", transform=ax.transAxes,
            family="monospace")


def plot_stamps(stamps, *, title=None, figure=None):
    """
    Draw image stamps side by side, each on a z-scale stretch.

    Parameters
    ----------
    stamps : dict of str to `~astropy.nddata.NDData`
        The stamps, keyed by the panel titles (as
        `~astro_dia.detection.CandidateCutouts.stamps`).
    title : str, optional
        Title of the figure.
    figure : `matplotlib.figure.Figure`, optional
        Figure to draw on (cleared first); a new one by default.

    Returns
    -------
    figure : `matplotlib.figure.Figure`
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"plot_stamps needs matplotlib: {_MATPLOTLIB_HINT}") from exc
    if not stamps:
        raise ValueError("no stamps to draw")
    if figure is None:
        figure = Figure(figsize=(3.2 * len(stamps), 3.2), layout="constrained")
    else:
        figure.clear()
    axes = np.atleast_1d(figure.subplots(1, len(stamps)))
    for ax, (name, stamp) in zip(axes, stamps.items()):
        data = _image_data(stamp, np.shape(stamp.data), name)
        unit = getattr(stamp, "unit", None)
        _show_image(figure, ax, data, name, "" if unit is None else unit.to_string())
    if title:
        figure.suptitle(title)
    return figure
