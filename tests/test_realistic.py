"""Messy real-frame conditions: outliers, sky-subtracted frames, a noisy reference."""

import warnings

import numpy as np
import pytest

from astro_dia import DifferenceImager, NoiseModelWarning
from astro_dia.exceptions import FitQualityWarning
from astro_dia.simulate import make_image_pair

from . import reference_solver as rs

KERNEL = 19
HALF = KERNEL // 2


def _scale_error(reference, variance, kernel_size=KERNEL):
    """sigma_P of a weighted fit with the true variances (independent solver)."""
    weights = 1.0 / variance[HALF:-HALF, HALF:-HALF]
    _, _, covariance, _ = rs.solve_weighted(np.nan_to_num(reference.data), reference.data,
                                            weights, kernel_size)
    return rs.scale_factor_error(covariance, kernel_size)


def test_huber_beats_gaussian_with_cosmic_rays_and_a_variable():
    errors = {"gaussian": [], "huber": []}
    for seed in range(200, 203):
        reference, target, truth = make_image_pair(seed=seed, density=100, n_cosmic_rays=30,
                                                   variable_flux=3e4)
        for loss in errors:
            # clip=None compares the losses themselves; with clip (the default)
            # both are good (tests/test_real_frames.py).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FitQualityWarning)  # the Gaussian fit is bad
                result = DifferenceImager(KERNEL, flat=1, sky=0, loss=loss,
                                          clip=None).fit(reference, target)
            errors[loss].append(abs(result.scale_factor - truth.scale_factor))
    gaussian, huber = np.array(errors["gaussian"]), np.array(errors["huber"])
    assert np.all(huber < gaussian)
    assert huber.mean() < 0.3 * gaussian.mean()


@pytest.mark.parametrize("seed", [300, 301])
def test_sky_subtracted_frames_need_the_sky_back_in_the_variance(seed):
    reference, target, truth = make_image_pair(seed=seed, density=100, sky_subtracted=True,
                                               reference_sky=300, target_sky=1000)
    assert target.header["SKYLEVEL"] == 1000
    good = DifferenceImager(KERNEL, flat=1).fit(reference, target)
    # sky=0 contradicts the target's (true) uncertainty, and the model says so;
    # the fit-quality check then reports sigma far too small
    with pytest.warns(NoiseModelWarning, match="the target's uncertainty gives a variance"), \
            pytest.warns(FitQualityWarning, match="subtracted sky"):
        plain = DifferenceImager(KERNEL, flat=1, sky=0).fit(reference, target)
    z_good, z_plain = good.normalized_residuals(), plain.normalized_residuals()
    assert abs(z_good.std() - 1) < 0.05
    assert z_plain.std() > 3            # eq. 6 without the sky: sigma far too small
    sigma_p = _scale_error(reference, truth.target_variance)
    assert abs(good.scale_factor - truth.scale_factor) < 3 * sigma_p
    assert abs(good.scale_factor - truth.scale_factor) < abs(plain.scale_factor
                                                             - truth.scale_factor)
    assert good.difference.header["DIA_SKY"] == 1000


def test_subtracted_sky_without_keyword_is_estimated_with_a_warning():
    reference, target, truth = make_image_pair(seed=302, density=100, sky_subtracted=True,
                                               record_sky=False, reference_sky=300,
                                               target_sky=1000)
    with pytest.warns(NoiseModelWarning, match="sky-subtracted"):
        result = DifferenceImager(KERNEL, flat=1).fit(reference, target)
    sky, source = result.noise_settings["sky"]
    assert source == "estimated from the data"
    assert abs(sky - 1000) < 100
    assert abs(result.normalized_residuals().std() - 1) < 0.05


def test_unsubtracted_frames_raise_no_sky_warning():
    reference, target, _ = make_image_pair(seed=303, density=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = DifferenceImager(KERNEL, flat=1).fit(reference, target)
    assert result.noise_settings["sky"][0] == 0.0


@pytest.mark.parametrize("seed", [400, 401])
def test_reference_as_noisy_as_target(seed):
    reference, target, truth = make_image_pair(seed=seed, density=100,
                                               reference_variance_ratio=1.0, kernel_sigma=0.3,
                                               reference_sky=300, target_sky=300)
    with_ref = DifferenceImager(KERNEL, flat=1, sky=0, reference_noise=True).fit(reference,
                                                                                 target)
    with pytest.warns(FitQualityWarning, match="reference's noise is predicted to bias P"):
        plain = DifferenceImager(KERNEL, flat=1, sky=0).fit(reference, target)
    z_with, z_plain = with_ref.normalized_residuals(), plain.normalized_residuals()
    assert abs(z_with.std() - 1) < 0.05
    assert z_plain.std() > 1.05         # the reference noise is missing from sigma
    total = truth.target_variance + truth.reference_variance * np.sum(truth.kernel ** 2)
    sigma_p = _scale_error(reference, total)
    assert abs(with_ref.scale_factor - truth.scale_factor) < 3 * sigma_p
