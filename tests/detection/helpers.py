"""Difference images and fits with injected sources, for the detection tests."""

import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty

from astro_dia import DifferenceImager
from astro_dia.simulate import inject_point_sources, make_image_pair

#: Reference PSF sigma and kernel sigma of the simulated pairs (pixels).
PSF_SIGMA = 1.5
KERNEL_SIGMA = 1.2
TARGET_SIGMA = float(np.hypot(PSF_SIGMA, KERNEL_SIGMA))
KERNEL_SIZE = 11


def noise_difference(shape=(200, 200), sigma=10.0, seed=0, mask=None):
    """A pure-noise difference image with a delta kernel recorded in its header."""
    rng = np.random.default_rng(seed)
    header = fits.Header({"DIA_P": 1.0, "DIA_KSZ": 1, "DIA_KNUM": 1, "DIAK0001": 1.0})
    data = rng.normal(0.0, sigma, shape)
    return CCDData(data, unit="adu", uncertainty=StdDevUncertainty(np.full(shape, sigma)),
                   mask=mask, meta=header)


def fitted_pair(shape=(160, 160), x=(), y=(), flux=(), seed=4, density=30.0, **pair_options):
    """Fit of a simulated pair whose target has point sources added at (x, y)."""
    reference, target, truth = make_image_pair(shape, psf_sigma=PSF_SIGMA,
                                               kernel_sigma=KERNEL_SIGMA, density=density,
                                               seed=seed, **pair_options)
    if len(x):
        target = inject_point_sources(target, x, y, flux, TARGET_SIGMA)
    imager = DifferenceImager(kernel_size=KERNEL_SIZE, flat=1, reference_noise=True)
    return imager.fit(reference, target), reference, target, truth
