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
