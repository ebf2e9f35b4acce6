"""Tests of `astro_dia.io`: the multi-extension FITS result file and `read_image`."""

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty

from astro_dia import DifferenceImager, DifferenceResult
from astro_dia.io import RESULT_FORMAT_VERSION, read_image, read_result, write_result
from astro_dia.simulate import make_image_pair

from ..conftest import assert_unchanged, simple_wcs, snapshot


@pytest.fixture(scope="module")
def fitted():
    """A fit with a WCS, a masked pixel, a first-degree background and errors."""
    reference, target, truth = make_image_pair(shape=(48, 48), density=100, seed=8,
                                               scale_factor=0.9)
    target.wcs = simple_wcs((24.0, 24.0))
    target.mask = np.zeros(target.shape, bool)
    target.mask[30, 12] = True
    imager = DifferenceImager(kernel_size=7, flat=1, sky=0, background_degree=1)
    return imager.fit(reference, target)


@pytest.fixture(scope="module")
def fitted_without_errors():
    reference, target, _ = make_image_pair(shape=(48, 48), density=100, seed=9)
    return DifferenceImager(kernel_size=7, flat=1, sky=0, compute_errors=False).fit(
        reference, target)


def assert_same_image(actual, expected):
    np.testing.assert_array_equal(actual.data, expected.data)
    np.testing.assert_array_equal(actual.mask, expected.mask)
    assert type(actual.uncertainty) is type(expected.uncertainty)
    np.testing.assert_array_equal(actual.uncertainty.array, expected.uncertainty.array)
    assert actual.unit == expected.unit


def test_difference_reads_back_with_ccddata(fitted, tmp_path):
    path = tmp_path / "result.fits"
    before = snapshot(fitted.difference)
    write_result(fitted, path)
    assert_unchanged(fitted.difference, before)
    difference = CCDData.read(path)
    assert_same_image(difference, fitted.difference)
    assert difference.mask[30, 12]
    # Every provenance keyword comes back with its value.
    # (floats to the 14-17 digits that a 20-character FITS value keeps)
    for key, value in fitted.difference.meta.items():
        if isinstance(value, float):
            assert difference.header[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert difference.header[key] == value, key
    assert difference.header["DIA_P"] == pytest.approx(fitted.scale_factor, rel=1e-12)
    assert difference.wcs.wcs.compare(fitted.difference.wcs.wcs)
    with fits.open(path) as hdus:
        names = [hdu.name for hdu in hdus]
    assert names == ["PRIMARY", "MASK", "UNCERT", "KERNEL", "KERNERR", "BKGCOEF", "MODEL",
                     "FITMASK", "FLAGS", "COVAR"]


def test_result_round_trip(fitted, tmp_path):
    path = tmp_path / "result.fits"
    write_result(fitted, path)
    result = read_result(path)
    assert isinstance(result, DifferenceResult)
    assert_same_image(result.difference, fitted.difference)
    np.testing.assert_array_equal(result.kernel, fitted.kernel)
    np.testing.assert_array_equal(result.kernel_error, fitted.kernel_error)
    np.testing.assert_array_equal(result.covariance, fitted.covariance)
    np.testing.assert_array_equal(result.fit_mask, fitted.fit_mask)
    np.testing.assert_array_equal(result.flags, fitted.flags)
    np.testing.assert_array_equal(result.difference.flags, fitted.flags)
    assert (result.n_outliers, result.clip) == (fitted.n_outliers, fitted.clip)
    assert result.residual_scatter == pytest.approx(fitted.residual_scatter, rel=1e-12)
    np.testing.assert_array_equal(result.model.data, fitted.model.data)
    assert result.model.unit == fitted.model.unit
    # Header floats keep 14 to 17 significant digits (a card has 20 characters
    # for the value), so compare them to that precision.
    assert result.scale_factor == pytest.approx(fitted.scale_factor, rel=1e-12)
    assert result.scale_factor_error == pytest.approx(fitted.scale_factor_error, rel=1e-12)
    assert len(result.background_coefficients) == 3
    assert result.background_coefficients.unit == fitted.background_coefficients.unit
    np.testing.assert_array_equal(result.background_coefficients.value,
                                  fitted.background_coefficients.value)
    np.testing.assert_array_equal(result.background_error.value, fitted.background_error.value)
    assert u.allclose(result.background_offset, fitted.background_offset, rtol=1e-12)
    # The background image is rebuilt from the coefficients.
    assert u.allclose(result.background, fitted.background, rtol=1e-12)
    for name in ("background_degree", "n_data", "n_iterations", "converged", "solver",
                 "noise_settings", "saturation_levels", "covariance_valid"):
        assert getattr(result, name) == getattr(fitted, name), name
    for name in ("loss_value", "fit_time"):
        assert getattr(result, name) == pytest.approx(getattr(fitted, name), rel=1e-12), name
    # Methods work on the loaded result.
    np.testing.assert_array_equal(result.normalized_residuals(), fitted.normalized_residuals())
    assert repr(result) == repr(fitted)


def test_optional_parts(fitted, fitted_without_errors, tmp_path):
    path = tmp_path / "small.fits"
    write_result(fitted, path, include_model=False, include_covariance=False)
    result = read_result(path)
    assert result.model is None and result.covariance is None
    assert result.kernel_error is not None
    path = tmp_path / "no_errors.fits"
    write_result(fitted_without_errors, path)
    result = read_result(path)
    assert result.scale_factor_error is None and result.background_error is None
    assert result.kernel_error is None and result.covariance_valid is None
    assert result.scale_factor == fitted_without_errors.scale_factor


def test_write_refuses_to_overwrite_and_bad_objects(fitted, tmp_path):
    path = tmp_path / "result.fits"
    write_result(fitted, path)
    with pytest.raises(OSError, match="already exists"):
        write_result(fitted, path)
    write_result(fitted, path, overwrite=True)
    with pytest.raises(TypeError, match="result must be a DifferenceResult"):
        write_result(fitted.difference, tmp_path / "other.fits")


def test_read_result_errors(fitted, tmp_path):
    with pytest.raises(OSError, match="does not exist"):
        read_result(tmp_path / "missing.fits")
    plain = tmp_path / "plain.fits"
    fitted.difference.write(plain)
    with pytest.raises(ValueError, match="not an astro_dia result file"):
        read_result(plain)
    path = tmp_path / "future.fits"
    write_result(fitted, path)
    with fits.open(path, mode="update") as hdus:
        hdus["KERNEL"].header["DIAFMT"] = RESULT_FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="format version"):
        read_result(path)


def test_read_image(tmp_path):
    image = CCDData(np.arange(12.0).reshape(3, 4), unit="electron",
                    uncertainty=StdDevUncertainty(np.ones((3, 4))))
    path = tmp_path / "image.fits"
    image.write(path)
    again = read_image(path)
    np.testing.assert_array_equal(again.data, image.data)
    assert again.unit == u.electron and again.uncertainty is not None

    fits.PrimaryHDU(np.zeros((3, 4))).writeto(tmp_path / "nounit.fits")
    with pytest.raises(ValueError, match="no BUNIT keyword"):
        read_image(tmp_path / "nounit.fits", what="target")
    assert read_image(tmp_path / "nounit.fits", unit="adu").unit == u.adu
    with pytest.raises(OSError, match="the reference file .* does not exist"):
        read_image(tmp_path / "missing.fits", what="reference")
    (tmp_path / "corrupt.fits").write_bytes(b"SIMPLE  = T" + b"\0" * 100)
    with pytest.raises(OSError, match="not a readable FITS file"):
        read_image(tmp_path / "corrupt.fits")
    fits.PrimaryHDU(np.zeros(5)).writeto(tmp_path / "spectrum.fits")
    with pytest.raises(ValueError, match="no 2-D image"):
        read_image(tmp_path / "spectrum.fits", unit="adu")


def test_read_image_does_not_repeat_astropys_date_fix_notice(tmp_path):
    # A header with DATE-OBS and no MJD-OBS: astropy's WCS 'datfix' notice
    # (FITSFixedWarning) came with every frame read; the header is unchanged.
    import warnings

    from astropy.io import fits as pyfits

    from astro_dia.io import read_image

    header = pyfits.Header({"BUNIT": "adu", "DATE-OBS": "2013-07-30T03:12:00"})
    pyfits.PrimaryHDU(np.zeros((8, 8), np.float32), header).writeto(tmp_path / "f.fits")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(tmp_path / "f.fits")
        CCDData.read(tmp_path / "f.fits")          # astropy's own read gives the notice
    assert sum("datfix" in str(w.message) for w in caught) == 1
    assert image.header["DATE-OBS"] == "2013-07-30T03:12:00"
    assert "MJD-OBS" not in image.header


def test_read_result_does_not_repeat_astropys_date_fix_notice(tmp_path):
    # The series reads every result file back (161 notices for 101 pyDIA frames).
    import warnings

    reference, target, _ = make_image_pair(shape=(40, 40), density=100, seed=3)
    # as in the pyDIA frames: the day in DATE-OBS, the time in MJD-OBS
    target.meta["DATE-OBS"] = "2013-07-30"
    target.meta["MJD-OBS"] = 56503.6
    result = DifferenceImager(kernel_size=5, flat=1, sky=0).fit(reference, target)
    path = tmp_path / "diff.fits"
    write_result(result, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = read_result(path)
        CCDData.read(path, hdu_mask="MASK", hdu_uncertainty="UNCERT")   # astropy's own: notice
    assert sum("datfix" in str(w.message) for w in caught) == 1
    assert back.difference.header["DATE-OBS"] == "2013-07-30"
    assert back.difference.header["MJD-OBS"] == 56503.6


def test_pixels_only_read_is_the_full_read_without_the_wcs(fitted, tmp_path):
    path = tmp_path / "result.fits"
    write_result(fitted, path)
    full = read_result(path)
    for model in (True, False):
        lean = read_result(path, model=model, wcs=False)
        assert_same_image(lean.difference, full.difference)
        assert lean.difference.data.dtype == np.dtype(float)      # native byte order
        assert lean.difference.wcs is None and full.difference.wcs is not None
        np.testing.assert_array_equal(lean.difference.flags, full.flags)
        np.testing.assert_array_equal(lean.kernel, full.kernel)
        assert lean.scale_factor == full.scale_factor
        assert lean.scale_factor_error == full.scale_factor_error
        assert lean.quality == full.quality
        np.testing.assert_array_equal(lean.background.value, full.background.value)
        assert lean.difference.header["DIA_P"] == full.difference.header["DIA_P"]
        if model:
            np.testing.assert_array_equal(lean.model.data, full.model.data)
        else:
            assert lean.model is None


@pytest.mark.parametrize("degree", [0, 2])
def test_background_is_rebuilt_exactly(degree, tmp_path):
    # The background image from the coefficients: the basis images, term by term,
    # as background_basis makes them.
    from astro_dia.background import background_basis

    reference, target, _ = make_image_pair(shape=(40, 52), density=100, seed=4)
    result = DifferenceImager(kernel_size=5, flat=1, sky=0,
                              background_degree=degree).fit(reference, target)
    path = tmp_path / "result.fits"
    write_result(result, path)
    again = read_result(path)
    expected = np.tensordot(again.background_coefficients.value,
                            background_basis((40, 52), degree), axes=1)
    np.testing.assert_array_equal(again.background.value, expected)
    assert u.allclose(again.background, result.background, rtol=1e-10,
                      atol=1e-10 * result.background.unit)


def test_result_in_electrons_round_trips(tmp_path):
    # FITS has no unit "electron": BUNIT and TUNIT are written as CCDData writes BUNIT
    # (the model's BUNIT used to raise here).
    reference, target, _ = make_image_pair(shape=(48, 48), density=100, seed=10)
    # the simulated adu are electrons at gain 1
    reference = CCDData(reference.data, unit="electron", meta=reference.meta)
    target = CCDData(target.data, unit="electron", meta=target.meta)
    result = DifferenceImager(kernel_size=7, flat=1, sky=0,
                              background_degree=1).fit(reference, target)
    path = tmp_path / "electrons.fits"
    write_result(result, path)
    again = read_result(path)
    assert again.difference.unit == u.electron
    assert again.model.unit == u.electron
    np.testing.assert_allclose(again.difference.data, result.difference.data)
    assert u.allclose(again.background_coefficients, result.background_coefficients)
    assert u.allclose(again.background_error, result.background_error)
    assert again.background_coefficients.unit == u.electron
