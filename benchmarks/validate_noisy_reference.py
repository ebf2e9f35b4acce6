"""
Bias and honesty of P with a noisy reference: run by hand, prints the table of the docs.

    python benchmarks/validate_noisy_reference.py [--fields 8] [--noise 4] [--quick]

Simulated 400 x 400 pairs (PSF sigma 1.8 px, kernel sigma 1.3 px, P = 1, sky
1000 adu in both, gain 2.4 e-/adu, read noise 5 adu), a sparse field
(density 5 stars per 100 x 100 px) and a dense one (30), each as

- ``single``: a single-epoch reference, as noisy as the target
  (``reference_variance_ratio=1``);
- ``stacked``: a reference with ten times less variance (0.1), its header's
  gain and read noise describing the stack;
- ``stacked, header of one exposure``: the same stack without an
  uncertainty, its header's GAIN and RDNOISE those of a single exposure (a
  stack whose header was not updated): the noise model then overestimates
  the reference variance ten times.

Each of ``--fields`` star fields is observed with ``--noise`` noise
realisations. For the default fit (``fit_region='auto'``), the fit on every
pixel (``fit_region='all'``, the default before the stars' fit region) and
``reference_noise=True`` the table gives the mean of P - 1 with its standard error (from the fields' means:
the fields are the independent units), the scatter of P over the noise
realisations of one field (pooled) over the mean sigma_P, the same across
all pairs, and the fraction of fits that warned that the reference's noise
biases P, and the fraction of fits made on the reference's stars
(``result.fit_region == 'stars'``). The figures must satisfy |mean| < 3 standard errors and < 1%,
and a scatter ratio within 0.75-1.33, for the ``reference_noise=True``
rows of noisy references. Run it with ``PYTHONPATH`` pointing at another
tree to get that tree's table (the warning column is then 0).
"""

import argparse
import time
import warnings

import numpy as np

from astro_dia import DifferenceImager
from astro_dia.simulate import make_image_pair

SHAPE = (400, 400)
PAIR = dict(psf_sigma=1.8, kernel_sigma=1.3, scale_factor=1.0, reference_sky=1000.0,
            target_sky=1000.0, gain=2.4, read_noise=5.0)
DENSITIES = {"sparse": 5.0, "dense": 30.0}
REFERENCES = {"single": dict(reference_variance_ratio=1.0),
              "stacked": dict(reference_variance_ratio=0.1),
              "stacked, header of one exposure": dict(reference_variance_ratio=0.1,
                                                      with_uncertainty=False)}
SETTINGS = {"default": dict(flat=1, sky=0),
            "fit_region='all'": dict(flat=1, sky=0, fit_region="all"),
            "reference_noise=True": dict(flat=1, sky=0, reference_noise=True)}


def make_pair(density, reference, field, noise):
    """One simulated pair; a stale header describes a single exposure."""
    settings = dict(reference)
    stale = settings.get("with_uncertainty", True) is False
    ref, target, _ = make_image_pair(SHAPE, density=density, seed=field,
                                     noise_seed=1000 * field + noise, **PAIR, **settings)
    if stale:
        ref.meta["GAIN"] = PAIR["gain"]
        ref.meta["RDNOISE"] = PAIR["read_noise"] * PAIR["gain"]
    return ref, target


def measure(density, reference, settings, n_fields, n_noise):
    """P - 1, sigma_P, warned, fit time, fitted on stars: (n_fields, n_noise) arrays."""
    shape = (n_fields, n_noise)
    offset, error, warned, seconds, stars = (np.zeros(shape) for _ in range(5))
    for field in range(n_fields):
        for noise in range(n_noise):
            ref, target = make_pair(density, reference, field, noise)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                result = DifferenceImager(**settings).fit(ref, target)
                seconds[field, noise] = time.perf_counter() - start
            offset[field, noise] = result.scale_factor - 1.0
            stars[field, noise] = getattr(result, "fit_region", "all") == "stars"
            error[field, noise] = result.scale_factor_error
            warned[field, noise] = any("predicted to bias P" in str(w.message)
                                       for w in caught)
    return offset, error, warned, seconds, stars


def summarise(offset, error, warned, seconds, stars):
    """The table's figures from `measure`'s arrays."""
    field_means = offset.mean(axis=1)
    mean = float(offset.mean())
    standard_error = float(field_means.std(ddof=1) / np.sqrt(len(field_means)))
    within = float(np.sqrt(np.mean(offset.var(axis=1, ddof=1)))) if offset.shape[1] > 1 else \
        float("nan")
    sigma = float(error.mean())
    return dict(mean=mean, se=standard_error, noise_ratio=within / sigma,
                all_ratio=float(offset.std(ddof=1)) / sigma, sigma=sigma,
                warned=float(warned.mean()), seconds=float(np.median(seconds)),
                stars=float(stars.mean()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--noise", type=int, default=4)
    parser.add_argument("--quick", action="store_true",
                        help="single-epoch references only")
    args = parser.parse_args(argv)
    references = {"single": REFERENCES["single"]} if args.quick else REFERENCES
    print(f"{SHAPE[0]}x{SHAPE[1]} pairs, {args.fields} fields x {args.noise} noise "
          f"realisations each; P - 1 = mean +- standard error (fields' means)")
    header = (f"{'field':<7}{'reference':<33}{'fit':<22}{'P - 1':>18}{'|m|/se':>8}"
              f"{'noise/sP':>10}{'all/sP':>8}{'sigma_P':>9}{'warned':>8}{'stars':>7}{'s/fit':>7}")
    print(header)
    print("-" * len(header))
    for field_name, density in DENSITIES.items():
        for reference_name, reference in references.items():
            for setting_name, settings in SETTINGS.items():
                row = summarise(*measure(density, reference, settings, args.fields,
                                         args.noise))
                print(f"{field_name:<7}{reference_name:<33}{setting_name:<22}"
                      f"{row['mean']:+9.4f} +- {row['se']:.4f}"
                      f"{abs(row['mean']) / row['se']:8.1f}{row['noise_ratio']:10.2f}"
                      f"{row['all_ratio']:8.2f}{row['sigma']:9.4f}{row['warned']:8.2f}{row['stars']:7.2f}"
                      f"{row['seconds']:7.2f}", flush=True)


if __name__ == "__main__":
    main()
