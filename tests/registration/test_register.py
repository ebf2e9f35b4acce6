"""
`astro_dia.registration` on simulated frames with a known transform.

The truth is the transform the frames were drawn with (`simulated.star_pair`):
the recovered transform must agree with it over the whole frame, the
resampled data with scipy's own interpolation, the propagated variance with
the scatter of many noise realisations, and the header with what was done.
"""

import copy

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import CCDData, InverseVariance, NDData, VarianceUncertainty
from scipy import ndimage
from skimage.transform import EuclideanTransform, SimilarityTransform

from astro_dia.registration import (Alignment, RegistrationError, RegistrationWarning,
                                    find_transform, register)

from . import checks
from .simulated import image_wcs, star_pair, tan_wcs


def grid_error(found, truth, shape):
    """Largest distance (pixels) between two transforms over the frame's corners and centre."""
    ny, nx = shape
    points = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1],
                       [(nx - 1) / 2, (ny - 1) / 2]], float)
    return float(np.max(np.hypot(*(found(points) - truth(points)).T)))


@pytest.fixture(scope="module")
def shifted():
    """A sub-pixel (and whole-pixel) translation, 320 stars."""
    return star_pair(EuclideanTransform(translation=(7.37, -4.62)), n_stars=320, seed=1)


def test_subpixel_shift_recovered(shifted):
    image, reference, truth = shifted
    alignment = find_transform(image, reference, method="stars")
    assert alignment.model == "translation"
    assert alignment.method == "stars"
    assert alignment.n_stars >= 20
    assert grid_error(alignment.transform, truth, reference.shape) < 0.02


@pytest.mark.parametrize("model", ["euclidean", "similarity"])
def test_rotation_recovered(model):
    if model == "euclidean":
        truth = EuclideanTransform(rotation=np.radians(3.0), translation=(5.2, -8.1))
    else:
        truth = SimilarityTransform(scale=1.015, rotation=np.radians(-2.5), translation=(3, 4))
    image, reference, truth = star_pair(truth, n_stars=320, seed=2)
    alignment = find_transform(image, reference, method="stars")
    assert alignment.model == model
    assert abs(alignment.rotation - np.degrees(truth.rotation)) < 0.01
    assert grid_error(alignment.transform, truth, reference.shape) < 0.04


def test_auto_refines_a_wcs_off_by_a_pixel(shifted):
    image, reference, truth = shifted
    reference = CCDData(reference, wcs=tan_wcs(reference.shape))
    image = CCDData(image, wcs=image_wcs(reference.wcs, truth, offset=(0.8, -0.7)))
    wcs_only = find_transform(image, reference, method="wcs")
    assert 0.9 < grid_error(wcs_only.transform, truth, reference.shape) < 1.2
    assert wcs_only.n_stars >= 20 and wcs_only.rms > 0.9   # the stars see the error
    alignment = find_transform(image, reference)
    assert alignment.method == "wcs+stars"
    assert grid_error(alignment.transform, truth, reference.shape) < 0.02


def test_exact_wcs():
    truth = EuclideanTransform(rotation=np.radians(1.0), translation=(10.0, 3.0))
    image, reference, truth = star_pair(truth, seed=3, n_stars=200)
    reference = CCDData(reference, wcs=tan_wcs(reference.shape))
    image = CCDData(image, wcs=image_wcs(reference.wcs, truth))
    alignment = find_transform(image, reference, method="wcs")
    assert grid_error(alignment.transform, truth, reference.shape) < 1e-6
    assert alignment.wcs_departure < 1e-3


def test_registered_stars_flux_and_noise(shifted):
    image, reference, truth = shifted
    registered = register(image, reference)
    xy = checks.bright_isolated(reference, 3.5, n_stars=30, isolation=2.5)
    offsets = checks.centroid_offsets(registered, reference, xy, 4.0)
    assert len(offsets) >= 8
    assert np.all(np.abs(np.median(offsets, axis=0)) <= 0.05)
    assert np.sqrt(np.mean(np.sum(offsets ** 2, axis=1))) <= 0.1
    ratio, _ = checks.flux_ratio(registered, image, xy, truth, 6.0)
    assert abs(ratio - 1) < 0.005
    noise, n_pixels = checks.sky_noise_ratio(registered)
    assert n_pixels > 5000
    assert abs(noise - 1) < 0.05


def known(matrix):
    return Alignment(EuclideanTransform(matrix=np.asarray(matrix, float)), "translation",
                     "given")


def flat_frame(shape=(48, 48), value=100.0, variance=4.0, seed=0):
    rng = np.random.default_rng(seed)
    return CCDData(value + rng.normal(0, np.sqrt(variance), shape), unit=u.electron,
                   uncertainty=VarianceUncertainty(np.full(shape, variance)))


def test_data_match_scipy_and_variance_the_squared_weights():
    frame = flat_frame()
    dx, dy = 0.3, 0.6
    out = register(frame, frame, alignment=known(
        [[1, 0, dx], [0, 1, dy], [0, 0, 1]]))
    expected = ndimage.shift(frame.data, (dy, dx), order=1)
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(out.data[inner], expected[inner], rtol=1e-12)
    weights = ((1 - dx) ** 2 + dx ** 2) * ((1 - dy) ** 2 + dy ** 2)
    np.testing.assert_allclose(out.uncertainty.array[inner], 4.0 * weights, rtol=1e-12)
    assert isinstance(out.uncertainty, VarianceUncertainty)
    assert out.unit == u.electron
    # Uncovered: the first row and column.
    assert out.mask[0].all() and out.mask[:, 0].all() and not out.mask[inner].any()
    assert np.isnan(out.data[0, 0])


def test_variance_agrees_with_realisations():
    """The propagated variance is the scatter of the registered pixels over noise draws."""
    alignment = known([[np.cos(0.05), -np.sin(0.05), 0.4], [np.sin(0.05), np.cos(0.05), -0.3],
                       [0, 0, 1]])
    draws = np.array([register(flat_frame(seed=s), flat_frame(), alignment=alignment).data
                      for s in range(300)])
    out = register(flat_frame(), flat_frame(), alignment=alignment)
    good = ~out.mask
    ratio = np.var(draws, axis=0, ddof=1)[good] / out.uncertainty.array[good]
    assert abs(np.mean(ratio) - 1) < 0.02
    assert out.uncertainty.array[good].min() < 0.6 * 4.0   # the weights did matter


def test_mask_grows_over_footprint_and_not_for_whole_shifts():
    frame = flat_frame()
    frame.mask = np.zeros(frame.shape, bool)
    frame.mask[20, 30] = True
    frame.data[20, 30] = np.nan     # masked NaN is allowed
    frac = register(frame, frame, alignment=known([[1, 0, 0.5], [0, 1, 0.25], [0, 0, 1]]))
    assert frac.mask[20:22, 30:32].all() and frac.mask[5:48, 5:48].sum() == 4
    assert np.all(np.isfinite(frac.data[~frac.mask]))
    whole = register(frame, frame, alignment=known([[1, 0, 2], [0, 1, -1], [0, 0, 1]]),
                     resample=False)
    assert whole.mask[19, 32] and whole.mask[2:-2, 2:-2].sum() == 1
    good = ~frame.mask[6:-4, 3:-7]
    np.testing.assert_array_equal(whole.data[5:-5, 5:-5][good], frame.data[6:-4, 3:-7][good])


def test_resample_false_shifts_by_whole_pixels(shifted):
    image, reference, truth = shifted
    out = register(image, reference, resample=False)
    assert (out.header["REGSHIFX"], out.header["REGSHIFY"]) == (7, -5)
    assert abs(out.header["REGFRACX"] - 0.37) < 0.02
    assert abs(out.header["REGFRACY"] - 0.38) < 0.02
    np.testing.assert_array_equal(out.data[10:100, 20:100], image.data[15:105, 13:93])
    np.testing.assert_array_equal(out.uncertainty.array[10:100, 20:100],
                                  image.uncertainty.array[15:105, 13:93])
    assert out.header["REGRESAM"] is False


def test_resample_false_refuses_a_rotation():
    image, reference, _ = star_pair(EuclideanTransform(rotation=np.radians(2.0)), seed=4)
    with pytest.raises(RegistrationError, match="resample=True"):
        register(image, reference, resample=False)


def test_header_cards_and_inputs_untouched(shifted):
    image, reference, _ = shifted
    before = (image.data.copy(), image.uncertainty.array.copy(), copy.deepcopy(image.meta),
              reference.data.copy())
    out = register(image, reference)
    np.testing.assert_array_equal(image.data, before[0])
    np.testing.assert_array_equal(image.uncertainty.array, before[1])
    assert dict(image.meta) == dict(before[2]) and image.mask is None
    np.testing.assert_array_equal(reference.data, before[3])
    for key in ("REGMETH", "REGMODEL", "REGNSTAR", "REGRMS", "REGA11", "REGA23", "REGROT",
                "REGSCALE", "REGRESAM", "REGCOVER", "REGJACOB"):
        assert key in out.header
    assert out.header["REGRMS"] < 0.2 and out.header["GAIN"] == 2.0
    assert 0.8 < out.header["REGCOVER"] < 0.95


def test_uncertainty_classes_and_none():
    frame = flat_frame()
    alignment = known([[1, 0, 0.5], [0, 1, 0], [0, 0, 1]])
    inverse = CCDData(frame.data, unit="adu", uncertainty=InverseVariance(np.full(
        frame.shape, 0.25)))
    out = register(inverse, frame, alignment=alignment)
    assert isinstance(out.uncertainty, InverseVariance)
    np.testing.assert_allclose(out.uncertainty.array[5:-5, 5:-5], 0.25 / 0.5)
    bare = register(CCDData(frame.data, unit="adu"), frame, alignment=alignment)
    assert bare.uncertainty is None and bare.unit == u.adu
    nd = register(NDData(frame.data, unit="adu"), frame.data, alignment=alignment)
    assert nd.unit == u.adu and nd.shape == frame.shape


def test_errors_name_the_problem():
    frame = flat_frame()
    with pytest.raises(RegistrationError, match="2-D"):
        register(CCDData(np.zeros((3, 20, 20)), unit="adu"), frame)
    bad = flat_frame()
    bad.data[3, 3] = np.nan
    with pytest.raises(RegistrationError, match="mask them"):
        register(bad, frame)
    with pytest.raises(RegistrationError, match="do not overlap"):
        register(frame, frame, alignment=known([[1, 0, 500], [0, 1, 0], [0, 0, 1]]))
    with pytest.raises(RegistrationError, match="stars"):
        register(flat_frame(seed=1), flat_frame(seed=2), method="stars")
    with pytest.raises(RegistrationError, match="method='wcs' needs"):
        register(frame, frame, method="wcs")
    with pytest.raises(ValueError, match="method"):
        register(frame, frame, method="fourier")


def test_no_overlap_through_wcs(shifted):
    image, reference, _ = shifted
    reference = CCDData(reference, wcs=tan_wcs(reference.shape))
    far = image_wcs(reference.wcs, EuclideanTransform(translation=(2000.0, 0.0)))
    with pytest.raises(RegistrationError, match="do not overlap"):
        register(CCDData(image, wcs=far), reference)


def test_auto_falls_back_on_the_wcs_with_a_warning():
    image, reference, truth = star_pair(EuclideanTransform(translation=(3.0, 2.0)), seed=5)
    reference = CCDData(reference, wcs=tan_wcs(reference.shape))
    image = CCDData(image, wcs=image_wcs(reference.wcs, truth))
    blank = CCDData(np.random.default_rng(0).normal(300, 5, image.shape), unit="adu",
                    wcs=image.wcs)
    with pytest.warns(RegistrationWarning, match="WCS alone"):
        out = register(blank, reference)
    assert out.header["REGMETH"] == "wcs"


def test_seeing_matched_cutouts():
    # _blur_near convolves only around the stars, as a mask-aware convolution
    # of the whole frame would there, and masks where the weight is too low.
    from astro_dia.registration._register import _blur_near

    rng = np.random.default_rng(5)
    data = rng.normal(100.0, 5.0, (60, 70))
    mask = np.zeros(data.shape, bool)
    mask[30, 20] = True
    mask[0:3, :] = True
    xy = np.array([[20.0, 30.0], [50.4, 4.6]])
    out, out_mask = _blur_near(data, mask, xy, 1.5, 6)
    good = (~mask).astype(float)
    whole = (ndimage.gaussian_filter(np.where(mask, 0.0, data), 1.5, mode="constant")
             / ndimage.gaussian_filter(good, 1.5, mode="constant"))
    near = (slice(24, 37), slice(14, 27))
    np.testing.assert_allclose(out[near], whole[near], rtol=1e-12)
    np.testing.assert_allclose(out[3:11, 45:57], whole[3:11, 45:57], rtol=1e-12)
    assert out_mask[30, 20] and not out_mask[29, 20] and not out_mask[3, 50]
    np.testing.assert_array_equal(out[40:, :10], data[40:, :10])
