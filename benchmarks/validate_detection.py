"""
Validate transient detection (`astro_dia.detection`) on simulated pairs.

Run by hand (a few minutes on two CPU cores)::

    python benchmarks/validate_detection.py [--frames 4] [--noise-frames 12] \\
        [--plot docs/_static/detection_completeness.png] [--text docs/detection_validation.txt]

It prints the figures quoted in docs/detection.rst:

1. completeness against the expected matched-filter S/N of point sources
   injected into simulated targets (two seeings, two crowdings), at
   threshold 5: the fraction found within 1.5 pixels, per S/N bin;
2. S/N calibration: the median of measured ``|snr|`` over expected S/N;
3. false positives per megapixel on pure-noise pairs (no injected source)
   at thresholds 4, 5 and 6, against the expected number of peaks of a
   smooth Gaussian field of the significance image's correlation
   (Euler-characteristic density, both signs).
"""

import argparse
import time
import warnings

import numpy as np
from scipy.signal import fftconvolve

from astro_dia import DifferenceImager
from astro_dia.detection import find_transients
from astro_dia.photometry import gaussian_psf
from astro_dia.simulate import expected_snr, inject_point_sources, make_image_pair

SHAPE = (400, 400)
KERNEL_SIZE = 15
KERNEL_SIGMA = 1.2
N_SOURCES = 40
BINS = (3, 4, 5, 6, 7, 8, 10, 14, 20, 30)


def difference_variance(truth):
    """True variance of the difference: the target's plus the reference's through K."""
    kernel = np.asarray(truth.kernel, float)
    return truth.target_variance + fftconvolve(truth.reference_variance, kernel[::-1, ::-1] ** 2,
                                               mode="same")


def trial(psf_sigma, density, seed, n_sources=N_SOURCES, threshold=5.0, inject=True):
    """One simulated pair with injected sources: (expected S/N, found, |snr|) per source,
    and the number of unmatched detections."""
    rng = np.random.default_rng(seed)
    reference, target, truth = make_image_pair(SHAPE, psf_sigma=psf_sigma,
                                               kernel_sigma=KERNEL_SIGMA, density=density,
                                               reference_variance_ratio=0.1, seed=seed)
    target_sigma = float(np.hypot(psf_sigma, KERNEL_SIGMA))
    margin = 25
    x = rng.uniform(margin, SHAPE[1] - margin, n_sources if inject else 0)
    y = rng.uniform(margin, SHAPE[0] - margin, n_sources if inject else 0)
    variance = difference_variance(truth)
    sign = rng.choice([-1.0, 1.0], x.size)
    wanted = sign * np.exp(rng.uniform(np.log(3.0), np.log(30.0), x.size))
    unit_snr = expected_snr(x, y, 1.0, target_sigma, variance)
    flux = wanted / unit_snr if x.size else np.zeros(0)
    if x.size:
        target = inject_point_sources(target, x, y, flux, target_sigma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = DifferenceImager(kernel_size=KERNEL_SIZE, flat=1,
                                  reference_noise=True).fit(reference, target)
        table = find_transients(result, threshold, reference_psf=gaussian_psf(2.3548 * psf_sigma))
    cx, cy = np.asarray(table["x"], float), np.asarray(table["y"], float)
    found = np.zeros(x.size, bool)
    measured = np.full(x.size, np.nan)
    used = np.zeros(cx.size, bool)
    for i in range(x.size):
        distance = np.hypot(cx - x[i], cy - y[i])
        if distance.size and distance.min() <= 1.5:
            j = int(np.argmin(distance))
            found[i], measured[i], used[j] = True, abs(float(table["snr"][j])), True
    # Detections that match no injected source and no residual of a star.
    false = int((~used & (table["flags"] == 0)).sum()) if not inject else int((~used).sum())
    return np.abs(wanted), found, measured, false, table


def peak_density(threshold, fwhm):
    """Expected peaks of |S| >= threshold per pixel for a Gaussian PSF of this FWHM."""
    sigma = fwhm / 2.3548
    lam = 1.0 / (2 * sigma ** 2)   # det(Lambda)^(1/2) of the filtered field
    return 2 * lam / (2 * np.pi) ** 1.5 * threshold * np.exp(-threshold ** 2 / 2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--frames", type=int, default=4, help="pairs per condition")
    parser.add_argument("--noise-frames", type=int, default=12, help="pure-noise pairs")
    parser.add_argument("--plot", help="write the completeness curve to this PNG")
    parser.add_argument("--text", help="also write the figures to this file, as an "
                                       "rst literal block (docs/detection_validation.txt)")
    args = parser.parse_args(argv)
    lines = []

    def report(line):
        print(line)
        lines.append(line)

    start = time.perf_counter()
    conditions = [(1.2, 30.0), (1.2, 150.0), (2.0, 30.0), (2.0, 150.0)]
    snr, found, measured = [], [], []
    for k, (psf_sigma, density) in enumerate(conditions):
        for f in range(args.frames):
            s, fo, m, _, _ = trial(psf_sigma, density, seed=1000 * k + f)
            snr.append(s), found.append(fo), measured.append(m)
    snr, found, measured = map(np.concatenate, (snr, found, measured))
    report(f"completeness at threshold 5 ({snr.size} injected sources, {len(conditions)} "
          "conditions: PSF sigma 1.2/2.0 px x 30/150 stars per 100^2 px)")
    centres, fractions = [], []
    for low, high in zip(BINS[:-1], BINS[1:]):
        sel = (snr >= low) & (snr < high)
        if sel.any():
            centres.append(0.5 * (low + high))
            fractions.append(found[sel].mean())
            report(f"  S/N {low:4.0f}-{high:<4.0f} n={sel.sum():4d}  "
                   f"found {found[sel].mean():6.1%}")
    bright = snr >= 8
    ratio = measured[bright & found] / snr[bright & found]
    report(f"S/N >= 8: {found[bright].mean():.1%} found within 1.5 px; median |snr|/expected "
          f"{np.median(ratio):.3f} (16-84%: {np.percentile(ratio, 16):.3f}-"
          f"{np.percentile(ratio, 84):.3f})")
    report(f"false positives per megapixel on {args.noise_frames} pure-noise "
          f"{SHAPE[0]}x{SHAPE[1]} pairs (unflagged / all):")
    for threshold in (4.0, 5.0, 6.0):
        counts, flagged_free = [], []
        for f in range(args.noise_frames):
            _, _, _, _, table = trial(1.5, 30.0, seed=50000 + f, threshold=threshold,
                                      inject=False)
            counts.append(len(table))
            flagged_free.append(int((table["flags"] == 0).sum()))
        mpx = args.noise_frames * SHAPE[0] * SHAPE[1] / 1e6
        fwhm = 2.3548 * np.hypot(1.5, KERNEL_SIGMA)
        report(f"  threshold {threshold:.0f}: {np.sum(flagged_free) / mpx:7.2f} / "
              f"{np.sum(counts) / mpx:7.2f} per Mpx; Gaussian-field expectation "
              f"{peak_density(threshold, fwhm) * 1e6:7.2f}; max per frame {max(counts)}")
    if args.plot:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(5, 3.5), layout="constrained")
        ax = figure.subplots()
        ax.plot(centres, fractions, "o-")
        ax.axvline(5.0, color="0.6", ls="--", label="threshold")
        ax.set_xlabel("expected matched-filter S/N")
        ax.set_ylabel("fraction found within 1.5 px")
        ax.set_xscale("log")
        ax.legend()
        figure.savefig(args.plot, dpi=110)
    report(f"total time {time.perf_counter() - start:.0f} s")
    if args.text:
        with open(args.text, "w") as handle:
            handle.write("::\n\n" + "".join(f"    {line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
