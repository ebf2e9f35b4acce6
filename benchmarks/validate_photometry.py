"""
Validate photometry on difference images against simulations with known truth.

Run by hand (about two minutes on two CPU cores)::

    python benchmarks/validate_photometry.py [--plot docs/_static/photometry_lightcurve.png]
                                             [--exclude-radius 6]

It prints the figures quoted in docs/photometry.rst:

1. variable stars of known flux change: the fraction of measured
   ``flux_ref`` within 3 sigma of the truth, and the mean and standard
   deviation of the normalised errors ``(flux_ref - truth) / flux_ref_err``
   (the photometric analogues of MFB and MFV, paper eq. 29-30);
2. constant stars: the same, plus the measured flux variance over the
   theoretical minimum of eq. 31 (MPV, eq. 33) and the quoted error's
   ratio to that minimum;
3. a light curve of a sinusoidal variable over 24 epochs: its fitted
   amplitude and phase against the input.
"""

import argparse
import time
import warnings

import numpy as np

from astro_dia import DifferenceImager
from astro_dia.metrics import (mean_photometric_bias, mean_photometric_variance,
                               minimum_flux_variance)
from astro_dia.photometry import differential_photometry, gaussian_psf, light_curve
from astro_dia.simulate import make_variable_series

PSF_SIGMA = 1.5
FWHM = PSF_SIGMA * 2 * np.sqrt(2 * np.log(2))


def imager():
    return DifferenceImager(kernel_size=9, flat=1, sky=0, reference_noise=True)


def minimum_sigma(truth, epoch, row, fit_shape):
    """Eq. 31 on the fit box: the true target PSF and the true pixel variance."""
    from photutils.psf import CircularGaussianSigmaPRF

    sigma = float(np.hypot(PSF_SIGMA, truth.kernel_sigma[epoch]))
    dy, dx = truth.shift[epoch]
    x, y = float(row["x"]) + dx, float(row["y"]) + dy
    cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    hy, hx = fit_shape[0] // 2, fit_shape[1] // 2
    yy, xx = np.mgrid[cy - hy:cy + hy + 1, cx - hx:cx + hx + 1]
    psf = CircularGaussianSigmaPRF(sigma=sigma, x_0=x, y_0=y)(xx, yy)
    variance = truth.target_variance[epoch][yy, xx]
    return np.sqrt(minimum_flux_variance(psf, np.sqrt(variance),
                                         scale_factor=truth.scale_factor[epoch]))


def variable_region(shape, variables, radius):
    """True within ``radius`` pixels of each variable: what ``fit(exclude=)`` leaves out."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    region = np.zeros(shape, bool)
    for row in variables:
        region |= np.hypot(x - float(row["x"]), y - float(row["y"])) <= radius
    return region


def trials(amplitude, n_series, n_epochs=5, n_variables=2, first_seed=0, exclude_radius=0.0):
    """Normalised errors, errors and eq. 31 minima over simulated epochs."""
    errors, quoted, minima = [], [], []
    fit = imager()
    for seed in range(first_seed, first_seed + n_series):
        reference, targets, truth = make_variable_series(
            n_epochs, n_variables=n_variables, density=100, amplitude=amplitude,
            variable_flux=2000.0, seed=seed)
        exclude = (variable_region(reference.shape, truth.variables, exclude_radius)
                   if exclude_radius > 0 else None)
        for epoch, target in enumerate(targets):
            result = fit.fit(reference, target, exclude=exclude)
            table = differential_photometry(result, truth.variables, gaussian_psf(FWHM))
            errors.extend(table["flux_ref"].value - truth.flux_change[epoch])
            quoted.extend(table["flux_ref_err"].value)
            minima.extend(minimum_sigma(truth, epoch, row, table.meta["fit_shape"])
                          for row in truth.variables)
    return np.array(errors), np.array(quoted), np.array(minima)


def report(name, errors, quoted, minima):
    z = errors / quoted
    print(f"{name}: {z.size} cases, within 3 sigma {np.mean(np.abs(z) < 3):.1%}, "
          f"mean z {z.mean():+.3f}, std z {z.std(ddof=1):.3f}, "
          f"MPB {mean_photometric_bias(errors, minima):+.3f}, "
          f"MPV {mean_photometric_variance(errors, minima):.3f}, "
          f"<quoted err / sigma_min> {np.mean(quoted / minima):.3f}")


def sinusoid(times, flux, error, period):
    """Weighted least-squares a sin + b cos + c; amplitude, phase and their errors."""
    phase = 2 * np.pi * (times - times[0]) / period
    design = np.column_stack([np.sin(phase), np.cos(phase), np.ones_like(phase)]) / error[:, None]
    covariance = np.linalg.inv(design.T @ design)
    a, b, _ = covariance @ design.T @ (flux / error)
    amplitude = np.hypot(a, b)
    jacobian = np.array([[a, b], [-b, a]]) / np.array([[amplitude], [amplitude ** 2]])
    cov = jacobian @ covariance[:2, :2] @ jacobian.T
    return amplitude, np.arctan2(b, a), np.sqrt(cov[0, 0]), np.sqrt(cov[1, 1])


def lightcurve(plot=None):
    reference, targets, truth = make_variable_series(
        24, n_variables=1, density=100, amplitude=800.0, variable_flux=2000.0, period=9.0,
        seed=11)
    table = light_curve(reference, targets, truth.variables, gaussian_psf(FWHM),
                        imager=imager())
    mjd = table["time"].mjd
    flux, error = table["flux_ref"].value, table["flux_ref_err"].value
    amplitude, phase, amplitude_err, phase_err = sinusoid(mjd, flux, error, 9.0)
    true_phase = float(truth.variables["phase"][0])
    dphase = (phase - true_phase + np.pi) % (2 * np.pi) - np.pi
    chi2 = np.sum(((flux - truth.flux_change[:, 0]) / error) ** 2) / len(flux)
    print(f"light curve: 24 epochs, amplitude {amplitude:.0f} +- {amplitude_err:.0f} "
          f"(true 800), phase error {dphase:+.3f} +- {phase_err:.3f} rad, "
          f"chi2/N against the truth {chi2:.2f}")
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fine = np.linspace(mjd[0], mjd[-1], 300)
        model = 800.0 * np.sin(2 * np.pi * (fine - mjd[0]) / 9.0 + true_phase)
        fig, ax = plt.subplots(figsize=(5.5, 3.0), dpi=90)
        ax.plot(fine - mjd[0], model, color="0.6", lw=1, label="input")
        ax.errorbar(mjd - mjd[0], flux, error, fmt="o", ms=3, color="C0", label="measured")
        ax.set_xlabel("days since first epoch")
        ax.set_ylabel("flux_ref (adu)")
        ax.legend(loc="upper right", fontsize=8, frameon=False)
        fig.tight_layout()
        fig.savefig(plot)
        print(f"wrote {plot}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--plot", help="write the light-curve figure to this PNG")
    parser.add_argument("--series", type=int, default=12,
                        help="simulated series per experiment (5 epochs, 2 variables each)")
    parser.add_argument("--exclude-radius", type=float, default=0.0,
                        help="leave the pixels within this radius of each variable out of "
                             "the kernel fit (fit(exclude=)); 0 (default) keeps them in")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    radius = dict(exclude_radius=args.exclude_radius)
    if args.exclude_radius:
        print(f"variables' pixels within {args.exclude_radius:g} px left out of the fit")
    report("variables (amplitude 500 adu)", *trials(500.0, args.series, **radius))
    report("variables (amplitude 1000 adu)",
           *trials(1000.0, args.series, first_seed=100, **radius))
    report("constant stars", *trials(0.0, args.series, first_seed=200, **radius))
    lightcurve(args.plot)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
