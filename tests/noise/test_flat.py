"""Tests of astro_dia.noise._flat: the master flat of eq. 6/7, loaded or recovered."""

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import CCDData, StdDevUncertainty
from numpy.testing import assert_allclose

from astro_dia.noise import CCDNoiseModel

from .helpers import SHAPE, image, random_flat, random_model


@pytest.mark.parametrize("meta", [{}, {"FLAT": True}, {"FLATFILE": 3.0}])
def test_missing_flat_lists_every_keyword(meta):
    with pytest.raises(ValueError, match="needs the master flat") as info:
        CCDNoiseModel(sky=0).variance_terms(image(meta={"GAIN": 2.0, "RDNOISE": 5.0, **meta}))
    for keyword in ("FLATFILE", "FLATNAME", "FLAT"):
        assert keyword in str(info.value)


# --------------------------------------------------------------------------
# The flat


def test_flat_array_is_normalised_to_mean_one():
    flat = random_flat()
    terms = CCDNoiseModel(gain=2.0, read_noise=4.0, flat=flat, sky=0).variance_terms(image())
    normalised = flat / flat.mean()
    assert_allclose(terms.slope, 1 / (2.0 * normalised), rtol=1e-13)
    assert_allclose(terms.constant, 4.0 / normalised ** 2, rtol=1e-13)
    assert terms.bad is None
    assert terms.settings["flat"] == "argument"


def test_flat_ccddata_is_accepted():
    flat = random_flat()
    terms = CCDNoiseModel(gain=2.0, read_noise=4.0, flat=CCDData(flat, unit=""),
                          sky=0).variance_terms(image())
    assert_allclose(terms.slope, flat.mean() / (2.0 * flat), rtol=1e-13)


def test_flat_zero_negative_and_nan_pixels_are_flagged_bad():
    flat = random_flat()
    flat[0, 0], flat[3, 4], flat[5, 5] = 0.0, np.nan, -1.0
    terms = CCDNoiseModel(gain=2.0, read_noise=4.0, flat=flat, sky=0).variance_terms(image())
    expected_bad = np.zeros(SHAPE, bool)
    expected_bad[0, 0] = expected_bad[3, 4] = expected_bad[5, 5] = True
    np.testing.assert_array_equal(terms.bad, expected_bad)
    good = ~expected_bad
    # normalised by the mean of the good pixels only
    assert_allclose(terms.slope[good], flat[good].mean() / (2.0 * flat[good]), rtol=1e-13)
    assert np.all(np.isfinite(terms.variance(random_model())))


def test_flat_shape_mismatch():
    model = CCDNoiseModel(gain=2.0, read_noise=4.0, flat=np.ones((3, 3)), sky=0)
    message = r"flat must have the image shape \(12, 10\), got \(3, 3\)"
    with pytest.raises(ValueError, match=message):
        model.variance_terms(image())


def test_flat_without_any_good_pixel():
    with pytest.raises(ValueError, match="flat has no positive finite pixel"):
        CCDNoiseModel(gain=2.0, read_noise=4.0, flat=np.zeros(SHAPE), sky=0).variance_terms(
            image())


@pytest.mark.parametrize("flat", [0.0, -1.0, np.nan])
def test_bad_scalar_flat(flat):
    with pytest.raises(ValueError, match="flat must be positive and finite"):
        CCDNoiseModel(gain=2.0, read_noise=4.0, flat=flat, sky=0).variance_terms(image())


def test_flat_one_opts_out():
    terms = CCDNoiseModel(gain=2.0, read_noise=4.0, flat=1, sky=0).variance_terms(image())
    assert np.ndim(terms.slope) == 0 and terms.slope == 0.5
    assert terms.bad is None
    assert terms.settings["flat"] == "uniform (flat=1)"


@pytest.mark.parametrize("keyword", ["FLATFILE", "FLATNAME", "FLAT"])
def test_flat_file_named_in_the_header_is_read(tmp_path, keyword):
    flat = random_flat()
    flat[2, 2] = 0.0
    path = tmp_path / "master_flat.fits"
    CCDData(flat, unit=u.dimensionless_unscaled).write(path)
    meta = {"GAIN": 2.0, "RDNOISE": 4.0, keyword: str(path)}
    terms = CCDNoiseModel(sky=0).variance_terms(image(meta=meta))
    assert terms.settings["flat"] == f"header {keyword}"
    assert terms.bad[2, 2] and terms.bad.sum() == 1
    good = ~terms.bad
    assert_allclose(terms.slope[good], flat[good].mean() / (2.0 * flat[good]), rtol=1e-6)


def test_flat_file_that_does_not_exist(tmp_path):
    missing = str(tmp_path / "no_such_flat.fits")
    with pytest.raises(ValueError, match="FLATFILE names the master flat .* no such file"):
        CCDNoiseModel(sky=0).variance_terms(
            image(meta={"GAIN": 2.0, "RDNOISE": 4.0, "FLATFILE": missing}))


def test_explicit_flat_overrides_header_file(tmp_path):
    meta = {"GAIN": 2.0, "RDNOISE": 4.0, "FLATFILE": str(tmp_path / "missing.fits")}
    terms = CCDNoiseModel(flat=1, sky=0).variance_terms(image(meta=meta))
    assert terms.settings["flat"] == "uniform (flat=1)"


def test_flat_is_recovered_only_from_a_ccdproc_flat_correct_log():
    rng = np.random.default_rng(8)
    flat = np.where(np.arange(32) < 16, 0.85, 1.15)[None, :] * np.ones((32, 1))
    flat /= flat.mean()
    raw = flat * rng.uniform(300.0, 400.0, (32, 32))  # electrons, bias-subtracted
    sigma = np.sqrt(25.0 + raw) / flat         # create_deviation, then flat_correct
    meta = {"RDNOISE": 5.0, "flatcor": "ccd=<CCDData>, flat=<CCDData>"}
    data = CCDData(raw / flat, unit="electron", meta=meta, uncertainty=StdDevUncertainty(sigma))
    terms = CCDNoiseModel(sky=0).variance_terms(data)
    assert terms.settings["flat"].startswith("recovered from the ccdproc-propagated")
    assert_allclose(terms.slope, 1 / flat, rtol=1e-6)
    assert terms.settings["uncertainty_constant"][0] == pytest.approx(25.0, rel=1e-6)
    # no log of flat_correct, or no uncertainty: nothing says what the flat was
    for unsaid in (CCDData(data.data, unit="electron", meta={"RDNOISE": 5.0},
                           uncertainty=data.uncertainty),
                   CCDData(data.data, unit="electron", meta=meta)):
        with pytest.raises(ValueError, match="needs the master flat F"):
            CCDNoiseModel(sky=0).variance_terms(unsaid)
    # an explicit flat still wins
    assert CCDNoiseModel(flat=1, sky=0).variance_terms(data).settings["flat"] == \
        "uniform (flat=1)"


def test_flat_recovery_rejects_an_uncertainty_below_the_photon_noise():
    data = CCDData(np.full((16, 16), 400.0), unit="electron",
                   meta={"RDNOISE": 5.0, "flatcor": "ccd=<CCDData>, flat=<CCDData>"},
                   uncertainty=StdDevUncertainty(np.full((16, 16), 5.0)))
    with pytest.raises(ValueError, match="smaller than the photon noise.*pass flat="):
        CCDNoiseModel(sky=0).variance_terms(data)
