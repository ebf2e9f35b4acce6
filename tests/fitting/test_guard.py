"""The guard: a FitQualityWarning and a header card for each way a fit may be wrong."""

import warnings

import numpy as np
import pytest
from scipy import ndimage

from astro_dia import DifferenceImager
from astro_dia.fitting._guard import (DECONVOLUTION_WIDTH, IGNORED_STARS,
                                      REJECTED_STAR_FLUX_WARNING, STAR_FLUX_EXCESS,
                                      TAIL_FRACTION_WARNING, assess_fit, kernel_lobe_depth,
                                      kernel_negative_fraction, kernel_width,
                                      rejected_flux_fraction)
from astro_dia.exceptions import FitQualityWarning
from astro_dia.io import read_result
from astro_dia.kernels import gaussian_kernel
from astro_dia.simulate import make_image_pair

from ..real_data import PAIRS

SETTINGS = dict(kernel_size=11, flat=1, sky=0)


@pytest.fixture(scope="module")
def blurred_pair():
    """A target 1.2 px (sigma) blurrier than the reference."""
    return make_image_pair(shape=(96, 96), density=60, psf_sigma=1.2, kernel_sigma=1.2, seed=2)


def _fit(reference, target, **settings):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = DifferenceImager(**dict(SETTINGS, **settings)).fit(reference, target)
    return result, [w for w in caught if issubclass(w.category, FitQualityWarning)]


def test_a_clean_pair_passes(blurred_pair, tmp_path):
    reference, target, _ = blurred_pair
    result, caught = _fit(reference, target)
    assert caught == []
    quality = result.quality
    assert quality["causes"] == ()
    assert result.difference.header["DIA_QUAL"] == "OK"
    assert quality["tail_fraction"] < TAIL_FRACTION_WARNING
    # the kernel blurs by 1.2 px: its second moment says so
    assert quality["kernel_width"] == pytest.approx(1.2, abs=0.15)
    # the measures survive a result file
    result.write(tmp_path / "fit.fits")
    back = read_result(tmp_path / "fit.fits").quality
    for key in ("tail_fraction", "rejected_star_flux", "kernel_negative", "kernel_lobe",
                "kernel_width"):
        assert back[key] == pytest.approx(quality[key], rel=1e-6, abs=1e-12)
    assert back["causes"] == ()


def test_a_target_sharper_than_the_reference_is_named(blurred_pair):
    reference, target, _ = blurred_pair
    result, caught = _fit(target, reference)   # swapped: the target is the sharper
    messages = [str(w.message) for w in caught]
    assert any("as sharp as the reference or sharper" in m and "Swap the reference" in m
               for m in messages), messages
    assert "DECONVOLVES" in result.quality["causes"]
    assert "DECONVOLVES" in result.difference.header["DIA_QUAL"]
    assert result.quality["kernel_width"] < 0      # the kernel sharpens


def test_kernel_measures_on_known_kernels():
    blur = gaussian_kernel(15, 1.5)
    assert kernel_width(blur) == pytest.approx(1.5, rel=0.02)
    assert kernel_negative_fraction(blur) == 0.0
    assert kernel_lobe_depth(blur) == 0.0
    delta = np.zeros((15, 15))
    delta[7, 7] = 1.0
    assert kernel_width(delta) == 0.0
    # a sharpening kernel (sum 1): three deltas less two blurs
    sharpen = 3 * delta - 2 * gaussian_kernel(15, 1.0)
    assert kernel_width(sharpen) < -DECONVOLUTION_WIDTH
    assert kernel_negative_fraction(sharpen) > 1 / 3
    assert kernel_lobe_depth(sharpen) > 0.1
    assert np.isnan(kernel_width(-blur))


def _stars(shape=(120, 120), n=9, flux=5e4, sigma=1.5):
    """An image of ``n`` Gaussian stars on a grid, and their centres."""
    y, x = np.indices(shape)
    image = np.zeros(shape)
    centres = [(20 + 40 * (i // 3), 20 + 40 * (i % 3)) for i in range(n)]
    for cy, cx in centres:
        image += flux / (2 * np.pi * sigma ** 2) * np.exp(
            -((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
    return image, centres


def _delta(size=5):
    kernel = np.zeros((size, size))
    kernel[size // 2, size // 2] = 1.0
    return kernel


def _star_field():
    """A reference of nine stars on a sky of 100, its star model through a delta, its noise."""
    stars, centres = _stars()
    median = 100.0
    star_model = stars[2:-2, 2:-2]              # R (x) delta - median, valid region
    return stars + median, star_model, np.full(star_model.shape, 10.0), median, centres


def test_rejected_star_cores_are_counted():
    reference, star_model, sigma, median, centres = _star_field()
    delta = _delta()
    outliers = np.zeros(star_model.shape, bool)
    for cy, cx in centres[:5]:                  # five cores rejected (3 x 3 each)
        outliers[cy - 3:cy, cx - 3:cx] = True
    fraction = rejected_flux_fraction(star_model, sigma, outliers, reference, delta, median)
    # three of five cores count (the two that lost most are ignored), at the
    # 3 x 3 median of the reference
    cy, cx = centres[0]
    per_star = ndimage.median_filter(reference, 3)[cy - 1:cy + 2, cx - 1:cx + 2] - median
    expected = (5 - IGNORED_STARS) * per_star.sum() / star_model[star_model > 3 * sigma].sum()
    assert fraction == pytest.approx(expected, rel=1e-9)
    assert fraction > max(REJECTED_STAR_FLUX_WARNING,
                          STAR_FLUX_EXCESS * outliers.sum() / outliers.size)
    with pytest.warns(FitQualityWarning, match="carry .* of the stars' flux"):
        quality = assess_fit(np.random.default_rng(0).normal(size=10000), delta,
                             n_outliers=int(outliers.sum()), star_model=star_model,
                             sigma=sigma, outliers=outliers, reference=reference,
                             median=median)
    assert quality.causes == ("STARFLUX",)


def test_two_stars_hit_by_cosmic_rays_and_hot_pixels_are_not_counted():
    reference, star_model, sigma, median, centres = _star_field()
    delta = _delta()
    outliers = np.zeros(star_model.shape, bool)
    for cy, cx in centres[:IGNORED_STARS]:      # cosmic rays on two stars
        outliers[cy - 3:cy, cx - 3:cx] = True
    assert rejected_flux_fraction(star_model, sigma, outliers, reference, delta, median) == 0.0
    # hot pixels of the reference, in the model through the kernel, are no stars
    hot = reference.copy()
    hot_model = star_model.copy()
    outliers = np.zeros(star_model.shape, bool)
    for i in range(6):
        y, x = 10 + 17 * i, 38
        hot[y + 2, x + 2] += 1e5
        hot_model[y, x] += 1e5
        outliers[y - 1:y + 2, x - 1:x + 2] = True
    assert rejected_flux_fraction(hot_model, sigma, outliers, hot, delta, median) == 0.0


def test_a_heavy_tail_behind_a_good_scatter_warns():
    rng = np.random.default_rng(1)
    z = rng.normal(size=20000)
    z[:400] = rng.choice([-1, 1], 400) * rng.uniform(6, 20, 400)   # 2% far out
    delta = _delta()
    empty = np.zeros((10, 10))
    with pytest.warns(FitQualityWarning, match=r"beyond 5 sigma.*robust scatter of 1\.0"):
        quality = assess_fit(z, delta, n_outliers=0, star_model=empty, sigma=empty + 1,
                             outliers=empty.astype(bool), reference=empty, median=0.0)
    assert quality.causes == ("TAIL",)
    assert quality.tail_fraction == pytest.approx(0.02, abs=1e-3)


def test_an_untrusted_fit_is_measured_but_not_warned_about_again():
    rng = np.random.default_rng(1)
    z = 3 * rng.normal(size=20000)        # a scatter far from 1
    delta = _delta()
    empty = np.zeros((10, 10))
    settings = dict(n_outliers=0, star_model=empty, sigma=empty + 1,
                    outliers=empty.astype(bool), reference=empty, median=0.0)
    with pytest.warns(FitQualityWarning, match="robust standard deviation"):
        assert assess_fit(z, delta, **settings).causes == ("SCATTER",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quality = assess_fit(z, delta, trusted=False, **settings)
    assert quality.causes == ()
    assert quality.residual_scatter == pytest.approx(3.0, rel=0.05)


def test_p_moving_between_the_clipped_fits_warns():
    delta = _delta()
    empty = np.zeros((10, 10))
    settings = dict(n_outliers=0, star_model=empty, sigma=empty + 1,
                    outliers=empty.astype(bool), reference=empty, median=0.0,
                    scale_factor_error=1e-3)
    z = np.random.default_rng(2).normal(size=20000)
    # robust pass 0.95 (not compared), clipped fits 0.995 then the final 1.0
    with pytest.warns(FitQualityWarning, match=r"P moved by 5 sigma_P between the fits"):
        quality = assess_fit(z, delta, pass_scale_factors=(0.95, 0.995, 1.0), **settings)
    assert quality.causes == ("PSHIFT",)
    assert quality.pass_shift == pytest.approx(5.0)
    assert quality.robust_scale_factor == 0.95
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = assess_fit(z, delta, pass_scale_factors=(0.95, 0.999, 1.0), **settings)
    assert quiet.causes == () and quiet.pass_shift == pytest.approx(1.0)


def test_a_real_pair_with_the_sharper_frame_as_target_is_named():
    """The pyDIA cutout with its frames swapped: the target has the better seeing."""
    pair = PAIRS["pydia"]()
    imager = DifferenceImager(**pair.imager_settings())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = imager.fit(pair.target, pair.reference)
    messages = [str(w.message) for w in caught if issubclass(w.category, FitQualityWarning)]
    assert "DECONVOLVES" in result.quality["causes"], (result.quality, messages)
    assert any("Swap the reference and the target" in m for m in messages)
    assert result.quality["kernel_width"] < DECONVOLUTION_WIDTH
