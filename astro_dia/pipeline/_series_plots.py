"""Plots of a series' most variable light curves (private; needs matplotlib)."""

import numpy as np

__all__ = []


def plot_light_curves(light_curves, summary, path, *, n_plots=6):
    """
    Plot the ``n_plots`` most variable light curves into one PNG.

    The order is the summary's (``chi2_robust``); sources near a saturated
    star, and light curves clean at fewer than half the epochs
    (``mostly_masked``), are left out.

    Each panel shows the differential flux (reference scale) against time,
    with its error bars; flagged epochs are drawn hollow.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [row for row in summary
              if np.isfinite(row["chi2_robust"]) and not row["near_saturated"]
              and not row.get("mostly_masked", False)][:int(n_plots)]
    n = max(len(chosen), 1)
    columns = 2 if n > 1 else 1
    rows = int(np.ceil(n / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 2.6 * rows),
                                squeeze=False)
    for axis in axes.ravel()[len(chosen):]:
        axis.set_visible(False)
    for axis, row in zip(axes.ravel(), chosen):
        curve = light_curves[light_curves["id"] == row["id"]]
        time = np.asarray(curve["time"], float)
        flux = np.asarray(curve["flux"], float)
        error = np.asarray(curve["flux_err"], float)
        good = np.asarray(curve["flags"]) == 0
        axis.errorbar(time[good], flux[good], error[good], fmt="o", ms=3, color="k")
        axis.errorbar(time[~good], flux[~good], error[~good], fmt="o", ms=3, mfc="none",
                      color="0.5")
        axis.set_title(f"{row['kind']} {row['id']} at ({curve['x'][0]:.1f}, "
                       f"{curve['y'][0]:.1f}), chi2/dof {row['chi2_dof']:.1f} "
                       f"({row['chi2_robust']:.1f} robust)", fontsize=9)
        axis.set_xlabel("MJD")
        axis.set_ylabel("differential flux")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
