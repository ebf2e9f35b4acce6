"""Tests of astro_dia.detection.significance: the matched-filter S/N image."""

import numpy as np
import pytest
from astropy.stats import mad_std
from astropy.utils.exceptions import AstropyUserWarning

from astro_dia.detection import significance_image
from astro_dia.photometry import gaussian_psf, render_psf
from astro_dia.simulate import inject_point_sources

from ..conftest import assert_unchanged, snapshot
from .helpers import PSF_SIGMA, TARGET_SIGMA, fitted_pair, noise_difference

FWHM = 2.3548 * 2.0


def test_pure_noise_has_unit_scatter_before_calibration():
    difference = noise_difference()
    snr = significance_image(difference, gaussian_psf(FWHM), calibrate=False)
    values = snr.data[~snr.mask]
    assert abs(np.std(values) - 1.0) < 0.06
    assert abs(np.mean(values)) < 0.1
    assert abs(snr.meta["DIA_SSTD"] - 1.0) < 0.06
    assert snr.meta["DIA_SFWH"] == pytest.approx(FWHM, rel=0.05)


def test_point_source_significance_is_the_analytic_value():
    sigma, flux = 10.0, 2500.0
    difference = noise_difference(sigma=sigma, seed=1)
    difference = inject_point_sources(difference, 100.0, 90.0, flux, 2.0)
    snr = significance_image(difference, gaussian_psf(FWHM), calibrate=False)
    phi = render_psf(gaussian_psf(FWHM), 21)
    expected = flux * np.sqrt((phi ** 2).sum()) / sigma   # matched filter, white noise
    assert snr.data[90, 100] == pytest.approx(expected, abs=1.5)   # +- 1 sigma of noise
    assert expected > 30


def test_masked_column_is_excluded_and_neighbours_keep_unit_scatter():
    mask = np.zeros((200, 200), bool)
    mask[:, 100] = True
    difference = noise_difference(mask=mask, seed=2)
    difference.data[:, 100] = np.nan
    snr = significance_image(difference, gaussian_psf(FWHM), calibrate=False)
    assert snr.mask[:, 100].all() and np.isnan(snr.data[:, 100]).all()
    beside = snr.data[10:-10, [98, 99, 101, 102]]
    assert np.isfinite(beside).all()
    assert 0.9 < np.std(beside) < 1.1


def test_underestimated_uncertainty_is_calibrated_with_a_warning():
    difference = noise_difference(seed=3)
    difference.uncertainty.array[:] /= 2.0     # our own image: quoted noise half the real
    with pytest.warns(AstropyUserWarning, match=r"robust scatter of (1\.9|2\.0)"):
        snr = significance_image(difference, gaussian_psf(FWHM))
    assert abs(mad_std(snr.data[~snr.mask]) - 1.0) < 1e-6
    assert snr.meta["DIA_SSTD"] == pytest.approx(2.0, rel=0.06)


def test_default_psf_is_measured_on_the_model():
    result, *_ = fitted_pair()
    snr = significance_image(result)
    assert snr.meta["DIA_SFWH"] == pytest.approx(2.3548 * TARGET_SIGMA, rel=0.1)
    with_psf = significance_image(result, gaussian_psf(2.3548 * PSF_SIGMA))
    assert with_psf.meta["DIA_SFWH"] == pytest.approx(2.3548 * TARGET_SIGMA, rel=0.1)


def test_inputs_are_not_changed():
    difference = noise_difference(seed=5)
    before = snapshot(difference)
    significance_image(difference, gaussian_psf(FWHM))
    assert_unchanged(difference, before)


def test_difference_without_uncertainty_is_an_error():
    difference = noise_difference()
    difference.uncertainty = None
    with pytest.raises(ValueError, match="no uncertainty"):
        significance_image(difference, gaussian_psf(FWHM))


def test_all_masked_is_an_error():
    difference = noise_difference(mask=np.ones((200, 200), bool))
    with pytest.raises(ValueError, match="every pixel"):
        significance_image(difference, gaussian_psf(FWHM))


def test_unmasked_nan_is_an_error():
    difference = noise_difference()
    difference.data[5, 5] = np.nan
    with pytest.raises(ValueError, match="1 non-finite pixels"):
        significance_image(difference, gaussian_psf(FWHM))


def test_psf_larger_than_the_image_is_an_error():
    difference = noise_difference(shape=(20, 20))
    with pytest.raises(ValueError, match="larger than the image"):
        significance_image(difference, gaussian_psf(12.0))


def test_no_psf_and_no_model_is_an_error():
    with pytest.raises(ValueError, match="pass reference_psf"):
        significance_image(noise_difference())


def _direct_filter(data, variance, good, psf_image):
    """The matched filter written out with scipy's fftconvolve, one call per image."""
    from scipy.signal import fftconvolve

    flipped = psf_image[::-1, ::-1]
    weight = np.where(good, 1.0 / variance, 0.0)
    numerator = fftconvolve(data * weight, flipped, mode="same")
    information = fftconvolve(weight, flipped ** 2, mode="same")
    coverage = fftconvolve(good.astype(float), flipped ** 2, mode="same") / (
        psf_image ** 2).sum()
    defined = good & (coverage >= 0.5) & (information > 0)
    return np.where(defined, numerator / np.sqrt(np.where(defined, information, 1.0)), np.nan)


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (None, 2e-5)])
def test_filters_sharing_one_transform_are_the_direct_correlations(dtype, tolerance):
    # The images are transformed once and filtered by kernels of several sizes
    # (smaller, then larger than the grid was padded for, and of even side); in
    # double precision as scipy's fftconvolve does, in the default single
    # precision to a few millionths of a sigma.
    from astro_dia.detection.significance import FilterInputs, matched_filter

    rng = np.random.default_rng(11)
    shape = (90, 131)
    variance = rng.uniform(0.5, 4.0, shape)
    data = rng.normal(0.0, 1.0, shape) * np.sqrt(variance)
    data[40, 50] = 300.0                           # a bright residual
    good = rng.random(shape) > 0.1
    good[:, :7] = False
    data = np.where(good, data, 0.0)
    variance = np.where(good, variance, 1.0)
    kernels = [render_psf(gaussian_psf(fwhm), size)
               for fwhm, size in ((3.0, 15), (2.0, 9), (6.0, 41))]
    kernels.append(rng.random((6, 8)))
    inputs = FilterInputs(data, variance, good, 15, dtype=dtype)
    for kernel in kernels:
        shared = matched_filter(data, variance, good, kernel, inputs)
        direct = _direct_filter(data, variance, good, kernel)
        np.testing.assert_array_equal(np.isnan(shared), np.isnan(direct))
        defined = ~np.isnan(direct)
        assert defined.mean() > 0.5
        assert np.max(np.abs(direct[defined])) > 20
        assert np.max(np.abs(shared[defined] - direct[defined])) < tolerance
