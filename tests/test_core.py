"""DifferenceImager: boundary validation, purity, and what the result carries."""

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.nddata import CCDData, NDData, StdDevUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from numpy.testing import assert_allclose

from astro_dia import ConvergenceWarning, DIAError, DifferenceImager
from astro_dia.background import evaluate_background
from astro_dia.exceptions import FitQualityWarning
from astro_dia.flags import OUTLIER
from astro_dia.losses import laplacian_penalty

from .conftest import DEVICES, assert_unchanged, simple_wcs, snapshot

SMALL = dict(kernel_size=9, flat=1, sky=0)


@pytest.fixture
def pair(ccd_pair):
    return ccd_pair(density=60)


def _wcs(crpix=(32.0, 32.0)):
    return simple_wcs(crpix)


# -- construction -----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kernel_size=4), ValueError, "kernel_size must be odd, got 4"),
    (dict(kernel_size=0), ValueError, "kernel_size must be positive"),
    (dict(kernel_size=9.0), TypeError, "odd integer"),
    (dict(noise_model="poisson"), ValueError, "noise_model must be one of"),
    (dict(loss="l1"), ValueError, "loss must be one of"),
    (dict(solver="magic"), ValueError, "solver must be one of"),
    (dict(device="tpu"), ValueError, "device must be"),
    (dict(dtype="float16"), ValueError, "dtype must be 'float32' or 'float64'"),
    (dict(regularization=-1), ValueError, "regularization must be non-negative"),
    (dict(background_degree=-1), ValueError, "background_degree must be a non-negative"),
    (dict(kernel_init="ring"), ValueError, "kernel_init must be"),
    (dict(kernel_init=np.ones((3, 3))), ValueError, "kernel_init array"),
    (dict(max_iter=0), ValueError, "max_iter must be at least 1"),
    (dict(preconditioner="jacobi"), ValueError, "preconditioner must be"),
    (dict(gain=-2.0), ValueError, "gain must be positive"),
    (dict(noise_model="uniform", gain=2.0), ValueError, "does not take gain"),
])
def test_bad_settings_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        DifferenceImager(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_requested_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device is available"):
        DifferenceImager(device="cuda")


def test_auto_device_and_repr():
    imager = DifferenceImager(9)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert imager.device == expected
    assert imager.dtype == "float32"
    assert "kernel_size=9" in repr(imager)
    assert f"device={expected!r}, dtype='float32'" in repr(imager)


# -- input validation ---------------------------------------------------------------------
def test_arrays_must_be_wrapped(pair):
    reference, target, _ = pair
    with pytest.raises(TypeError, match=r"wrap an array as CCDData"):
        DifferenceImager(**SMALL).fit(reference.data, target)


def test_shapes_must_match(pair):
    reference, target, _ = pair
    with pytest.raises(ValueError, match="same pixel grid"):
        DifferenceImager(**SMALL).fit(reference[:60, :60], target)


def test_images_must_be_two_dimensional():
    cube = CCDData(np.ones((2, 32, 32)), unit="adu")
    with pytest.raises(ValueError, match="must be a 2-D image"):
        DifferenceImager(**SMALL).fit(cube, cube)


def test_kernel_larger_than_image(pair):
    reference, target, _ = pair
    with pytest.raises(ValueError, match="does not fit the image"):
        DifferenceImager(65, flat=1, sky=0).fit(reference, target)


def test_too_few_pixels_for_the_unknowns(ccd_pair):
    reference, target, _ = ccd_pair(shape=(25, 25))
    with pytest.raises(DIAError, match="usable pixels for 362 unknowns"):
        DifferenceImager(19, flat=1, sky=0).fit(reference, target)


def test_fully_masked_target(pair):
    reference, target, _ = pair
    masked = CCDData(target.data, unit=target.unit, meta=target.meta,
                     mask=np.ones(target.shape, bool))
    with pytest.raises(DIAError, match="every pixel of the target is masked"):
        DifferenceImager(**SMALL).fit(reference, masked)


def test_constant_reference(pair):
    _, target, _ = pair
    flat_reference = CCDData(np.full(target.shape, 100.0), unit="adu", meta=target.meta)
    with pytest.raises(DIAError, match="reference is constant"):
        DifferenceImager(**SMALL).fit(flat_reference, target)


def test_incompatible_units(pair):
    reference, target, _ = pair
    in_electrons = CCDData(reference.data, unit="electron", meta=reference.meta)
    with pytest.raises(u.UnitsError, match="reference unit electron cannot be converted "
                                           "to the target unit adu"):
        DifferenceImager(**SMALL).fit(in_electrons, target)


def test_compatible_units_are_converted(ccd_pair):
    reference, target, _ = ccd_pair(unit="electron", gain=2.0)
    kilo = CCDData(reference.data / 1000, unit=u.Unit(1000 * u.electron), meta=reference.meta)
    plain = DifferenceImager(**SMALL).fit(reference, target)
    converted = DifferenceImager(**SMALL).fit(kilo, target)
    assert_allclose(converted.scale_factor, plain.scale_factor, rtol=1e-5)


def test_wcs_mismatch_is_refused_and_agreement_accepted(pair):
    reference, target, _ = pair
    target = CCDData(target.data, unit="adu", meta=target.meta, wcs=_wcs())
    shifted = CCDData(reference.data, unit="adu", meta=reference.meta,
                      wcs=_wcs((34.0, 32.0)))
    with pytest.raises(ValueError, match="WCS disagree by up to 2 pixels"):
        DifferenceImager(**SMALL).fit(shifted, target)
    same = CCDData(reference.data, unit="adu", meta=reference.meta, wcs=_wcs())
    result = DifferenceImager(**SMALL).fit(same, target)
    assert result.difference.wcs is not None


def test_missing_gain_names_keywords(pair):
    reference, target, _ = pair
    bare = CCDData(target.data, unit="adu", meta={"RDNOISE": 5.0})
    with pytest.raises(ValueError, match="GAIN, EGAIN or CCDGAIN"):
        DifferenceImager(**SMALL).fit(reference, bare)


def test_missing_flat_is_an_error_not_a_default(pair):
    reference, target, _ = pair
    with pytest.raises(ValueError, match="flat=1 for a flat-fielded image"):
        DifferenceImager(9, sky=0).fit(reference, target)


# -- masks, NaNs and purity ------------------------------------------------------------------
def test_nan_columns_are_masked_with_a_warning(ccd_pair):
    reference, target, _ = ccd_pair(density=60, bad_columns=[20])
    with pytest.warns(AstropyUserWarning, match="64 NaN or infinite pixels"):
        result = DifferenceImager(**SMALL).fit(reference, target)
    assert result.difference.mask[:, 20].all()
    assert not result.fit_mask[:, 20].any()
    inside = result.fit_mask
    assert np.isfinite(result.difference.data[inside]).all()
    assert abs(result.normalized_residuals().std() - 1) < 0.1


def test_bad_reference_pixels_mask_their_kernel_footprint(pair):
    reference, target, _ = pair
    mask = np.zeros(reference.shape, bool)
    mask[30, 30] = True
    masked_reference = CCDData(reference.data, unit="adu", meta=reference.meta, mask=mask)
    result = DifferenceImager(**SMALL).fit(masked_reference, target)
    # Every model pixel within half a kernel (4 px) of (30, 30) is undefined.
    assert result.difference.mask[26:35, 26:35].all()
    assert np.isnan(result.model.data[26:35, 26:35]).all()
    assert not result.difference.mask[20, 20]
    assert not result.fit_mask[26:35, 26:35].any()


def test_border_is_masked_and_nan(pair):
    reference, target, _ = pair
    result = DifferenceImager(**SMALL).fit(reference, target)
    border = np.ones(target.shape, bool)
    border[4:-4, 4:-4] = False
    assert result.difference.mask[border].all()
    assert np.isnan(result.difference.data[border]).all()
    assert not result.difference.mask[~border].any()
    assert result.n_data == 56 * 56


def test_target_mask_is_kept_and_excluded_from_the_fit(pair):
    reference, target, _ = pair
    mask = np.zeros(target.shape, bool)
    mask[30:34, 30:34] = True
    masked = CCDData(target.data, unit="adu", meta=target.meta, mask=mask,
                     uncertainty=target.uncertainty)
    result = DifferenceImager(**SMALL).fit(reference, masked)
    assert result.difference.mask[mask].all()
    assert not result.fit_mask[mask].any()
    assert result.n_data == 56 * 56 - 16


def test_inputs_are_never_modified(ccd_pair):
    reference, target, _ = ccd_pair(density=60, bad_columns=[10])
    reference.mask = np.zeros(reference.shape, bool)
    reference.mask[5, 5] = True
    flat = np.full(target.shape, 2.0)
    before = snapshot(reference), snapshot(target)
    flat_before = flat.copy()
    with pytest.warns(AstropyUserWarning):
        DifferenceImager(**dict(SMALL, flat=flat), reference_noise=True).fit(reference, target)
    assert_unchanged(reference, before[0])
    assert_unchanged(target, before[1])
    np.testing.assert_array_equal(flat, flat_before)


# -- what comes back --------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_result_contents_and_provenance(pair, device):
    reference, target, truth = pair
    result = DifferenceImager(**SMALL, device=device).fit(reference, target)
    diff = result.difference
    assert isinstance(diff, CCDData) and diff.unit == target.unit
    assert isinstance(diff.uncertainty, StdDevUncertainty)
    assert result.kernel.shape == (9, 9)
    assert isinstance(result.scale_factor, float)
    assert_allclose(result.scale_factor, result.kernel.sum())
    assert result.background.unit == u.adu and result.background.shape == target.shape
    assert_allclose(result.background.value,
                    evaluate_background(result.background_coefficients.value, target.shape))
    assert result.converged and result.n_iterations > 0 and result.fit_time > 0
    # difference = target - model where defined
    defined = ~diff.mask
    assert_allclose(diff.data[defined], target.data[defined] - result.model.data[defined])
    header = diff.header
    assert header["DIA_P"] == pytest.approx(result.scale_factor)
    assert header["DIA_B0"] == pytest.approx(result.background_offset.value)
    assert header["DIA_KSZ"] == 9 and header["DIA_NOIS"] == "ccd"
    assert header["DIA_LOSS"] == "gaussian" and header["DIA_SOLV"] == "direct"
    assert "DIA_VER" in header and header["GAIN"] == target.header["GAIN"]
    assert "DIA_P" not in target.header
    assert "P=" in repr(result)


def test_add_keyword_false_leaves_meta_alone(pair):
    reference, target, _ = pair
    result = DifferenceImager(**SMALL, add_keyword=False).fit(reference, target)
    assert not any(key.startswith("DIA_") for key in result.difference.meta)


def test_call_returns_the_difference(pair):
    reference, target, _ = pair
    imager = DifferenceImager(**SMALL)
    difference = imager(reference, target)
    assert_allclose(difference.data, imager.fit(reference, target).difference.data,
                    equal_nan=True)


def test_nddata_and_integer_big_endian_inputs(pair):
    reference, target, _ = pair
    as_nddata = NDData(np.rint(reference.data).astype(">i4"), unit="adu", meta=reference.meta)
    big_endian = CCDData(target.data.astype(">f8"), unit="adu", meta=target.meta)
    result = DifferenceImager(**SMALL).fit(as_nddata, big_endian)
    assert isinstance(result.difference, CCDData)
    assert np.isfinite(result.scale_factor)


def test_adu_and_electron_data_give_the_same_fit(ccd_pair):
    ref_adu, tgt_adu, _ = ccd_pair(gain=2.0, density=60)
    ref_e, tgt_e, _ = ccd_pair(gain=2.0, density=60, unit="electron")
    in_adu = DifferenceImager(**SMALL, dtype="float64").fit(ref_adu, tgt_adu)
    in_e = DifferenceImager(**SMALL, dtype="float64").fit(ref_e, tgt_e)
    assert_allclose(in_e.scale_factor, in_adu.scale_factor, rtol=1e-6)
    assert_allclose(in_e.background_offset.to_value(u.electron),
                    2.0 * in_adu.background_offset.to_value(u.adu), rtol=1e-5)
    assert in_e.difference.unit == u.electron
    assert_allclose(in_e.difference.uncertainty.array, 2 * in_adu.difference.uncertainty.array,
                    rtol=1e-5, equal_nan=True)


def test_float32_and_float64_agree(pair):
    reference, target, _ = pair
    single = DifferenceImager(**SMALL, dtype="float32").fit(reference, target)
    double = DifferenceImager(**SMALL, dtype="float64").fit(reference, target)
    assert_allclose(single.scale_factor, double.scale_factor, rtol=1e-5)


def test_emccd_pair(ccd_pair):
    reference, target, truth = ccd_pair(noise_model="emccd", gain=25.8, em_gain=300.0,
                                        density=60, shape=(96, 96))
    result = DifferenceImager(9, noise_model="emccd", flat=1, sky=0).fit(reference, target)
    assert result.difference.header["DIA_NOIS"] == "emccd"
    assert result.noise_settings["em_gain"] == (300.0, "header EMGAIN")
    assert abs(result.normalized_residuals().std() - 1) < 0.05
    assert abs(result.scale_factor - truth.scale_factor) < 0.05


def test_polynomial_background_is_recovered(ccd_pair):
    reference, target, truth = ccd_pair(shape=(96, 96), density=60)
    gradient = evaluate_background([0.0, 40.0, -60.0], target.shape)   # xi and eta terms
    tilted = CCDData(target.data + gradient, unit="adu", meta=target.meta)
    result = DifferenceImager(9, flat=1, sky=0, background_degree=1).fit(reference, tilted)
    coefficients = result.background_coefficients.value
    assert_allclose(coefficients[1:], [40.0, -60.0], atol=5.0)
    assert abs(coefficients[0] - truth.background) < 5.0
    with pytest.warns(FitQualityWarning, match="robust standard deviation"):
        # a constant background cannot follow the tilt: the residuals say so
        constant = DifferenceImager(9, flat=1, sky=0).fit(reference, tilted)
    assert (result.normalized_residuals().std()
            < constant.normalized_residuals().std() - 0.05)


def test_regularization_smooths_the_kernel(ccd_pair):
    reference, target, truth = ccd_pair(shape=(96, 96), density=20, target_sky=2000)
    rough = DifferenceImager(11, flat=1, sky=0).fit(reference, target)
    smooth = DifferenceImager(11, flat=1, sky=0, regularization=1.0).fit(reference, target)
    assert (laplacian_penalty(torch.as_tensor(smooth.kernel))
            < 0.5 * laplacian_penalty(torch.as_tensor(rough.kernel)))
    assert smooth.difference.header["DIA_LAMB"] == 1.0
    assert abs(smooth.scale_factor - truth.scale_factor) < 0.1


@pytest.mark.parametrize("loss", ["huber", "student_t", lambda z: 0.5 * z * z])
def test_other_losses_run_and_agree_on_clean_data(pair, loss):
    reference, target, _ = pair
    gaussian = DifferenceImager(**SMALL).fit(reference, target)
    other = DifferenceImager(**SMALL, loss=loss).fit(reference, target)
    assert other.converged
    assert abs(other.scale_factor - gaussian.scale_factor) < 0.02


def test_custom_callable_equals_gaussian_exactly(pair):
    reference, target, _ = pair
    gaussian = DifferenceImager(**SMALL, dtype="float64").fit(reference, target)
    custom = DifferenceImager(**SMALL, dtype="float64", loss=lambda z: 0.5 * z * z).fit(
        reference, target)
    assert_allclose(custom.scale_factor, gaussian.scale_factor, rtol=1e-8)


def test_uniform_noise_estimates_sigma_from_residuals(pair):
    reference, target, truth = pair
    result = DifferenceImager(9, noise_model="uniform").fit(reference, target)
    z = result.normalized_residuals()
    assert abs(z.std() - 1) < 0.15
    assert result.difference.header["DIA_NOIS"] == "uniform"


def test_paper_scheme_diagonal_preconditioner_with_adam_agrees(pair):
    reference, target, _ = pair
    fast = DifferenceImager(**SMALL, dtype="float64").fit(reference, target)
    paper = DifferenceImager(**SMALL, dtype="float64", preconditioner="diagonal",
                             max_adam_iter=100, max_iter=5000).fit(reference, target)
    assert_allclose(paper.scale_factor, fast.scale_factor, rtol=1e-4)


def test_iteration_limit_warns(ccd_pair):
    reference, target, _ = ccd_pair(density=60, n_cosmic_rays=20, variable_flux=3e4)
    with pytest.warns(ConvergenceWarning, match="without converging"):
        result = DifferenceImager(**SMALL, loss="huber", max_iter=1).fit(reference, target)
    assert not result.converged
    assert result.difference.header["DIA_CONV"] is False


def test_exclude_keeps_a_variable_star_out_of_the_fit(ccd_pair):
    """A brightening star pulls P up; excluding its pixels from the fit removes the pull."""
    reference, target, truth = ccd_pair(shape=(72, 72), density=100, variable_flux=3e5)
    brightest = truth.stars[int(np.argmax(truth.stars["flux"]))]
    yy, xx = np.indices(target.shape)
    region = np.hypot(xx - brightest["x"], yy - brightest["y"]) < 8
    # clip=None: outlier rejection would leave the variable's core out by itself
    imager = DifferenceImager(9, flat=1, sky=0, clip=None)
    with pytest.warns(FitQualityWarning, match="robust standard deviation"):
        pulled = imager.fit(reference, target)   # the pulled fit leaves bad residuals
    result = imager.fit(reference, target, exclude=region)
    assert not result.fit_mask[region].any()
    # every fitted pixel outside the region is fitted, bar outliers
    assert result.n_data + result.n_outliers == (
        pulled.n_data + pulled.n_outliers - int(((pulled.fit_mask | (pulled.flags & OUTLIER > 0))
                                                 & region).sum()))
    # the variable is differenced, not masked, and stands out
    assert not result.difference.mask[region & pulled.fit_mask].any()
    z = result.difference.data / result.difference.uncertainty.array
    assert np.nanmax(z[region]) > 20
    # the pull on P is gone: within 3 sigma of the truth, and the pulled fit is not
    assert abs(result.scale_factor - truth.scale_factor) < 3 * result.scale_factor_error
    assert abs(pulled.scale_factor - truth.scale_factor) > 3 * pulled.scale_factor_error


@pytest.mark.parametrize("exclude, error, match", [
    (np.zeros((5, 5), bool), ValueError, r"exclude must have the image shape \(64, 64\)"),
    (np.zeros((64, 64)), TypeError, "exclude must be a boolean array"),
])
def test_bad_exclude(ccd_pair, exclude, error, match):
    reference, target, _ = ccd_pair()
    with pytest.raises(error, match=match):
        DifferenceImager(9, flat=1, sky=0).fit(reference, target, exclude=exclude)
