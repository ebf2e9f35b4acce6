"""
`astro_dia.registration` on real pixels: two cutouts of pyDIA's crowded field.

``pydia_reg_img.fits`` (PFWHM 5.37 px) sits about 30 px in x and 9 px in y
from ``pydia_reg_ref.fits`` (PFWHM 4.73 px) and neither has a WCS (see
tests/data/real/README.rst). The truth is independent of the registration:
photutils' 2-D Gaussian centroids and aperture fluxes of the reference's
bright isolated stars, the centroids measured after the reference is
convolved to the image's seeing (a faint neighbour pulls a centroid the more
the broader the PSF, which would otherwise count against the
registration). After registration, with star matching alone and
with a WCS off by a pixel, the centroids must agree with the reference's to
|median| <= 0.05 px and rms <= 0.1 px, and the aperture fluxes with the
original frame's to 0.5%. ``pydia_reg_0103.fits`` and ``pydia_reg_0104.fits``,
two exposures 3.7 minutes apart with the same seeing, measure the noise
itself: their difference cancels the static sky.
"""

import astropy.units as u
import ccdproc
import numpy as np
import pytest
from astropy.nddata import CCDData, StdDevUncertainty

from astro_dia.registration import find_transform, register

from ..real_data import read_cutout
from . import checks
from .simulated import image_wcs, tan_wcs

SATURATION = 65300.0
GAIN, READ_NOISE = 1.9, 5.0
#: pyDIA's seeing (PFWHM, pixels) of the reference and of the image.
REFERENCE_FWHM, IMAGE_FWHM = 4.73, 5.37
#: Bright isolated stars: no neighbour peaking above this fraction of the star's
#: peak within ISOLATION times the broader FWHM (as benchmarks/validate_registration.py).
ISOLATION, NEIGHBOUR_FRACTION = 2.5, 0.3


@pytest.fixture(scope="module")
def frames():
    reference, image = read_cutout("pydia_reg_ref.fits"), read_cutout("pydia_reg_img.fits")
    sigma = np.sqrt(np.maximum(image.data, 0) / GAIN + (READ_NOISE / GAIN) ** 2)
    image = CCDData(image.data, unit=image.unit, meta=image.meta,
                    uncertainty=StdDevUncertainty(sigma))
    # Isolated: no peak above 30% of the star's within 2.5 FWHM of the broader frame.
    stars = checks.bright_isolated(reference, REFERENCE_FWHM, saturation=SATURATION,
                                   isolation=ISOLATION * IMAGE_FWHM / REFERENCE_FWHM,
                                   min_peak=10.0, fraction=NEIGHBOUR_FRACTION)
    return image, reference, stars


def in_image(transform, xy, shape, margin=15):
    image_xy = transform.inverse(xy)
    return ((image_xy[:, 0] > margin) & (image_xy[:, 0] < shape[1] - 1 - margin)
            & (image_xy[:, 1] > margin) & (image_xy[:, 1] < shape[0] - 1 - margin))


def check(registered, image, reference, stars, transform):
    offsets = checks.centroid_offsets(registered, reference, stars, IMAGE_FWHM,
                                      seeing=(IMAGE_FWHM, REFERENCE_FWHM))
    assert len(offsets) >= 8
    assert np.all(np.abs(np.median(offsets, axis=0)) <= 0.05)
    assert np.sqrt(np.mean(np.sum(offsets ** 2, axis=1))) <= 0.1
    inside = stars[in_image(transform, stars, image.shape)]
    assert len(inside) >= 5
    ratio, _ = checks.flux_ratio(registered, image, inside, transform, 10.0)
    assert abs(ratio - 1) <= 0.005


def test_star_matching_alone(frames):
    image, reference, stars = frames
    alignment = find_transform(image, reference)
    assert alignment.method == "stars" and alignment.n_stars >= 15
    assert abs(alignment.translation[0] + 29.9) < 0.3 and abs(alignment.translation[1] - 8.85) < 0.3
    registered = register(image, reference, alignment=alignment)
    check(registered, image, reference, stars, alignment.transform)
    assert isinstance(registered.uncertainty, StdDevUncertainty)


def test_wcs_off_by_a_pixel(frames):
    image, reference, stars = frames
    # A WCS pair built from the star solution, then the image's moved by ~1 px.
    truth = find_transform(image, reference).transform
    reference = CCDData(reference, wcs=tan_wcs(reference.shape))
    image = CCDData(image, wcs=image_wcs(reference.wcs, truth, offset=(0.7, 0.7)))
    registered = register(image, reference)
    assert registered.header["REGMETH"] == "wcs+stars"
    alignment = find_transform(image, reference)
    check(registered, image, reference, stars, alignment.transform)


def test_uncertainty_propagation(frames):
    # Registration must carry the uncertainty it is given. The cutouts' sky is
    # not white (unresolved stars: neighbours correlate at 0.5-0.9), so its
    # scatter after registration is checked against what the input's measured
    # correlations predict, and the propagated uncertainty against white noise:
    # injected white noise, and the Sum w**2 prediction.
    image, reference, _ = frames
    alignment = find_transform(image, reference)
    ratio, n_pixels = checks.injected_noise_ratio(image, reference, alignment, seed=3)
    assert n_pixels > 20000
    assert abs(ratio - 1) < 0.02
    noise = checks.resampled_sky_noise(image, reference, alignment)
    assert noise["white"] < 0.9
    assert abs(noise["propagated"] / noise["white"] - 1) < 0.01
    assert abs(noise["measured"] / noise["correlated"] - 1) < 0.05


def test_propagated_uncertainty_is_the_noise_between_two_exposures(frames):
    # The sky of this crowded field is not noise: unresolved stars, the same in
    # every exposure, scatter 1.4-3.5 times the noise. Two exposures minutes apart
    # with the same seeing differ by their noise alone; registered onto the
    # reference (about 13.6 and 30.3 px away, bilinear weights of fractions 0.4
    # and 0.3), their difference must scatter as their propagated uncertainties
    # say, on the sky: the faintest fifth of the reference's pixels.
    _, reference, _ = frames
    exposures = [ccdproc.create_deviation(read_cutout(f"pydia_reg_{name}.fits"),
                                          gain=GAIN * u.electron / u.adu,
                                          readnoise=READ_NOISE * u.electron)
                 for name in ("0103", "0104")]
    registered = [register(exposure, reference) for exposure in exposures]
    assert all(image.meta["REGNSTAR"] >= 15 for image in registered)
    sky = reference.data < np.percentile(reference.data, 20)
    ratio, n_pixels = checks.exposure_noise_ratio(
        *registered, sky & ~registered[0].mask & ~registered[1].mask)
    assert n_pixels > 5000
    assert abs(ratio - 1) < 0.05
    # The noise model itself, on the exposures' own grid (the same pointing to 0.1 px).
    first = exposures[0].data
    raw_ratio, _ = checks.exposure_noise_ratio(*exposures, first < np.percentile(first, 20))
    assert abs(raw_ratio - 1) < 0.05
