"""Where the fit looks: every pixel, or the stars of a noisy reference (private).

Least squares on a noisy reference regresses on its noise (errors in the
variables): where the reference's fine structure is noise, the fitted
kernel is smoothed and P pulled towards zero. HOTPANTS avoids it by fitting
stamps around bright stars, where the reference's signal dominates its
noise. ``fit_region='stars'`` does the same with pixels: the fit keeps the
footprints of stars that stand out of the reference's noise, found by
hysteresis on the smoothed reference (seeds above `SEED_SNR`, grown over
the connected pixels above `FOOTPRINT_SNR`, plus a `MARGIN` of pixels).

``fit_region='auto'`` (the default) fits every pixel, and refits on the
stars when that fit's reference noise is predicted to bias P by more than
sigma_P (the guard's REFNOISE test) and the stars hold enough pixels
(`MIN_PIXELS_PER_UNKNOWN`). Measured on real pairs (``docs/real_frames.rst``,
``benchmarks/validate_real_data.py``): on the ProperImage pair (sparse,
single-exposure reference) the rms of D next to bright stars went from
1.65 to 0.98 times HOTPANTS's and P from 0.9968 to 0.9993 (flux ratio
1.0058 +- 0.0021).
"""

import numpy as np
from astropy.stats import mad_std
from scipy import ndimage

__all__ = []

#: The fit-region settings ``DifferenceImager(fit_region=...)`` accepts.
FIT_REGIONS = ("auto", "all", "stars")

#: Signal-to-noise, in the reference smoothed by a Gaussian of `SMOOTH` px,
#: of a star's pixel that seeds a footprint.
SEED_SNR = 30.0

#: Signal-to-noise down to which a seeded footprint grows (connected pixels).
FOOTPRINT_SNR = 5.0

#: Pixels added around each footprint.
MARGIN = 3

#: Sigma (px) of the Gaussian that smooths the reference before thresholds.
SMOOTH = 1.0

#: Fewest pixels in the stars' region per unknown of the fit for ``'auto'``
#: to use it: with fewer, the kernel is no longer fixed by the stars (a
#: sparse simulated field with 1 900 pixels for 362 unknowns gave P off by
#: 5 +- 2.5%), and the fit keeps every pixel and its warning.
MIN_PIXELS_PER_UNKNOWN = 20


def check_fit_region(fit_region):
    """The validated ``fit_region`` setting."""
    if not isinstance(fit_region, str) or fit_region not in FIT_REGIONS:
        raise ValueError(f"fit_region must be one of {', '.join(map(repr, FIT_REGIONS))}, "
                         f"got {fit_region!r}")
    return fit_region


def star_region(reference, variance, bad):
    """
    The footprints of the reference's stars that stand out of its noise.

    Parameters
    ----------
    reference : (M, N) ndarray
        The reference's data.
    variance : (M, N) ndarray or None
        Its variance (an estimate; the noise model's). None: the robust
        variance of its pixels, the same everywhere.
    bad : (M, N) bool ndarray
        Pixels not to use (masked, saturated): never seeds, never grown over.

    Returns
    -------
    (M, N) bool ndarray
        True on the stars' footprints.
    """
    good = ~bad
    data = np.where(good, reference, 0.0)
    level = float(np.median(reference[good][::7])) if good.any() else 0.0
    signal = ndimage.gaussian_filter(np.where(good, data - level, 0.0), SMOOTH)
    if variance is None:
        noise_variance = np.full(reference.shape, _robust_variance(reference[good]))
    else:
        noise_variance = ndimage.gaussian_filter(np.where(good, variance, 0.0), SMOOTH)
    # White noise smoothed by a unit-sum Gaussian of sigma s keeps
    # 1 / (4 pi s^2) of its variance.
    noise = np.sqrt(np.maximum(noise_variance, 0.0) / (4 * np.pi * SMOOTH ** 2))
    snr = np.divide(signal, noise, out=np.zeros_like(signal), where=noise > 0)
    region = ndimage.binary_propagation((snr > SEED_SNR) & good,
                                        mask=(snr > FOOTPRINT_SNR) & good)
    if MARGIN:
        region = ndimage.binary_dilation(region, structure=np.ones((3, 3), bool),
                                         iterations=MARGIN)
    return region


def _robust_variance(values):
    return float(mad_std(values[::3])) ** 2 if values.size else 0.0


def enough_star_pixels(n_pixels, n_unknowns):
    """Whether a stars' region of ``n_pixels`` pins down ``n_unknowns`` parameters."""
    return n_pixels >= MIN_PIXELS_PER_UNKNOWN * n_unknowns
