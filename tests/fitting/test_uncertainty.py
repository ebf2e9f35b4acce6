"""Fisher-information uncertainties, their validity checks, and saturation masks (issue #5)."""

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.nddata import CCDData, StdDevUncertainty
from numpy.testing import assert_allclose

from astro_dia import DifferenceImager, KernelFitWarning
from astro_dia.exceptions import SaturationWarning
from astro_dia.losses import HuberLoss, StudentTLoss, laplacian_penalty
from astro_dia.simulate import make_image_pair
from astro_dia.uncertainty import (background_errors, covariance_from_information,
                                   loss_curvature, scale_factor_error)

from .. import reference_solver as rs
from ..conftest import assert_unchanged, snapshot


def _without(image, *keywords):
    """A copy of ``image`` whose header lacks ``keywords``."""
    meta = image.meta.copy()
    for keyword in keywords:
        meta.remove(keyword, ignore_missing=True)
    return CCDData(image.data.copy(), unit=image.unit, meta=meta,
                   uncertainty=image.uncertainty)


# -- the functional core ------------------------------------------------------
def test_loss_curvature_by_autograd():
    z = np.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    assert_allclose(loss_curvature(HuberLoss(c=1.345), z), [0, 1, 1, 1, 0])
    nu = 4.0
    expected = (nu + 1) * (nu - z ** 2) / (nu + z ** 2) ** 2
    assert_allclose(loss_curvature(StudentTLoss(nu), z), expected, rtol=1e-12)
    assert_allclose(loss_curvature(lambda t: 2.0 * t, z), 0.0)          # linear: no curvature
    tensor = loss_curvature(lambda t: t ** 4, torch.tensor(z))
    assert isinstance(tensor, torch.Tensor)
    assert_allclose(tensor.numpy(), 12 * z ** 2)


def test_uncentring_jacobian_and_summaries():
    information = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
    inverse = np.linalg.inv(information)
    covariance, valid = covariance_from_information(information, reference_mean=10.0,
                                                    n_kernel=2)
    assert valid
    jacobian = np.array([[1, 0, 0], [0, 1, 0], [-10.0, -10.0, 1]])
    assert_allclose(covariance, jacobian @ inverse @ jacobian.T, rtol=1e-12)
    sigma_p = scale_factor_error(covariance, 2)
    assert isinstance(sigma_p, float)
    assert_allclose(sigma_p, np.sqrt(inverse[:2, :2].sum()), rtol=1e-12)
    assert_allclose(background_errors(covariance, 2), np.sqrt(covariance[2, 2]))
    assert information[0, 0] == 4.0          # input not modified


@pytest.mark.parametrize("information, match", [
    (np.diag([1.0, -1.0, 1.0]), "not positive"),
    (np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), "not positive"),
    (np.array([[1.0, 1 - 1e-15, 0.0], [1 - 1e-15, 1.0, 0.0], [0.0, 0.0, 1.0]]),
     "condition number|not positive"),
    (np.diag([0.0, 1.0, 1.0]), "no information"),
])
def test_invalid_information_warns(information, match):
    with pytest.warns(KernelFitWarning, match=match):
        covariance, valid = covariance_from_information(information, reference_mean=1.0,
                                                        n_kernel=1)
    assert valid is False
    assert np.isfinite(covariance).all()


def test_undetermined_kernel_shape_alone_does_not_warn():
    # Kernel pixels 0 and 1 are only known through their sum P: the
    # information is singular, but P and B0 are determined.
    information = np.array([[1.0, 1.0, 0.2], [1.0, 1.0, 0.2], [0.2, 0.2, 1.0]])
    covariance, valid = covariance_from_information(information, reference_mean=1.0,
                                                    n_kernel=2)
    assert valid is False
    pseudo_inverse = np.linalg.pinv(information)
    assert_allclose(scale_factor_error(covariance, 2), np.sqrt(pseudo_inverse[:2, :2].sum()),
                    rtol=1e-10)


def test_covariance_from_information_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        covariance_from_information(np.ones((2, 3)), reference_mean=0.0, n_kernel=1)
    with pytest.raises(ValueError, match="finite"):
        covariance_from_information(np.diag([1.0, np.nan]), reference_mean=0.0, n_kernel=1)
    with pytest.raises(ValueError, match="n_kernel"):
        covariance_from_information(np.eye(2), reference_mean=0.0, n_kernel=3)


# -- against the independent solver -------------------------------------------
def test_fisher_matches_reference_solver_for_fixed_weights():
    size, h = 7, 3
    reference, target, _ = make_image_pair(shape=(64, 64), density=100, seed=11)
    result = DifferenceImager(size, noise_model="uncertainty", dtype="float64").fit(reference,
                                                                                  target)
    weights = 1.0 / target.uncertainty.array[h:-h, h:-h] ** 2
    _, _, covariance, _ = rs.solve_weighted(reference.data, target.data, weights, size)
    assert result.covariance_valid is True
    assert_allclose(result.scale_factor_error, rs.scale_factor_error(covariance, size),
                    rtol=1e-6)
    assert_allclose(result.background_error[0].to_value(u.adu),
                    np.sqrt(covariance[-1, -1]), rtol=1e-6)
    assert_allclose(result.kernel_error,
                    np.sqrt(np.diag(covariance)[:size * size]).reshape(size, size), rtol=1e-6)
    assert_allclose(result.covariance, covariance, rtol=1e-6, atol=1e-12 * np.abs(
        covariance).max())


@pytest.mark.slow
def test_calibration_against_noise_realisations():
    # Slow (50 fits); the default suite checks the same Fisher errors against the
    # reference solver (test_fisher_matches_reference_solver_for_fixed_weights).
    # The reference is noiseless (truth.reference_noiseless): the Fisher
    # information of the target likelihood does not know about reference
    # noise, whose scatter would otherwise add to that of P and B0.
    n_realisations = 50
    imager = DifferenceImager(11, flat=1, sky=0)
    scale, offset, scale_err, offset_err = [], [], [], []
    for k in range(n_realisations):
        reference, target, truth = make_image_pair(shape=(96, 96), density=100, seed=7,
                                                   noise_seed=1000 + k)
        # Its uncertainty says so: its header's noise model would describe a
        # noisy reference, whose predicted bias of P is warned about.
        clean = CCDData(truth.reference_noiseless, unit=reference.unit, meta=reference.meta,
                        uncertainty=StdDevUncertainty(np.full(reference.shape, 1e-3)))
        result = imager.fit(clean, target)
        assert result.covariance_valid
        scale.append(result.scale_factor)
        offset.append(result.background_offset.value)
        scale_err.append(result.scale_factor_error)
        offset_err.append(result.background_error[0].value)
    ratio_p = np.std(scale, ddof=1) / np.mean(scale_err)
    ratio_b0 = np.std(offset, ddof=1) / np.mean(offset_err)
    assert abs(ratio_p - 1) < 0.15, ratio_p
    assert abs(ratio_b0 - 1) < 0.15, ratio_b0


def test_noise_seed_renoises_the_same_field():
    a = make_image_pair(shape=(32, 32), seed=5, noise_seed=1)
    b = make_image_pair(shape=(32, 32), seed=5, noise_seed=2)
    c = make_image_pair(shape=(32, 32), seed=5, noise_seed=1)
    assert_allclose(a[2].target_noiseless, b[2].target_noiseless)
    assert not np.allclose(a[1].data, b[1].data)
    assert_allclose(a[1].data, c[1].data)
    plain = make_image_pair(shape=(32, 32), seed=5)
    assert_allclose(plain[2].target_noiseless, a[2].target_noiseless)


# -- regularisation ----------------------------------------------------------------
def test_regularization_smooths_a_low_signal_kernel_within_its_errors():
    reference, target, truth = make_image_pair(shape=(64, 64), density=15, target_sky=3000,
                                               seed=21)
    free = DifferenceImager(9, flat=1, sky=0).fit(reference, target)
    smooth = DifferenceImager(9, flat=1, sky=0, regularization=1.0).fit(reference, target)
    roughness = {name: float(laplacian_penalty(torch.tensor(result.kernel)))
                 for name, result in (("free", free), ("smooth", smooth))}
    assert roughness["smooth"] < 0.5 * roughness["free"], roughness
    assert smooth.covariance_valid and free.covariance_valid
    for result in (free, smooth):
        assert abs(result.scale_factor - truth.scale_factor) < 3 * result.scale_factor_error


# -- a degenerate fit ------------------------------------------------------------------
def test_degenerate_reference_warns_instead_of_reporting_nonsense():
    # A pure gradient: R (x) K = P x - sum(j K_ij), so only P and one mix of
    # the kernel's first moment with B0 are determined.
    ny, nx = 40, 40
    x = np.tile(np.arange(nx, dtype=float), (ny, 1))
    rng = np.random.default_rng(3)
    reference = CCDData(100 + x, unit="adu")
    target = CCDData(110 + x + rng.normal(0, 1, (ny, nx)), unit="adu",
                     uncertainty=StdDevUncertainty(np.ones((ny, nx))))
    with pytest.warns(KernelFitWarning, match="not valid for inversion.*B0"):
        result = DifferenceImager(5, noise_model="uncertainty", dtype="float64").fit(
            reference, target)
    assert result.covariance_valid is False
    assert result.difference.header["DIA_CVOK"] is False


# -- saturation ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def saturated_pair():
    return make_image_pair(shape=(96, 96), density=100, seed=31, saturation=4000.0)


def test_saturated_stars_are_masked_from_the_header(saturated_pair):
    reference, target, _ = saturated_pair
    assert target.header["SATURATE"] == 4000.0
    saturated_target = target.data >= 4000
    saturated_reference = reference.data >= 4000
    assert saturated_target.sum() > 5 and saturated_reference.sum() > 5
    before = snapshot(target)
    masked = DifferenceImager(11, flat=1, sky=0).fit(reference, target)
    assert_unchanged(target, before)
    assert masked.difference.mask[saturated_target].all()
    assert not masked.fit_mask[saturated_target].any()
    # the kernel footprint of every saturated reference pixel is masked
    h = 5
    footprint = np.zeros_like(saturated_reference)
    for y, x in zip(*np.nonzero(saturated_reference)):
        footprint[max(y - h, 0):y + h + 1, max(x - h, 0):x + h + 1] = True
    assert masked.difference.mask[footprint].all()
    assert masked.saturation_levels["target"] == (4000.0, "header SATURATE")
    assert masked.difference.header["DIA_TSAT"] == 4000.0

    # clip=None: outlier rejection would catch part of the flat-topped cores; the
    # flat tops are seen, and named in a warning
    with pytest.warns(SaturationWarning, match="looks saturated.*saturation=4000 "):
        blind = DifferenceImager(11, flat=1, sky=0, clip=None).fit(
            _without(reference, "SATURATE"), _without(target, "SATURATE"))
    assert blind.saturation_levels["target"][0] is None
    assert "DIA_TSAT" not in blind.difference.header
    z_masked, z_blind = masked.normalized_residuals(), blind.normalized_residuals()
    assert abs(z_masked.std() - 1) < 0.05, z_masked.std()
    assert z_blind.std() > z_masked.std() + 0.05, (z_blind.std(), z_masked.std())


@pytest.mark.parametrize("saturation", [4000.0, 4000.0 * u.adu, 4.0 * u.kadu])
def test_saturation_argument_matches_the_header(saturated_pair, saturation):
    reference, target, _ = saturated_pair
    bare = (_without(reference, "SATURATE"), _without(target, "SATURATE"))
    result = DifferenceImager(11, flat=1, sky=0, saturation=saturation).fit(*bare)
    header = DifferenceImager(11, flat=1, sky=0).fit(reference, target)
    np.testing.assert_array_equal(result.difference.mask, header.difference.mask)
    assert_allclose(result.saturation_levels["reference"][0], 4000.0)


def test_satlevel_keyword_and_its_validation(saturated_pair):
    reference, target, _ = saturated_pair
    meta = target.meta.copy()
    del meta["SATURATE"]
    meta["SATLEVEL"] = 4000.0
    alternative = CCDData(target.data, unit="adu", meta=meta, uncertainty=target.uncertainty)
    result = DifferenceImager(11, flat=1, sky=0).fit(reference, alternative)
    assert result.saturation_levels["target"] == (4000.0, "header SATLEVEL")
    meta["SATLEVEL"] = -1.0
    negative = CCDData(target.data, unit="adu", meta=meta)
    with pytest.raises(ValueError, match="SATLEVEL of the target.*positive"):
        DifferenceImager(11, flat=1, sky=0).fit(reference, negative)


@pytest.mark.parametrize("saturation, error, match", [
    (0.0, ValueError, "positive and finite"),
    (np.inf, ValueError, "positive and finite"),
    (-5 * u.adu, ValueError, "positive and finite"),
    ("high", TypeError, "Quantity, a float or None"),
    (True, TypeError, "Quantity, a float or None"),
])
def test_bad_saturation_arguments(saturation, error, match):
    with pytest.raises(error, match=match):
        DifferenceImager(7, saturation=saturation)


def test_saturation_in_incompatible_unit(saturated_pair):
    reference, target, _ = saturated_pair
    with pytest.raises(u.UnitsError, match="saturation is in s"):
        DifferenceImager(11, flat=1, sky=0, saturation=5 * u.s).fit(reference, target)


# -- the result and its provenance ---------------------------------------------------
def test_errors_in_result_and_provenance(ccd_pair):
    reference, target, _ = ccd_pair(density=100)
    result = DifferenceImager(9, flat=1, sky=0).fit(reference, target)
    n = 9 * 9 + 1
    assert result.covariance.shape == (n, n)
    assert isinstance(result.scale_factor_error, float) and result.scale_factor_error > 0
    assert result.background_error.unit == u.adu and result.background_error.shape == (1,)
    assert result.kernel_error.shape == (9, 9) and np.all(result.kernel_error > 0)
    assert result.covariance_valid is True
    header = result.difference.header
    assert header["DIA_PERR"] == pytest.approx(result.scale_factor_error)
    assert header["DIA_B0ER"] == pytest.approx(result.background_error[0].value)

    plain = DifferenceImager(9, flat=1, sky=0, compute_errors=False).fit(reference, target)
    for name in ("covariance", "scale_factor_error", "background_error", "kernel_error",
                 "covariance_valid"):
        assert getattr(plain, name) is None
    assert "DIA_PERR" not in plain.difference.header
    assert "DIA_B0ER" not in plain.difference.header
    assert plain.scale_factor == pytest.approx(result.scale_factor, rel=1e-6)


def test_uniform_noise_errors_use_the_fitted_scatter(ccd_pair):
    reference, target, _ = ccd_pair(density=100, target_sky=100)
    uniform = DifferenceImager(9, noise_model="uniform").fit(reference, target)
    fixed = DifferenceImager(9, noise_model="uncertainty").fit(reference, target)
    # One constant sigma against the true per-pixel one: same order, not equal.
    assert 0.5 < uniform.scale_factor_error / fixed.scale_factor_error < 2
    assert uniform.covariance_valid
