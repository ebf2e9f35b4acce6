"""Real-frame defects on the default path: cosmic rays, hot pixels, flags, fit quality."""

import warnings

import numpy as np
import pytest
from astropy.stats import mad_std

from astro_dia import DifferenceImager
from astro_dia.exceptions import FitQualityWarning
from astro_dia.flags import (EXCLUDED, INVALID, MASKED, NO_MODEL, OUTLIER, SATURATED,
                             describe_flags)
from astro_dia.simulate import make_image_pair


def add_cosmic_rays(target, n, seed, low=500.0, high=30000.0):
    """A copy of ``target`` with ``n`` hits of 1-3 x 1-3 pixels; and where they are."""
    rng = np.random.default_rng(seed)
    data = target.data.copy()
    hit = np.zeros(data.shape, bool)
    for _ in range(n):
        y, x = rng.integers(2, np.array(data.shape) - 5)
        height, width = rng.integers(1, 4, 2)
        data[y:y + height, x:x + width] += rng.uniform(low, high)
        hit[y:y + height, x:x + width] = True
    out = target.copy()
    out.data = data
    return out, hit


HOT_PIXELS = ([10, 20, 30, 12, 25, 33, 15, 28, 36], [11, 19, 31, 30, 12, 22, 35, 27, 15])


@pytest.fixture(scope="module")
def cosmic_pair():
    reference, target, truth = make_image_pair(shape=(160, 160), scale_factor=1.1, density=30,
                                               seed=3)
    hit_target, hit = add_cosmic_rays(target, 48, seed=5)
    return reference, target, hit_target, hit, truth


def test_cosmic_rays_rejected_by_default(cosmic_pair):
    reference, _, target, hit, truth = cosmic_pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on a good fit
        result = DifferenceImager(kernel_size=11, flat=1, sky=0).fit(reference, target)
    error = abs(result.scale_factor - truth.scale_factor)
    assert error < max(5 * result.scale_factor_error, 2e-3)
    z = result.normalized_residuals()
    assert abs(mad_std(z) - 1) < 0.1
    assert abs(result.residual_scatter - mad_std(z)) < 1e-9
    # Hits away from the border are flagged as outliers and left out of the fit.
    h = 5
    inner = np.zeros(hit.shape, bool)
    inner[h:-h, h:-h] = True
    flagged = (result.flags & OUTLIER) != 0
    assert flagged[hit & inner].mean() > 0.95
    assert not (result.fit_mask & flagged).any()
    assert result.n_outliers == int(flagged.sum())
    # Outliers keep their difference: they are flagged, not masked.
    assert not result.difference.mask[flagged].any()
    assert result.difference.header["DIA_NOUT"] == result.n_outliers
    assert result.difference.header["DIA_CLIP"] == 5.0


def test_cosmic_rays_bias_the_fit_without_clipping(cosmic_pair):
    """The same pair with clip=None: the check above could fail."""
    reference, _, target, _, truth = cosmic_pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitQualityWarning)
        result = DifferenceImager(kernel_size=11, flat=1, sky=0, clip=None).fit(reference, target)
    assert result.n_outliers == 0
    assert abs(result.scale_factor - truth.scale_factor) > 5 * result.scale_factor_error


def test_clipping_leaves_a_clean_pair_alone(cosmic_pair):
    reference, target, _, _, truth = cosmic_pair
    clipped = DifferenceImager(kernel_size=11, flat=1, sky=0).fit(reference, target)
    plain = DifferenceImager(kernel_size=11, flat=1, sky=0, clip=None).fit(reference, target)
    # 5 sigma rejects about 6e-7 of Gaussian pixels (and their neighbours).
    assert clipped.n_outliers <= 9
    assert abs(clipped.scale_factor - plain.scale_factor) < 0.1 * plain.scale_factor_error


@pytest.mark.parametrize("loss", ["gaussian", "huber"])
@pytest.mark.parametrize("amplitude", [65000.0, 1e6, 1e9])
def test_hot_pixels_any_amplitude(loss, amplitude):
    reference, target, truth = make_image_pair(shape=(48, 48), scale_factor=1.1, density=100,
                                               seed=2)
    data = target.data.copy()
    data[HOT_PIXELS] = amplitude
    target.data = data
    result = DifferenceImager(kernel_size=7, flat=1, sky=0, loss=loss).fit(reference, target)
    assert abs(result.scale_factor / truth.scale_factor - 1) < 0.02
    assert np.all(result.flags[HOT_PIXELS] & OUTLIER)


def test_hot_pixels_ruin_the_fit_without_clipping():
    reference, target, truth = make_image_pair(shape=(48, 48), scale_factor=1.1, density=100,
                                               seed=2)
    data = target.data.copy()
    data[HOT_PIXELS] = 65000.0
    target.data = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = DifferenceImager(kernel_size=7, flat=1, sky=0, clip=None).fit(reference, target)
    assert abs(result.scale_factor / truth.scale_factor - 1) > 0.5


def test_fit_quality_warning_on_wrong_gain():
    """A gain four times too high: sigma too small by ~2, and a warning that says so."""
    reference, target, _ = make_image_pair(shape=(64, 64), density=30, seed=4, gain=1.0,
                                           with_uncertainty=False)
    imager = DifferenceImager(kernel_size=7, flat=1, sky=0, gain=4.0, read_noise=1.0)
    with pytest.warns(FitQualityWarning) as record:
        result = imager.fit(reference, target)
    messages = " ".join(str(item.message) for item in record)
    assert f"robust standard deviation of {result.residual_scatter:.3g}" in messages
    assert "gain" in messages and "misregistered" in messages
    assert result.residual_scatter > 1.5 and result.residual_scatter < 2.5
    assert result.difference.header["DIA_ZSTD"] == pytest.approx(result.residual_scatter)


def test_flag_bits():
    reference, target, _ = make_image_pair(shape=(64, 64), density=60, seed=7,
                                           saturation=400.0, bad_columns=(40,))
    exclude = np.zeros(target.shape, bool)
    exclude[20:24, 20:24] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NaN column
        result = DifferenceImager(kernel_size=7, flat=1, sky=0).fit(reference, target,
                                                                    exclude=exclude)
    flags = result.flags
    assert flags.dtype == np.uint8 and flags.shape == target.shape
    np.testing.assert_array_equal(result.difference.mask, (flags & INVALID) != 0)
    np.testing.assert_array_equal(result.difference.flags, flags)
    assert np.all(flags[:, 40] & MASKED)
    assert np.all(flags[:3, :] & NO_MODEL) and np.all(flags[:, -3:] & NO_MODEL)
    assert np.all(flags[target.data >= 400.0] & SATURATED)
    assert (flags & SATURATED).sum() > (target.data >= 400.0).sum()  # footprints too
    assert np.all(flags[20:24, 20:24] & EXCLUDED)
    assert not result.difference.mask[20:24, 20:24].any()
    assert describe_flags(flags[0, 40]) == ["MASKED", "NO_MODEL"]


def test_varying_kernel_keeps_p_constant_by_default():
    imager = DifferenceImager(kernel_size=7, kernel_degree=1, flat=1, sky=0)
    assert imager.constant_scale
    assert not DifferenceImager(kernel_size=7, kernel_degree=1, constant_scale=False).constant_scale
    assert not DifferenceImager(kernel_size=7).constant_scale


@pytest.mark.parametrize("clip, error", [(2.0, ValueError), (np.inf, ValueError),
                                         ("five", TypeError), (True, TypeError)])
def test_clip_validation(clip, error):
    with pytest.raises(error, match="clip"):
        DifferenceImager(kernel_size=7, clip=clip)


def test_rejection_keeps_bright_star_cores_in_the_fit():
    """A field of bright stars, a noisy reference, a PSF changing across it: same residuals."""
    reference, target, truth = make_image_pair(shape=(128, 128), scale_factor=1.1, density=80,
                                               reference_variance_ratio=1.0, psf_sigma=1.3,
                                               kernel_sigma=(0.8, 1.6), seed=11)
    stars = truth.stars[np.argsort(np.asarray(truth.stars["flux"]))[-5:]]
    y, x = np.mgrid[0:128, 0:128]
    near = np.zeros((128, 128), bool)
    for star in stars:
        near |= np.hypot(x - float(star["x"]), y - float(star["y"])) < 3 * 1.9
    rms = []
    for clip in (5.0, None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitQualityWarning)
            result = DifferenceImager(kernel_size=11, flat=1, sky=0, clip=clip).fit(reference,
                                                                                    target)
        z = result.difference.data / result.difference.uncertainty.array
        rms.append(float(np.sqrt(np.mean(z[near & ~result.difference.mask] ** 2))))
        if clip:
            # the star pixels stay in the fit (but for a few 5-sigma residuals
            # of the reference's own noise, which the weights leave out)
            assert ((result.flags[near] & OUTLIER) != 0).mean() < 0.02
    assert rms[0] <= 1.02 * rms[1]


def test_a_bright_variable_star_leaves_the_fit():
    """A star that brightened by 3e4 adu in a small field would pull P by 18%; its box is left out."""
    reference, target, truth = make_image_pair(seed=201, density=100, variable_flux=3e4)
    result = DifferenceImager(19, flat=1, sky=0).fit(reference, target)
    assert abs(result.scale_factor - truth.scale_factor) < 3 * result.scale_factor_error
    unclipped = DifferenceImager(19, flat=1, sky=0, clip=None).fit(reference, target)
    assert abs(unclipped.scale_factor - truth.scale_factor) > 0.1
    # the variable (where the noiseless target exceeds P times the reference
    # most) is flagged over its whole core, and keeps its difference
    change = truth.target_noiseless - truth.scale_factor * truth.reference_noiseless
    y, x = np.unravel_index(np.argmax(change), change.shape)
    assert (result.flags[y - 3:y + 4, x - 3:x + 4] & OUTLIER).all()
    assert np.isfinite(result.difference.data[y, x])
