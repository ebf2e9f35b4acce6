"""
Whether a series' variable sources vary in the frames themselves: a check without DIA.

Run by hand on the output folder of ``astro-dia series`` (it needs the
registered frames, ``DIR/registered/``, the light curves and the frames
table)::

    python benchmarks/validate_variables.py night 232 233 234 --controls 30

For each source it measures aperture photometry on every registered frame
(photutils: a circle of 1.5 times the frame's FWHM, at least 6 px, less the
median of an annulus of 2.5-3.5 radii), normalised by the median ratio of
up to 25 reference stars 20-150 px away (an ensemble against transparency),
and correlates it with the source's DIA light curve over the epochs where
both are clean. In a crowded field an aperture's flux follows the seeing
(neighbours' light enters and leaves it), so a quadratic in the seeing is
taken out of both light curves first: the partial correlation given the
seeing. ``--controls N`` runs the same on N constant reference stars
(unsaturated, more than 80 clean epochs, drawn at random): what the figure
is for sources that do not vary. A source well above the controls varies
in the frames; one within them may or may not (the aperture is far noisier
than the difference image), and this check cannot tell.
"""

import argparse
import glob
import os
import warnings

import numpy as np
from astropy.io import fits
from astropy.table import QTable

ENSEMBLE = 25
ENSEMBLE_RADII = (20.0, 150.0)


def aperture_light_curve(folder, frames, x, y, comparison):
    """(epoch, normalised aperture flux, FWHM) on each registered frame."""
    from photutils.aperture import (ApertureStats, CircularAnnulus, CircularAperture,
                                    aperture_photometry)

    rows = []
    for frame in frames:
        paths = glob.glob(os.path.join(folder, "registered", f"{frame['name']}*.fits"))
        if not paths:
            continue
        with fits.open(paths[0]) as hdus:
            data = hdus[0].data.astype(float)
            fwhm = float(hdus[0].header.get("PFWHM", 5.0))
        radius = 1.5 * max(fwhm, 4.0)
        positions = [(x, y)] + list(comparison)
        aperture = CircularAperture(positions, radius)
        annulus = CircularAnnulus(positions, 2.5 * radius, 3.5 * radius)
        good = np.isfinite(data)
        clean = np.where(good, data, 0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sky = ApertureStats(clean, annulus, mask=~good).median
        flux = np.asarray(aperture_photometry(clean, aperture)["aperture_sum"]) - sky * aperture.area
        ensemble = np.nanmedian(flux[1:] / np.nanmedian(flux[1:]))
        rows.append((int(frame["epoch"]), flux[0] / ensemble, fwhm))
    return np.array(rows)


def partial_correlation(folder, light_curves, frames, stars, source):
    """The aperture-DIA correlation of one source given the seeing, and its epochs."""
    curve = light_curves[light_curves["id"] == source]
    x, y = float(curve["x"][0]), float(curve["y"][0])
    distance = np.hypot(stars["x"] - x, stars["y"] - y)
    near = (distance > ENSEMBLE_RADII[0]) & (distance < ENSEMBLE_RADII[1]) & (stars["id"] != source)
    comparison = list(zip(stars["x"][near][:ENSEMBLE], stars["y"][near][:ENSEMBLE]))
    rows = aperture_light_curve(folder, frames, x, y, comparison)
    clean = (curve["flags"] == 0) & np.isfinite(curve["flux"])
    dia = {int(e): float(f) for e, f in zip(curve["epoch"][clean], curve["flux"][clean])}
    keep = np.array([int(e) in dia for e in rows[:, 0]], bool) if len(rows) else np.zeros(0, bool)
    if keep.sum() < 6:
        return x, y, int(keep.sum()), float("nan")
    aperture, seeing = rows[keep, 1], rows[keep, 2]
    difference = np.array([dia[int(e)] for e in rows[keep, 0]])
    residual_a = aperture - np.polyval(np.polyfit(seeing, aperture, 2), seeing)
    residual_d = difference - np.polyval(np.polyfit(seeing, difference, 2), seeing)
    return x, y, int(keep.sum()), float(np.corrcoef(residual_a, residual_d)[0, 1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("folder", help="output folder of astro-dia series")
    parser.add_argument("ids", nargs="*", type=int, help="light-curve ids to check")
    parser.add_argument("--controls", type=int, default=30,
                        help="constant reference stars to check as controls (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    light_curves = QTable.read(os.path.join(args.folder, "light_curves.ecsv"))
    frames = QTable.read(os.path.join(args.folder, "frames.ecsv"))
    summary = QTable.read(os.path.join(args.folder, "variability.ecsv"))
    first = light_curves[np.unique(np.asarray(light_curves["id"]), return_index=True)[1]]
    stars = first[first["kind"] == "star"]
    stars = QTable({"id": np.asarray(stars["id"]), "x": np.asarray(stars["x"], float),
                    "y": np.asarray(stars["y"], float)})
    constant = summary[(summary["kind"] == "star") & ~np.asarray(summary["near_saturated"], bool)
                       & (np.asarray(summary["n_good"]) > 80)
                       & np.isfinite(np.asarray(summary["chi2_robust"], float))]
    rng = np.random.default_rng(args.seed)
    controls = rng.choice(np.asarray(constant["id"]), min(args.controls, len(constant)),
                          replace=False)
    values = []
    for source in controls:
        values.append(partial_correlation(args.folder, light_curves, frames, stars, source)[3])
    values = np.array(values)
    print(f"controls: {len(values)} constant stars, partial correlation given the seeing "
          f"{np.nanmean(values):+.2f} +- {np.nanstd(values):.2f} "
          f"(from {np.nanmin(values):+.2f} to {np.nanmax(values):+.2f})")
    for source in args.ids:
        x, y, n, value = partial_correlation(args.folder, light_curves, frames, stars, source)
        print(f"source {source} at ({x:.1f}, {y:.1f}): {n} epochs, partial correlation "
              f"{value:+.2f}")


if __name__ == "__main__":
    main()
