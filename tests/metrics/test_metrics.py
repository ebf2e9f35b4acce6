"""The validation metrics of paper section 3.2, against analytic values."""

import numpy as np
import pytest
from astropy import units as u
from numpy.testing import assert_allclose

from astro_dia import DifferenceImager
from astro_dia.kernels import gaussian_kernel
from astro_dia.metrics import (mean_fit_bias, mean_fit_variance, mean_photometric_bias,
                               mean_photometric_variance, mean_squared_error,
                               minimum_flux_variance, signal_to_noise)
from astro_dia.simulate import make_image_pair


def test_signal_to_noise_eq_27():
    clean = np.array([[110.0, 130.0], [100.0, 100.0]])
    sigma = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert signal_to_noise(clean, 100.0, sigma) == pytest.approx(40.0 / 5.0)


def test_mean_squared_error_eq_28_with_mask_and_nan():
    truth = np.zeros((4, 4))
    model = np.full((4, 4), 3.0)
    model[0, 0] = np.nan          # left out as non-finite
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    model[1, 1] = 1000.0          # left out by the mask
    assert mean_squared_error(model, truth, mask=mask) == 9.0
    assert isinstance(mean_squared_error(model, truth, mask=mask), float)


def test_fit_bias_and_variance_eq_29_30():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(1, 3, (50, 40))
    z = rng.standard_normal((50, 40))
    model = rng.uniform(0, 10, (50, 40))
    data = model + z * sigma
    assert mean_fit_bias(data, model, sigma) == pytest.approx(z.mean(), rel=1e-12)
    assert mean_fit_variance(data, model, sigma) == pytest.approx(z.var(ddof=1), rel=1e-12)
    # A known offset of half a sigma shows as MFB = 0.5 and leaves MFV alone.
    shifted = data + 0.5 * sigma
    assert mean_fit_bias(shifted, model, sigma) == pytest.approx(z.mean() + 0.5, rel=1e-12)
    assert mean_fit_variance(shifted, model, sigma) == pytest.approx(z.var(ddof=1), rel=1e-12)


def test_quantities_are_accepted():
    data = np.arange(6.0).reshape(2, 3) * u.adu
    assert mean_squared_error(data, data - 2 * u.adu) == 4.0


def test_minimum_flux_variance_of_a_gaussian_psf_eq_31():
    # sum(PSF^2) of a well-sampled normalised Gaussian is 1 / (4 pi s^2), with
    # s^2 = phi^2 + 1/12 for a PSF integrated over pixels.
    phi = 2.0
    psf = gaussian_kernel(41, phi)
    expected = 4 * np.pi * (phi ** 2 + 1 / 12) * 25.0 / 0.8 ** 2
    assert minimum_flux_variance(psf, 5.0, scale_factor=0.8) == pytest.approx(expected, rel=1e-3)


def test_photometric_bias_and_variance_eq_32_33():
    rng = np.random.default_rng(1)
    sigma_min = rng.uniform(1, 2, 400)
    flux = (0.3 + 1.5 * rng.standard_normal(400)) * sigma_min
    ratio = flux / sigma_min
    assert mean_photometric_bias(flux, sigma_min) == pytest.approx(ratio.mean(), rel=1e-12)
    assert mean_photometric_variance(flux, sigma_min) == pytest.approx(ratio.var(ddof=1),
                                                                        rel=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda: mean_squared_error(np.ones((2, 2)), np.ones((3, 3))), "same shape"),
    (lambda: mean_squared_error(np.full(3, np.nan), np.zeros(3)), "no unmasked finite pixel"),
    (lambda: mean_fit_variance(np.ones(1), np.ones(1), np.ones(1)), "at least two pixels"),
    (lambda: minimum_flux_variance(np.zeros((3, 3)), 1.0), "carries no information"),
    (lambda: mean_photometric_bias([np.nan], 1.0), "no finite flux"),
    (lambda: mean_photometric_variance([1.0], 1.0), "at least two simulations"),
])
def test_metric_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_metrics_of_a_real_fit_are_sensible():
    reference, target, truth = make_image_pair(shape=(96, 96), density=100, seed=11)
    result = DifferenceImager(11, flat=1, sky=0).fit(reference, target)
    sigma = np.sqrt(truth.target_variance)
    mask = ~result.fit_mask
    mfb = mean_fit_bias(target.data, result.model.data, sigma, mask=mask)
    mfv = mean_fit_variance(target.data, result.model.data, sigma, mask=mask)
    mse = mean_squared_error(result.model.data, truth.target_noiseless, mask=mask)
    assert abs(mfb) < 0.02
    # Over-fitting with K^2 + 1 parameters lowers the variance by about n_par / n_data.
    n_par, n_data = 11 ** 2 + 1, result.n_data
    assert_allclose(mfv, 1 - n_par / n_data, atol=0.03)
    # The model error is a small fraction of the pixel variance.
    assert mse < 0.2 * np.mean(truth.target_variance[~mask])
