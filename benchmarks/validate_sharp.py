"""
Validate the SHARP flag of `astro_dia.detection.find_transients` on simulated pairs.

Run by hand (about two minutes on two CPU cores)::

    python benchmarks/validate_sharp.py [--frames 4] [--text docs/sharp_validation.txt]

Each frame is a simulated 400 x 400 pair (`make_image_pair`) whose target
gets, on a jittered 8 x 8 grid of cells (50 pixels apart, so that nothing
blends):

- 32 point sources with the target PSF (`inject_point_sources`), of both
  signs, half with expected matched-filter S/N log-uniform in 5-10 and half
  in 10-200 (`expected_snr`, with the true variance of the difference);
- 16 cosmic rays of 1, 2 or 3 connected pixels (in a line, a diagonal or an
  L) and 8 hot pixels (one pixel), of peak amplitude log-uniform in 8-200
  times the pixel's noise (the other pixels of a cosmic ray 30-100% of it);
- 8 cosmic rays of 1-3 pixels in the reference instead, which the kernel
  spreads into negative, kernel-shaped residuals.

It prints, for four conditions (target PSF FWHM 4.5, 3 and 2 pixels with
30 stars per 100 x 100 pixels, and FWHM 4.5 with 150; reference PSF and
kernel Gaussian, reference ten times deeper than the target) and three
PSFs given to `find_transients` (the true reference PSF, none so that the
PSF is measured on the model, and a reference PSF 20% too broad): the
fraction of detected point sources flagged SHARP, per measured S/N, and the
fraction of detected defects flagged SHARP, per kind, size and measured
S/N. A candidate is matched to a source within 1.5 pixels and to a defect
within 2 pixels; the other candidates (residuals of stars, noise) are
counted as unmatched. For comparison it also counts the candidates with a
pixel the fit rejected (OUTLIER) in the 3 x 3 pixels at their position.
"""

import argparse
import time
import warnings

import numpy as np
from scipy.signal import fftconvolve

from astro_dia import DifferenceImager
from astro_dia import flags as pixel_flags
from astro_dia.detection import DETECTION_FLAGS, find_transients
from astro_dia.photometry import gaussian_psf
from astro_dia.simulate import expected_snr, inject_point_sources, make_image_pair

SHAPE = (400, 400)
CELLS = 8
N_SOURCES, N_COSMIC, N_HOT, N_REFERENCE = 32, 16, 8, 8
#: (reference PSF sigma, kernel sigma, stars per 100 x 100 pixels): target PSF FWHM 4.5, 3.0
#: and 2.0 pixels, and a crowded field.
CONDITIONS = {"FWHM 4.5": (1.5, 1.2, 30.0), "FWHM 4.5, crowded": (1.5, 1.2, 150.0),
              "FWHM 3.0": (1.0, 0.8, 30.0), "FWHM 2.0": (0.6, 0.6, 30.0)}
PSF_CASES = {"given": "reference PSF given", "measured": "PSF measured on the model",
             "broad": "reference PSF given 20% too broad"}
SNR_BINS = (5, 7, 10, 20, 50, np.inf)
STEPS = ((0, 1), (1, 0), (1, 1), (1, -1))


def difference_variance(truth):
    """True variance of the difference: the target's plus the reference's through K."""
    kernel = np.asarray(truth.kernel, float)
    return truth.target_variance + fftconvolve(truth.reference_variance, kernel[::-1, ::-1] ** 2,
                                               mode="same")


def add_defect(data, sigma, x, y, n_pixels, amplitude, rng):
    """Add a defect of ``n_pixels`` connected pixels at ``(x, y)``, in place."""
    pixels = [(y, x)]
    while len(pixels) < n_pixels:
        dy, dx = STEPS[rng.integers(len(STEPS))]
        if rng.random() < 0.5:
            dy, dx = -dy, -dx
        candidate = (pixels[-1][0] + dy, pixels[-1][1] + dx)
        if candidate not in pixels:
            pixels.append(candidate)
    for k, (py, px) in enumerate(pixels):
        scale = 1.0 if k == 0 else rng.uniform(0.3, 1.0)
        data[py, px] += scale * amplitude * sigma[py, px]


def trial(psf_sigma, kernel_sigma, density, seed, psf="given"):
    """One frame: (kind, n_pixels, |snr|, sharp, outlier, excess, excess_snr) per match.

    ``psf`` is 'given' (the true reference PSF), 'measured' (None: measured
    on the model) or 'broad' (a reference PSF 20% too broad).
    """
    rng = np.random.default_rng(seed)
    reference, target, truth = make_image_pair(SHAPE, psf_sigma=psf_sigma,
                                               kernel_sigma=kernel_sigma, density=density,
                                               reference_variance_ratio=0.1, seed=seed)
    target_sigma = float(np.hypot(psf_sigma, kernel_sigma))
    step = SHAPE[0] / CELLS
    centres = (np.arange(CELLS) + 0.5) * step
    gx, gy = np.meshgrid(centres, centres)
    gx = gx.ravel() + rng.uniform(-8, 8, gx.size)
    gy = gy.ravel() + rng.uniform(-8, 8, gy.size)
    order = rng.permutation(gx.size)
    kinds = np.array(["source"] * N_SOURCES + ["cosmic ray"] * N_COSMIC + ["hot pixel"] * N_HOT
                     + ["reference cosmic ray"] * N_REFERENCE)
    gx, gy = gx[order][:kinds.size], gy[order][:kinds.size]
    n_pixels = np.where(kinds == "source", 0, rng.integers(1, 4, kinds.size))
    n_pixels[kinds == "hot pixel"] = 1

    is_source = kinds == "source"
    xs, ys = gx[is_source], gy[is_source]
    wanted = np.exp(np.concatenate([rng.uniform(np.log(5), np.log(10), N_SOURCES // 2),
                                    rng.uniform(np.log(10), np.log(200), N_SOURCES // 2)]))
    wanted *= rng.choice([-1.0, 1.0], N_SOURCES)
    flux = wanted / expected_snr(xs, ys, 1.0, target_sigma, difference_variance(truth))
    target = inject_point_sources(target, xs, ys, flux, target_sigma)
    target_data = np.array(target.data, float)
    reference_data = np.array(reference.data, float)
    for kind, x, y, n in zip(kinds, gx, gy, n_pixels):
        if kind == "source":
            continue
        amplitude = np.exp(rng.uniform(np.log(8.0), np.log(200.0)))
        ix, iy = int(round(x)), int(round(y))
        if kind == "reference cosmic ray":   # as bright as in a single exposure
            add_defect(reference_data, np.sqrt(truth.target_variance), ix, iy, n, amplitude,
                       rng)
        else:
            add_defect(target_data, np.sqrt(truth.target_variance), ix, iy, n, amplitude, rng)
    target.data, reference.data = target_data, reference_data
    kernel_size = 2 * int(np.ceil(4 * kernel_sigma)) + 3
    psf = {"given": gaussian_psf(2.3548 * psf_sigma), "measured": None,
           "broad": gaussian_psf(1.2 * 2.3548 * psf_sigma)}[psf]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = DifferenceImager(kernel_size=kernel_size, flat=1,
                                  reference_noise=True).fit(reference, target)
        table = find_transients(result, 5.0, reference_psf=psf)
    outlier = (np.asarray(result.flags) & pixel_flags.OUTLIER) != 0
    cx, cy = np.asarray(table["x"], float), np.asarray(table["y"], float)
    matches = []
    for kind, x, y, n in zip(kinds, gx, gy, n_pixels):
        distance = np.hypot(cx - x, cy - y)
        radius = 1.5 if kind == "source" else 2.0
        if distance.size and distance.min() <= radius:
            matches.append((kind, n, int(np.argmin(distance))))
    matched = {j for _, _, j in matches}
    matches += [("unmatched", 0, j) for j in range(len(table)) if j not in matched]
    rows = []
    for kind, n, j in matches:
        ix, iy = int(round(cx[j])), int(round(cy[j]))
        near_outlier = bool(outlier[iy - 1:iy + 2, ix - 1:ix + 2].any())
        sharp = bool(table["flags"][j] & DETECTION_FLAGS["SHARP"])
        rows.append((kind, int(n), abs(float(table["snr"][j])), sharp, near_outlier,
                     float(table["peak_excess"][j]), float(table["peak_excess_snr"][j])))
    return rows


def _count(sharp, where):
    return f"{int(sharp[where].sum())}/{int(where.sum())}"


def summarise(rows, report):
    """Print the SHARP counts (flagged/detected) per kind, size and S/N."""
    kinds = np.array([r[0] for r in rows])
    n_pixels = np.array([r[1] for r in rows])
    snr = np.array([r[2] for r in rows])
    sharp = np.array([r[3] for r in rows], bool)
    outlier = np.array([r[4] for r in rows], bool)
    excess = np.array([r[5] for r in rows])
    source = kinds == "source"
    bright = source & (snr >= 50)
    report(f"    point sources  {_count(sharp, source)}: S/N 5-10 "
           f"{_count(sharp, source & (snr < 10))}, 10-50 "
           f"{_count(sharp, source & (snr >= 10) & (snr < 50))}, 50+ {_count(sharp, bright)}; "
           f"max peak_excess at S/N 50+ {np.nanmax(excess[bright]):.2f}; "
           f"OUTLIER in 3x3 {outlier[source].mean():.0%}")
    defect = np.isin(kinds, ["cosmic ray", "hot pixel"])
    strong = defect & (snr >= 10)
    sizes = ", ".join(f"{label} {_count(sharp, strong & (kinds == kind) & (n_pixels == n))}"
                      for kind, n, label in (("hot pixel", 1, "hot"), ("cosmic ray", 1, "1 px"),
                                             ("cosmic ray", 2, "2 px"),
                                             ("cosmic ray", 3, "3 px")))
    report(f"    target defects S/N 10+ {_count(sharp, strong)} ({sizes}); S/N 5-10 "
           f"{_count(sharp, defect & (snr < 10))}")
    reference = kinds == "reference cosmic ray"
    unmatched = kinds == "unmatched"
    report(f"    reference cosmic rays S/N 20+ {_count(sharp, reference & (snr >= 20))}, "
           f"5-20 {_count(sharp, reference & (snr < 20))}; unmatched candidates "
           f"{_count(sharp, unmatched)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--frames", type=int, default=4, help="pairs per condition")
    parser.add_argument("--text", help="also write the figures to this file, as an rst "
                                       "literal block")
    args = parser.parse_args(argv)
    lines = []

    def report(line):
        print(line, flush=True)
        lines.append(line)

    start = time.perf_counter()
    report(f"SHARP flag at threshold 5 (flagged/detected): {args.frames} frames of "
           f"{SHAPE[0]}x{SHAPE[1]} per condition, each with {N_SOURCES} point sources,")
    report(f"{N_COSMIC} cosmic rays and {N_HOT} hot pixels in the target and {N_REFERENCE} "
           "cosmic rays in the reference")
    everything = {}
    for k, (name, (psf_sigma, kernel_sigma, density)) in enumerate(CONDITIONS.items()):
        for psf, label in PSF_CASES.items():
            rows = []
            for f in range(args.frames):
                rows += trial(psf_sigma, kernel_sigma, density, seed=7000 + 100 * k + f, psf=psf)
            report(f"  {name}, {label}:")
            summarise(rows, report)
            everything[(name, psf)] = rows
    for psf, label in PSF_CASES.items():
        rows = [r for (_, case), found in everything.items() if case == psf for r in found]
        sources = [r for r in rows if r[0] == "source"]
        faint = [r for r in sources if r[2] < 10]
        defects = [r for r in rows if r[0] in ("cosmic ray", "hot pixel") and r[2] >= 10]
        report(f"  all conditions, {label}: point sources {sum(r[3] for r in sources)}/"
               f"{len(sources)} SHARP (S/N 5-10: {sum(r[3] for r in faint)}/{len(faint)}); "
               f"target defects of S/N 10+ {sum(r[3] for r in defects)}/{len(defects)}")
    report(f"total time {time.perf_counter() - start:.0f} s")
    if args.text:
        with open(args.text, "w") as handle:
            handle.write("::\n\n" + "".join(f"    {line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
