"""
Reproduce the simulated-image experiments of the PyTorchDIA paper (section 3).

Run from the root of the source tree::

    python docs/validation/run_validation.py --n-pairs 100

(``--help`` lists the options.) Importing the module runs nothing.

It fits, with every requested solver and loss of
`~astro_dia.DifferenceImager`:

1. the four noiseless 'no algorithmic bias' pairs of paper section 3.4
   (`astro_dia.simulate.make_bias_test`: identity, Gaussian blur, one-pixel
   shift, half-pixel shift), in float32 and float64, and reports the
   fractional errors of P and B0;
2. ``--n-pairs`` S10-like pairs drawn as in paper section 3.1
   (`astro_dia.simulate.draw_s10_parameters` and
   `astro_dia.simulate.make_image_pair`: 142 x 142 pixels, PSF and kernel
   widths uniform in [0.5, 2.5] pixels, lg star density uniform in [0, 3],
   skies uniform in [10, 1000] adu, sub-pixel shifts, CCD noise with a
   reference ten times less noisy than the target; pairs whose target SNR
   is outside 8 to 1000, the range of the paper's Table 2, are redrawn),
   fitted with a 19 x 19 kernel and the CCD noise model, and reports P,
   MSE, MFB and MFV (paper eq. 28-30, `astro_dia.metrics`) and, from PSF
   photometry of the central star on the difference image (section 3.2
   (iii)), MPB and MPV (eq. 32-33), grouped by target SNR and sampling
   regime as in the paper's Table 2, beside the values of that table.

The tables are written to ``--out`` (default: this directory) as ECSV
(``*.ecsv``, every number) and reStructuredText (``*.rst``, included by
``docs/validation.rst``). The ``.rst`` files start with an ``:orphan:``
line so that Sphinx does not ask for them in a toctree; the page includes
them from their third line.

A solver or loss that `~astro_dia.DifferenceImager` rejects with a
ValueError (e.g. a solver not implemented in the installed version) is
skipped with a message. The pairs do not depend on the solvers, losses or
``--n-pairs``: pair ``k`` of a run with ``--seed s`` is the same in every
run with that seed.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import astropy
import numpy as np
import torch
from astropy.table import Table
from photutils.psf import CircularGaussianSigmaPRF
from scipy import ndimage, signal

import astro_dia
from astro_dia import DifferenceImager, metrics
from astro_dia.simulate import draw_s10_parameters, make_bias_test, make_image_pair

__all__ = ["main", "PAPER_TABLE2", "PAPER_BIAS"]

# --------------------------------------------------------------------------
# The paper's numbers (Hitchcock et al. 2021, MNRAS).
# --------------------------------------------------------------------------

#: Section 3.4, tests (i)-(iv): fractional errors of P and B0 of PyTorchDIA
#: in float32.
PAPER_BIAS = {"identity": (4e-7, 1e-8), "blur": (3e-7, 1e-8), "shift": (4e-7, 1e-8),
              "half_shift": (4e-7, 1e-8)}

#: Sampling regimes of Table 2 (columns), in the paper's order.
SAMPLING = ("phiR>1 phiK>1", "phiR>1 phiK<1", "phiR<1 phiK>1", "phiR<1 phiK<1")

#: SNR regimes of section 3.3 (rows of Table 2).
SNR_REGIMES = {1: (8.0, 40.0), 2: (40.0, 200.0), 3: (200.0, 1000.0)}

#: Table 2, rows P, MSE, MFB and MFV: (metric, implementation, SNR regime) ->
#: one (median, +(84th - median), -(median - 16th)) per sampling regime.
PAPER_TABLE2 = {
    ("P", "B08", 1): [(0.9961, 0.0335, 0.0358), (0.9942, 0.0316, 0.0380),
                      (0.9968, 0.0273, 0.0323), (0.9900, 0.0279, 0.0342)],
    ("P", "PyTorchDIA", 1): [(0.9948, 0.0335, 0.0360), (0.9926, 0.0320, 0.0376),
                             (0.9913, 0.0277, 0.0328), (0.9848, 0.0285, 0.0368)],
    ("P", "B08", 2): [(0.9994, 0.0125, 0.0125), (0.9989, 0.0124, 0.0134),
                      (0.9996, 0.0101, 0.0108), (0.9987, 0.0103, 0.0111)],
    ("P", "PyTorchDIA", 2): [(0.9989, 0.0124, 0.0126), (0.9983, 0.0128, 0.0135),
                             (0.9980, 0.0098, 0.0112), (0.9969, 0.0114, 0.0135)],
    ("P", "B08", 3): [(0.9998, 0.0045, 0.0046), (0.9997, 0.0045, 0.0046),
                      (1.0001, 0.0037, 0.0040), (1.0001, 0.0039, 0.0040)],
    ("P", "PyTorchDIA", 3): [(0.9996, 0.0045, 0.0045), (0.9999, 0.0047, 0.0050),
                             (0.9995, 0.0038, 0.0040), (0.9996, 0.0042, 0.0049)],
    ("MSE", "B08", 1): [(528.53, 328.79, 329.61), (552.62, 310.51, 349.03),
                        (539.85, 318.94, 342.21), (545.34, 313.22, 340.47)],
    ("MSE", "PyTorchDIA", 1): [(528.54, 328.80, 329.60), (552.63, 310.51, 349.03),
                               (539.86, 318.95, 342.21), (545.42, 314.59, 340.54)],
    ("MSE", "B08", 2): [(530.88, 343.43, 330.54), (537.47, 337.46, 328.53),
                        (532.74, 342.01, 337.18), (553.47, 336.57, 347.22)],
    ("MSE", "PyTorchDIA", 2): [(530.90, 343.43, 330.55), (537.92, 337.16, 328.88),
                               (532.82, 341.94, 337.24), (555.51, 337.07, 346.81)],
    ("MSE", "B08", 3): [(597.17, 352.67, 362.18), (608.09, 361.21, 361.96),
                        (585.85, 365.45, 356.65), (626.40, 415.64, 366.67)],
    ("MSE", "PyTorchDIA", 3): [(597.33, 352.64, 362.28), (610.09, 361.05, 363.08),
                               (585.93, 365.41, 356.49), (634.81, 415.59, 371.31)],
    ("MFB", "B08", 1): [(-0.0001, 0.0000, 0.0001), (-0.0002, 0.0001, 0.0002),
                        (-0.0001, 0.0000, 0.0001), (-0.0004, 0.0002, 0.0003)],
    ("MFB", "PyTorchDIA", 1): [(0.0004, 0.0004, 0.0003), (0.0001, 0.0003, 0.0003),
                               (0.0003, 0.0004, 0.0004), (-0.0002, 0.0005, 0.0006)],
    ("MFB", "B08", 2): [(-0.0001, 0.0000, 0.0001), (-0.0003, 0.0001, 0.0002),
                        (-0.0001, 0.0000, 0.0001), (-0.0004, 0.0002, 0.0004)],
    ("MFB", "PyTorchDIA", 2): [(0.0004, 0.0005, 0.0004), (0.0001, 0.0009, 0.0008),
                               (0.0003, 0.0004, 0.0003), (-0.0002, 0.0044, 0.0060)],
    ("MFB", "B08", 3): [(-0.0001, 0.0001, 0.0001), (-0.0003, 0.0001, 0.0003),
                        (-0.0001, 0.0001, 0.0002), (-0.0005, 0.0003, 0.0008)],
    ("MFB", "PyTorchDIA", 3): [(0.0004, 0.0007, 0.0007), (0.0003, 0.0018, 0.0013),
                               (0.0003, 0.0005, 0.0004), (-0.0008, 0.0025, 0.0044)],
    ("MFV", "B08", 1): [(0.9792, 0.0116, 0.0112), (0.9851, 0.0116, 0.0115),
                        (0.9794, 0.0114, 0.0115), (0.9911, 0.0115, 0.0127)],
    ("MFV", "PyTorchDIA", 1): [(0.9793, 0.0116, 0.0112), (0.9851, 0.0117, 0.0115),
                               (0.9794, 0.0114, 0.0115), (0.9912, 0.0116, 0.0127)],
    ("MFV", "B08", 2): [(0.9796, 0.0113, 0.0116), (0.9862, 0.0121, 0.0123),
                        (0.9797, 0.0113, 0.0117), (0.9930, 0.0143, 0.0133)],
    ("MFV", "PyTorchDIA", 2): [(0.9797, 0.0113, 0.0116), (0.9863, 0.0123, 0.0123),
                               (0.9798, 0.0113, 0.0117), (0.9933, 0.0147, 0.0134)],
    ("MFV", "B08", 3): [(0.9794, 0.0114, 0.0112), (0.9875, 0.0122, 0.0117),
                        (0.9797, 0.0118, 0.0113), (0.9974, 0.0304, 0.0156)],
    ("MFV", "PyTorchDIA", 3): [(0.9796, 0.0114, 0.0112), (0.9878, 0.0128, 0.0118),
                               (0.9799, 0.0118, 0.0114), (0.9982, 0.0384, 0.0161)],
}

#: Table 2, rows MPB and MPV (eq. 32, 33): (metric, implementation, SNR
#: regime) -> one value per sampling regime.
PAPER_PHOTOMETRY = {
    ("MPB", "B08", 1): [0.401, 0.880, 0.300, 0.900],
    ("MPB", "PyTorchDIA", 1): [0.400, 0.862, 0.300, 0.887],
    ("MPB", "B08", 2): [0.138, 0.324, 0.038, 0.184],
    ("MPB", "PyTorchDIA", 2): [0.136, 0.313, 0.036, 0.176],
    ("MPB", "B08", 3): [0.027, 0.074, -0.055, -0.219],
    ("MPB", "PyTorchDIA", 3): [0.023, 0.046, -0.059, -0.257],
    ("MPV", "B08", 1): [0.640, 0.760, 0.640, 0.937],
    ("MPV", "PyTorchDIA", 1): [0.639, 0.754, 0.640, 0.955],
    ("MPV", "B08", 2): [0.692, 0.728, 0.725, 0.951],
    ("MPV", "PyTorchDIA", 2): [0.693, 0.728, 0.726, 1.066],
    ("MPV", "B08", 3): [0.789, 0.788, 0.880, 1.339],
    ("MPV", "PyTorchDIA", 3): [0.789, 0.794, 0.883, 1.478],
}

#: Table 2, bottom section: number of simulations per SNR regime and
#: sampling regime.
PAPER_N_SIMULATIONS = {1: (12332, 4151, 4078, 1349), 2: (13224, 4447, 4387, 1526),
                       3: (14673, 4900, 4829, 1673)}

METRICS = ("P", "MSE", "MFB", "MFV")
PHOTOMETRY = ("MPB", "MPV")
DECIMALS = {"P": 4, "MSE": 2, "MSE_noisy": 2, "MFB": 4, "MFV": 4, "MFV_expected": 4,
            "MPB": 3, "MPV": 3}
BIAS_KINDS = ("identity", "blur", "shift", "half_shift")
BIAS_DTYPES = ("float32", "float64")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def _names(values):
    """Split ``['a,b', 'c']`` into ``['a', 'b', 'c']``."""
    return [name for value in values for name in value.split(",") if name]


def parse_args(argv=None):
    """Parse the command line (``argv`` without the program name)."""
    parser = argparse.ArgumentParser(
        prog="run_validation.py",
        description="Reproduce the simulated-image tests of the PyTorchDIA paper "
                    "(sections 3.1-3.4) with astro_dia and tabulate P, MSE, MFB, MFV, MPB, MPV.")
    parser.add_argument("--n-pairs", type=int, default=100,
                        help="number of S10-like pairs (default: 100)")
    parser.add_argument("--solvers", nargs="+", default=["iterative", "direct"],
                        help="solvers to compare, space or comma separated; those that "
                             "DifferenceImager rejects are skipped (default: iterative "
                             "direct; cg is slow on the noiseless bias tests)")
    parser.add_argument("--losses", nargs="+", default=["gaussian", "huber"],
                        help="losses to compare (default: gaussian huber)")
    parser.add_argument("--seed", type=int, default=2021,
                        help="seed of the simulations (default: 2021)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="directory for the tables (default: the script's directory)")
    parser.add_argument("--kernel-size", type=int, default=19,
                        help="kernel size in pixels (default: 19, as in the paper)")
    parser.add_argument("--shape", type=int, default=142,
                        help="side of the square images in pixels (default: 142)")
    parser.add_argument("--bias-kinds", nargs="*", default=list(BIAS_KINDS),
                        help="section 3.4 tests to run (default: all four; none to skip)")
    parser.add_argument("--all-snr", action="store_true",
                        help="fit every drawn pair; by default pairs whose target SNR is "
                             "outside 8 to 1000 (the SNR regimes of the paper's Table 2) are "
                             "redrawn")
    parser.add_argument("--dtype", default="float32",
                        help="floating-point type of the S10-like fits (default: float32, "
                             "as in the paper)")
    args = parser.parse_args(argv)
    args.solvers = _names(args.solvers)
    args.losses = _names(args.losses)
    args.bias_kinds = _names(args.bias_kinds)
    if args.n_pairs < 0:
        parser.error(f"--n-pairs must be >= 0, got {args.n_pairs}")
    unknown = sorted(set(args.bias_kinds) - set(BIAS_KINDS))
    if unknown:
        parser.error(f"unknown --bias-kinds {unknown}; choose from {list(BIAS_KINDS)}")
    return args


# --------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------

def _imager(kernel_size, solver, loss, **settings):
    """A DifferenceImager, or the reason it cannot be made (a string)."""
    try:
        return DifferenceImager(kernel_size, solver=solver, loss=loss, **settings)
    except ValueError as error:
        return str(error)


def _fit(imager, reference, target):
    """Fit, recording (not raising) warnings; return the result and their messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = imager.fit(reference, target)
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return result, messages


def _combinations(args, report, **settings):
    """The (solver, loss) pairs DifferenceImager accepts, announcing the others."""
    accepted = []
    for solver in args.solvers:
        for loss in args.losses:
            imager = _imager(args.kernel_size, solver, loss, **settings)
            if isinstance(imager, str):
                report(f"skipping solver={solver!r}, loss={loss!r}: {imager}")
                continue
            accepted.append((solver, loss))
    return accepted


def run_bias_tests(args, combinations, report):
    """Section 3.4: fractional errors of P and B0 on the noiseless pairs."""
    shape = (args.shape, args.shape)
    rows = []
    for kind in args.bias_kinds:
        reference, target, truth = make_bias_test(kind, shape=shape,
                                                  kernel_size=args.kernel_size,
                                                  seed=args.seed)
        for solver, loss in combinations:
            for dtype in BIAS_DTYPES:
                imager = _imager(args.kernel_size, solver, loss, noise_model="uncertainty",
                                 dtype=dtype)
                if isinstance(imager, str):
                    report(f"skipping bias test {kind} with solver={solver!r}, "
                           f"loss={loss!r}, dtype={dtype}: {imager}")
                    continue
                result, messages = _fit(imager, reference, target)
                fitted = result.fit_mask
                sigma = target.uncertainty.array[fitted]
                rows.append(dict(
                    kind=kind, solver=solver, loss=loss, dtype=dtype,
                    P=result.scale_factor, P_true=truth.scale_factor,
                    eps_P=abs(result.scale_factor / truth.scale_factor - 1),
                    eps_B0=abs(result.background_offset.value / truth.background - 1),
                    max_abs_residual=float(np.max(np.abs(
                        target.data[fitted] - result.model.data[fitted]) / sigma)),
                    n_iterations=int(result.n_iterations), converged=bool(result.converged),
                    fit_time=float(result.fit_time),
                    paper_eps_P=PAPER_BIAS[kind][0], paper_eps_B0=PAPER_BIAS[kind][1],
                    warnings="; ".join(messages)))
                report(f"bias {kind:<10} {solver}/{loss}/{dtype}: eps_P {rows[-1]['eps_P']:.1e} "
                       f"eps_B0 {rows[-1]['eps_B0']:.1e}")
    table = Table(rows=rows, names=list(rows[0]) if rows else None)
    if rows:
        table.meta["description"] = ("Paper section 3.4 noiseless tests: fractional errors of "
                                     "P and B0; max |I - M| / sigma on the fitted pixels.")
    return table


def _gaussian_stamp(size, sigma, x, y):
    """A normalised, pixel-integrated circular Gaussian centred at (x, y) on a square stamp."""
    yy, xx = np.mgrid[0:size, 0:size]
    return CircularGaussianSigmaPRF(sigma=sigma, x_0=x, y_0=y, flux=1.0)(xx, yy)


def psf_photometry(result, truth, settings, sigma):
    """
    PSF photometry of the brightest star on the difference image (paper section 3.2 (iii)).

    The PSF is the reference PSF (a Gaussian of width phi_R at the star's
    reference position) convolved with the fitted kernel and renormalised,
    on a stamp of about 9 phi_I x 9 phi_I pixels; its amplitude and an
    additive constant are fitted to the difference image by linear least
    squares weighted with the true target variance. Returns the flux on the
    reference scale, F_diff / P (the true value is 0), and the theoretical
    minimum standard deviation of eq. 31 with the true target PSF.
    """
    star = truth.stars[int(np.argmax(truth.stars["flux"]))]
    x, y = float(star["x"]), float(star["y"])
    dy, dx = settings["shift"]
    half = int(round(4.5 * truth.settings["target_psf_sigma"]))
    size = 2 * half + 1
    x0, y0 = int(round(x)) - half, int(round(y)) - half
    stamp = (slice(y0, y0 + size), slice(x0, x0 + size))
    k = result.kernel.shape[0] // 2
    reference_psf = _gaussian_stamp(size + 2 * k, settings["psf_sigma"], x - x0 + k, y - y0 + k)
    psf = signal.convolve(reference_psf, result.kernel, mode="valid")
    psf = psf / psf.sum()
    data = result.difference.data[stamp]
    weights = 1.0 / sigma[stamp] ** 2
    design = np.stack([psf.ravel(), np.ones(psf.size)], axis=1)
    normal = design.T @ (design * weights.reshape(-1, 1))
    flux_diff = np.linalg.solve(normal, design.T @ (weights * data).ravel())[0]
    true_psf = _gaussian_stamp(size, truth.settings["target_psf_sigma"], x + dx - x0,
                               y + dy - y0)
    variance = metrics.minimum_flux_variance(true_psf / true_psf.sum(), sigma[stamp],
                                             scale_factor=truth.scale_factor)
    return float(flux_diff / result.scale_factor), float(np.sqrt(variance))


def _snr_regime(snr):
    for regime, (low, high) in SNR_REGIMES.items():
        if low < snr < high:
            return regime
    return 0


def _sampling(psf_sigma, kernel_sigma):
    return SAMPLING[2 * int(psf_sigma < 1) + int(kernel_sigma < 1)]


def run_s10(args, combinations, report):
    """Sections 3.1-3.3: fit the S10-like pairs; one row per pair and fit."""
    shape = (args.shape, args.shape)
    n_parameters = args.kernel_size ** 2 + 1
    rows = []
    root = np.random.SeedSequence(args.seed)
    index = n_drawn = 0
    while index < args.n_pairs:
        if n_drawn >= 50 * args.n_pairs + 100:
            raise RuntimeError(f"only {index} of {n_drawn} drawn pairs had a target SNR "
                               "between 8 and 1000; use --all-snr")
        (sequence,) = root.spawn(1)
        n_drawn += 1
        rng = np.random.default_rng(sequence)
        settings = draw_s10_parameters(rng)
        reference, target, truth = make_image_pair(shape, seed=rng, **settings)
        sigma = np.sqrt(truth.target_variance)
        snr = metrics.signal_to_noise(truth.target_noiseless, settings["target_sky"], sigma)
        # Reference noise seen through the kernel, relative to the target noise.
        reference_noise = ndimage.convolve(truth.reference_variance, truth.kernel ** 2,
                                           mode="constant") / truth.target_variance
        if _snr_regime(snr) == 0 and not args.all_snr:
            continue
        pair = dict(pair=index, draw=n_drawn - 1, psf_sigma=settings["psf_sigma"],
                    kernel_sigma=settings["kernel_sigma"], density=settings["density"],
                    n_stars=len(truth.stars), reference_sky=settings["reference_sky"],
                    target_sky=settings["target_sky"], snr=snr, snr_regime=_snr_regime(snr),
                    sampling=_sampling(settings["psf_sigma"], settings["kernel_sigma"]))
        for solver, loss in combinations:
            imager = _imager(args.kernel_size, solver, loss, flat=1, sky=0, dtype=args.dtype)
            result, messages = _fit(imager, reference, target)
            outside = ~result.fit_mask
            model = result.model.data
            error = result.scale_factor_error
            flux, sigma_min = psf_photometry(result, truth, settings, sigma)
            rows.append(dict(
                pair, solver=solver, loss=loss,
                P=result.scale_factor,
                P_error=np.nan if error is None else float(error),
                B0_error=result.background_offset.value - truth.background,
                MSE=metrics.mean_squared_error(model, truth.target_noiseless, mask=outside),
                MSE_noisy=metrics.mean_squared_error(model, target.data, mask=outside),
                MFB=metrics.mean_fit_bias(target.data, model, sigma, mask=outside),
                MFV=metrics.mean_fit_variance(target.data, model, sigma, mask=outside),
                MFV_expected=(1 - n_parameters / result.n_data
                              + float(np.mean(reference_noise[result.fit_mask]))),
                flux=flux, sigma_min=sigma_min, flux_pull=flux / sigma_min,
                n_data=int(result.n_data), n_iterations=int(result.n_iterations),
                converged=bool(result.converged), fit_time=float(result.fit_time),
                warnings="; ".join(messages)))
            report(f"pair {index:>3} {solver}/{loss}: SNR {snr:7.1f} P {result.scale_factor:.4f} "
                   f"MFV {rows[-1]['MFV']:.4f} ({result.fit_time:.2f} s)")
        index += 1
    table = Table(rows=rows, names=list(rows[0]) if rows else None)
    table.meta["n_drawn"] = n_drawn
    table.meta["description"] = (
        "S10-like pairs (paper section 3.1): one row per pair and (solver, loss). MSE is eq. 28 "
        "(model against the noiseless target), MSE_noisy the same against the noisy target; "
        "MFB and MFV (eq. 29, 30) use the true target sigma; B0_error is B0 - B0_true; "
        "MFV_expected = 1 - N_par / N_data + mean(sigma_R^2 (x) K^2 / sigma_I^2), the MFV of "
        "an exact maximum-likelihood fit of N_par parameters with the reference noise; flux is "
        "the PSF flux of the brightest star on the difference image over P (true value 0), "
        "sigma_min its minimum standard deviation (eq. 31).")
    return table


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------

def _percentiles(values):
    """(median, +(84th - median), -(median - 16th)) and the count."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.nan, np.nan, np.nan, 0
    low, median, high = np.percentile(values, [16, 50, 84])
    return float(median), float(high - median), float(median - low), int(values.size)


def summarize(pairs, combinations):
    """One row per (solver, loss): medians and 16th/84th percentiles over all pairs."""
    rows = []
    for solver, loss in combinations:
        chosen = pairs[(pairs["solver"] == solver) & (pairs["loss"] == loss)]
        if len(chosen) == 0:
            continue
        row = dict(solver=solver, loss=loss, n_pairs=len(chosen),
                   n_converged=int(np.sum(chosen["converged"])))
        for name in ("P", "MSE", "MSE_noisy", "MFB", "MFV", "MFV_expected"):
            median, plus, minus, _ = _percentiles(chosen[name])
            row.update({name: median, f"{name}_plus": plus, f"{name}_minus": minus})
        row["MPB"] = metrics.mean_photometric_bias(chosen["flux"], chosen["sigma_min"])
        row["MPV"] = metrics.mean_photometric_variance(chosen["flux"], chosen["sigma_min"])
        pull = (np.asarray(chosen["P"]) - 1) / np.asarray(chosen["P_error"])
        row["P_pull_rms"] = float(np.sqrt(np.nanmean(pull ** 2)))
        row["median_fit_time"] = float(np.median(chosen["fit_time"]))
        row["total_fit_time"] = float(np.sum(chosen["fit_time"]))
        rows.append(row)
    table = Table(rows=rows, names=list(rows[0]) if rows else None)
    table.meta["description"] = ("S10-like pairs, all SNR: medians with +(84th - 50th) and "
                                 "-(50th - 16th) percentiles; P_pull_rms is the rms of "
                                 "(P - 1) / sigma_P.")
    return table


def table2(pairs, combinations):
    """Long-format Table 2 of astro_dia: one row per metric, fit, SNR and sampling regime."""
    rows = []
    for solver, loss in combinations:
        chosen = pairs[(pairs["solver"] == solver) & (pairs["loss"] == loss)]
        for metric in METRICS + ("MFV_expected",):
            for regime in SNR_REGIMES:
                for sampling in SAMPLING:
                    cell = chosen[(chosen["snr_regime"] == regime)
                                  & (chosen["sampling"] == sampling)]
                    median, plus, minus, count = _percentiles(cell[metric])
                    rows.append(dict(metric=metric, solver=solver, loss=loss,
                                     snr_regime=regime, sampling=sampling, n=count,
                                     value=median, plus=plus, minus=minus))
        for regime in SNR_REGIMES:
            for sampling in SAMPLING:
                cell = chosen[(chosen["snr_regime"] == regime)
                              & (chosen["sampling"] == sampling)]
                count = len(cell)
                bias = (metrics.mean_photometric_bias(cell["flux"], cell["sigma_min"])
                        if count >= 1 else np.nan)
                variance = (metrics.mean_photometric_variance(cell["flux"], cell["sigma_min"])
                            if count >= 2 else np.nan)
                for metric, value in (("MPB", bias), ("MPV", variance)):
                    rows.append(dict(metric=metric, solver=solver, loss=loss,
                                     snr_regime=regime, sampling=sampling, n=count,
                                     value=value, plus=np.nan, minus=np.nan))
    table = Table(rows=rows, names=["metric", "solver", "loss", "snr_regime", "sampling", "n",
                                    "value", "plus", "minus"])
    table.meta["description"] = (
        "astro_dia's Table 2: for P, MSE, MFB, MFV and MFV_expected the median over the pairs "
        "of the cell with +(84th - 50th) and -(50th - 16th) percentiles; for MPB and MPV "
        "(eq. 32, 33) the statistic over the pairs of the cell.")
    return table


def paper_table2():
    """The transcribed rows of the paper's Table 2 as a long-format table."""
    rows = []
    for (metric, source, regime), cells in PAPER_TABLE2.items():
        for sampling, (median, plus, minus), count in zip(
                SAMPLING, cells, PAPER_N_SIMULATIONS[regime]):
            rows.append(dict(metric=metric, source=source, snr_regime=regime,
                             sampling=sampling, n=count, value=median, plus=plus,
                             minus=minus))
    for (metric, source, regime), cells in PAPER_PHOTOMETRY.items():
        for sampling, value, count in zip(SAMPLING, cells, PAPER_N_SIMULATIONS[regime]):
            rows.append(dict(metric=metric, source=source, snr_regime=regime,
                             sampling=sampling, n=count, value=value, plus=np.nan,
                             minus=np.nan))
    table = Table(rows=rows)
    table.meta["description"] = ("Hitchcock et al. (2021, MNRAS) Table 2, transcribed: median "
                                 "with +(84th - 50th) and -(50th - 16th) percentiles for P, "
                                 "MSE, MFB and MFV; the value for MPB and MPV; n is the row "
                                 "N_Simulations.")
    return table


# --------------------------------------------------------------------------
# reStructuredText
# --------------------------------------------------------------------------

def _list_table(header, rows, *, title=None, widths=None):
    lines = [f".. list-table:: {title}" if title else ".. list-table::",
             "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(str(w) for w in widths))
    lines.append("")
    for row in [header] + rows:
        cells = [str(cell) if str(cell) != "" else ".." for cell in row]
        lines.append(f"   * - {cells[0]}")
        lines.extend(f"     - {cell}" for cell in cells[1:])
    return "\n".join(lines) + "\n"


def _spread(median, plus, minus, decimals, count=None):
    """'median (+plus / -minus)'; the median alone for fewer than 3 values."""
    if count == 0 or not np.isfinite(median):
        return "--"
    if (count is not None and count < 3) or not np.isfinite(plus):
        return f"{median:.{decimals}f}"
    return f"{median:.{decimals}f} (+{plus:.{decimals}f} / -{minus:.{decimals}f})"


def _orphan(text):
    """An .rst fragment: ':orphan:' (so Sphinx builds it alone without a toctree) + text."""
    return ":orphan:\n\n" + text


def bias_rst(table):
    if len(table) == 0:
        return _orphan("No section 3.4 test was run.\n")
    header = ["Test", "Solver", "Loss", "dtype", "eps_P", "eps_B0", "max abs(I-M)/sigma",
              "Iterations", "Paper eps_P", "Paper eps_B0"]
    rows = [[row["kind"], row["solver"], row["loss"], row["dtype"], f"{row['eps_P']:.1e}",
             f"{row['eps_B0']:.1e}", f"{row['max_abs_residual']:.1e}", row["n_iterations"],
             f"{row['paper_eps_P']:.0e}", f"{row['paper_eps_B0']:.0e}"] for row in table]
    return _orphan(_list_table(header, rows))


def summary_rst(summary):
    header = ["Solver", "Loss", "Pairs (converged)", "P", "MSE (eq. 28)",
              "MSE against noisy target", "MFB", "MFV", "MFV expected for an exact fit",
              "MPB", "MPV", "rms (P-1)/sigma_P", "Median fit time (s)"]
    rows = []
    for row in summary:
        rows.append([row["solver"], row["loss"], f"{row['n_pairs']} ({row['n_converged']})"]
                    + [_spread(row[name], row[f"{name}_plus"], row[f"{name}_minus"],
                               DECIMALS[name])
                       for name in ("P", "MSE", "MSE_noisy", "MFB", "MFV", "MFV_expected")]
                    + [f"{row['MPB']:.3f}", f"{row['MPV']:.3f}", f"{row['P_pull_rms']:.2f}",
                       f"{row['median_fit_time']:.2f}"])
    medians = {metric: [cell[0] for (name, source, _), cells in PAPER_TABLE2.items()
                        if name == metric and source == "PyTorchDIA" for cell in cells]
               for metric in METRICS}
    medians.update({metric: [value for (name, source, _), cells in PAPER_PHOTOMETRY.items()
                             if name == metric and source == "PyTorchDIA" for value in cells]
                    for metric in PHOTOMETRY})

    def paper_range(metric):
        decimals = DECIMALS[metric]
        return f"{min(medians[metric]):.{decimals}f} to {max(medians[metric]):.{decimals}f}"

    rows.append(["Paper: PyTorchDIA, range of the 12 Table 2 medians", "gaussian", "71 569",
                 paper_range("P"), paper_range("MSE"), "--", paper_range("MFB"),
                 paper_range("MFV"), "--", paper_range("MPB"), paper_range("MPV"), "--",
                 "--"])
    return _orphan(_list_table(header, rows))


def table2_rst(ours, counts):
    """Table 2 layout: for each metric, rows (SNR regime, source), columns sampling regimes."""
    parts = []
    combos = sorted({(row["solver"], row["loss"]) for row in ours},
                    key=lambda c: (c[0] != "iterative", c))

    def cells(metric, solver, loss, regime):
        values = []
        for sampling in SAMPLING:
            row = ours[(ours["metric"] == metric) & (ours["solver"] == solver)
                       & (ours["loss"] == loss) & (ours["snr_regime"] == regime)
                       & (ours["sampling"] == sampling)][0]
            values.append(_spread(row["value"], row["plus"], row["minus"], DECIMALS[metric],
                                  row["n"]))
        return values

    for metric in METRICS + PHOTOMETRY:
        rows = []
        for regime in SNR_REGIMES:
            for source in ("B08", "PyTorchDIA"):
                if metric in PHOTOMETRY:
                    paper = [f"{value:.3f}"
                             for value in PAPER_PHOTOMETRY[(metric, source, regime)]]
                else:
                    paper = [_spread(*cell, DECIMALS[metric])
                             for cell in PAPER_TABLE2[(metric, source, regime)]]
                rows.append([f"Paper: {source}", regime] + paper)
            for solver, loss in combos:
                rows.append([f"astro_dia: {solver}, {loss}", regime]
                            + cells(metric, solver, loss, regime))
            if metric == "MFV" and combos:
                rows.append(["Expected for an exact fit (astro_dia's pairs)", regime]
                            + cells("MFV_expected", *combos[0], regime))
        parts.append(_list_table(["Source", "SNR regime"] + list(SAMPLING), rows,
                                 title=metric, widths=[20, 8, 18, 18, 18, 18]))
    rows = []
    for regime in SNR_REGIMES:
        rows.append(["Paper", regime] + list(PAPER_N_SIMULATIONS[regime]))
        rows.append(["astro_dia", regime] + [counts.get((regime, s), 0) for s in SAMPLING])
    parts.append(_list_table(["Source", "SNR regime"] + list(SAMPLING), rows,
                             title="Number of simulations", widths=[20, 8, 18, 18, 18, 18]))
    return _orphan("\n".join(parts))


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    device = "CUDA: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return (f"{cpu}, {os.cpu_count()} logical cores ({torch.get_num_threads()} torch "
            f"threads), {platform.system()} {platform.release()}, {device}")


def _source_state():
    """The git commit of the source tree and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=root, capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"git commit {commit}" + (" with uncommitted changes" if changes else "")


def run_info_rst(args, argv, timings, skipped, pairs):
    command = "python docs/validation/run_validation.py " + " ".join(argv)
    lines = [
        f"- Command: ``{command.strip()}`` (from the root of the source tree)",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {_machine()}",
        f"- Versions: astro_dia {astro_dia.__version__}, PyTorch {torch.__version__}, "
        f"numpy {np.__version__}, astropy {astropy.__version__}, Python "
        f"{platform.python_version()}; source: {_source_state()}",
        f"- Settings: {args.shape} x {args.shape} pixels, {args.kernel_size} x "
        f"{args.kernel_size} kernel, seed {args.seed}, {args.n_pairs} S10-like pairs "
        f"(fits in {args.dtype}), section 3.4 tests: "
        f"{', '.join(args.bias_kinds) if args.bias_kinds else 'none'}",
    ]
    if len(pairs):
        regimes = np.asarray(pairs["snr_regime"][(pairs["solver"] == pairs["solver"][0])
                                                 & (pairs["loss"] == pairs["loss"][0])])
        if args.all_snr:
            lines.append(f"- Target SNR outside 8 to 1000 (in no SNR regime, fitted but left "
                         f"out of Table 2): {int(np.sum(regimes == 0))} of {args.n_pairs} "
                         "pairs")
        else:
            lines.append(f"- Pairs drawn: {pairs.meta['n_drawn']}, of which "
                         f"{pairs.meta['n_drawn'] - args.n_pairs} had a target SNR outside "
                         "8 to 1000 and were redrawn (not fitted)")
    for label, seconds in timings.items():
        lines.append(f"- Wall-clock time, {label}: {seconds:.0f} s")
    for message in skipped:
        lines.append(f"- Skipped: {message}")
    return _orphan("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main(argv=None):
    """
    Run the validation and write the tables.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments without the program name (default:
        ``sys.argv[1:]``).

    Returns
    -------
    status : int
        0 on success.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped = []

    def report(message):
        print(message, flush=True)
        if message.startswith("skipping"):
            skipped.append(message[len("skipping "):])

    timings = {}
    combinations = _combinations(args, report, flat=1, sky=0)
    if not combinations:
        report("no solver and loss was accepted by DifferenceImager; nothing to do")
        return 1

    start = time.perf_counter()
    bias = run_bias_tests(args, combinations, report)
    timings["section 3.4 tests"] = time.perf_counter() - start
    if len(bias):
        bias.write(out / "bias_tests.ecsv", overwrite=True)
    (out / "bias_tests.rst").write_text(bias_rst(bias))

    start = time.perf_counter()
    pairs = run_s10(args, combinations, report)
    timings[f"{args.n_pairs} S10-like pairs (simulation and all fits)"] = (
        time.perf_counter() - start)
    for solver, loss in combinations:
        if len(pairs):
            chosen = pairs[(pairs["solver"] == solver) & (pairs["loss"] == loss)]
            timings[f"fits with {solver}/{loss}"] = float(np.sum(chosen["fit_time"]))
    if len(pairs):
        pairs.write(out / "s10_pairs.ecsv", overwrite=True)
        summary = summarize(pairs, combinations)
        summary.write(out / "s10_summary.ecsv", overwrite=True)
        (out / "s10_summary.rst").write_text(summary_rst(summary))
        ours = table2(pairs, combinations)
        ours.write(out / "s10_table2.ecsv", overwrite=True)
        first = pairs[(pairs["solver"] == combinations[0][0])
                      & (pairs["loss"] == combinations[0][1])]
        counts = {(regime, sampling): int(np.sum((first["snr_regime"] == regime)
                                                 & (first["sampling"] == sampling)))
                  for regime in SNR_REGIMES for sampling in SAMPLING}
        paper_table2().write(out / "paper_table2.ecsv", overwrite=True)
        (out / "s10_table2.rst").write_text(table2_rst(ours, counts))
    (out / "run_info.rst").write_text(run_info_rst(args, argv, timings, skipped, pairs))
    print(f"tables written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
