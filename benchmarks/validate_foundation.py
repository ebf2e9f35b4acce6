"""
Accuracy figures of the foundation: run by hand, prints the numbers quoted in the docs.

    python benchmarks/validate_foundation.py

1. The four noiseless tests of paper section 3.4 (float32 and float64):
   fractional errors of P and B0.
2. Ten S10-like 142 x 142 pairs with CCD noise (19 x 19 kernel): agreement
   with an independent numpy normal-equation solver (fixed weights, and
   IRLS for the model-dependent variance), deviation from the true P in
   units of sigma_P, and the mean/std of D/sigma.
3. Messy frames: Huber against Gaussian with cosmic rays and a variable
   star; sky-subtracted frames with and without the sky term; a reference
   as noisy as the target with and without ``reference_noise``.
"""

import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import reference_solver as rs  # noqa: E402

from astro_dia import DifferenceImager, NoiseModelWarning  # noqa: E402
from astro_dia.simulate import make_bias_test, make_image_pair  # noqa: E402

K, H = 19, 9


def bias_tests():
    print("## Noiseless tests (section 3.4): |dP/P|, |dB0/B0|, iterations")
    for kind in ("identity", "blur", "shift", "half_shift"):
        row = [f"{kind:<11}"]
        for dtype in ("float32", "float64"):
            reference, target, truth = make_bias_test(kind, seed=1)
            result = DifferenceImager(K, noise_model="uncertainty", dtype=dtype).fit(
                reference, target)
            e_p = abs(result.scale_factor / truth.scale_factor - 1)
            e_b = abs(result.background_offset.value / truth.background - 1)
            row.append(f"{dtype}: {e_p:.1e} {e_b:.1e} ({result.n_iterations})")
        print("  ".join(row))


def noisy_pairs():
    print("\n## Ten noisy 142x142 pairs (CCD noise, gain 1, read noise 5 adu)")
    fixed, irls, dev, zmean, zstd = [], [], [], [], []
    for seed in range(100, 110):
        reference, target, truth = make_image_pair(seed=seed, density=100)
        weights = 1.0 / target.uncertainty.array[H:-H, H:-H] ** 2
        kernel, *_ = rs.solve_weighted(reference.data, target.data, weights, K)
        result = DifferenceImager(K, noise_model="uncertainty").fit(reference, target)
        fixed.append(abs(result.scale_factor / kernel.sum() - 1))
        result = DifferenceImager(K, flat=1, sky=0).fit(reference, target)
        kernel, _, covariance, _ = rs.solve_reweighted(
            reference.data, target.data, lambda m: 25.0 + np.maximum(m, 0.0), K, tol=1e-10)
        irls.append(abs(result.scale_factor / kernel.sum() - 1))
        dev.append((result.scale_factor - 1) / rs.scale_factor_error(covariance, K))
        z = result.normalized_residuals()
        zmean.append(z.mean())
        zstd.append(z.std())
    print(f"fixed weights, |P/P_ref - 1|: max {max(fixed):.1e}")
    print(f"model-dependent sigma vs IRLS, |P/P_irls - 1|: max {max(irls):.1e}, "
          f"median {np.median(irls):.1e}")
    print(f"(P - 1)/sigma_P: {np.round(dev, 2).tolist()} (rms {np.sqrt(np.mean(np.square(dev))):.2f})")
    print(f"D/sigma: mean in [{min(zmean):.4f}, {max(zmean):.4f}], "
          f"std in [{min(zstd):.3f}, {max(zstd):.3f}]")


def messy_frames():
    print("\n## Outliers: |P - 1| for Gaussian / Huber (30 cosmic rays, variable +3e4 adu)")
    for seed in range(200, 203):
        reference, target, _ = make_image_pair(seed=seed, density=100, n_cosmic_rays=30,
                                               variable_flux=3e4)
        errors = [abs(DifferenceImager(K, flat=1, sky=0, loss=loss).fit(reference, target)
                      .scale_factor - 1) for loss in ("gaussian", "huber")]
        print(f"seed {seed}: gaussian {errors[0]:.4f}  huber {errors[1]:.4f}")

    print("\n## Sky-subtracted frames (target sky 1000 adu): P, std(D/sigma)")
    for seed in (300, 301):
        reference, target, _ = make_image_pair(seed=seed, density=100, sky_subtracted=True,
                                               reference_sky=300, target_sky=1000)
        for label, settings in (("SKYLEVEL keyword", {}), ("plain eq. 6 (sky=0)", {"sky": 0})):
            result = DifferenceImager(K, flat=1, **settings).fit(reference, target)
            print(f"seed {seed} {label:<22} P {result.scale_factor:.4f} "
                  f"std {result.normalized_residuals().std():.3f}")
        reference, target, _ = make_image_pair(seed=seed, density=100, sky_subtracted=True,
                                               record_sky=False, reference_sky=300,
                                               target_sky=1000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoiseModelWarning)
            result = DifferenceImager(K, flat=1).fit(reference, target)
        print(f"seed {seed} {'estimated sky':<22} P {result.scale_factor:.4f} "
              f"std {result.normalized_residuals().std():.3f} "
              f"sky {result.noise_settings['sky'][0]:.0f}")

    print("\n## Reference as noisy as the target (kernel sigma 0.3): P, std(D/sigma)")
    for seed in (400, 401):
        reference, target, _ = make_image_pair(seed=seed, density=100,
                                               reference_variance_ratio=1.0,
                                               kernel_sigma=0.3, reference_sky=300,
                                               target_sky=300)
        for label, flag in (("reference_noise=True", True), ("plain", False)):
            result = DifferenceImager(K, flat=1, sky=0, reference_noise=flag).fit(reference,
                                                                                 target)
            print(f"seed {seed} {label:<22} P {result.scale_factor:.4f} "
                  f"std {result.normalized_residuals().std():.3f}")


if __name__ == "__main__":
    bias_tests()
    noisy_pairs()
    messy_frames()
