"""Tests of astro_dia.noise._detector: units, gain, read noise, EM gain and sky of an image."""

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import CCDData, StdDevUncertainty, UnknownUncertainty
from numpy.testing import assert_allclose

from astro_dia.exceptions import NoiseModelWarning
from astro_dia.noise import CCDNoiseModel, EMCCDNoiseModel

from .helpers import SHAPE, image


def test_missing_gain_lists_every_keyword():
    with pytest.raises(ValueError, match="needs the detector gain") as info:
        CCDNoiseModel(flat=1, sky=0).variance_terms(image(meta={"RDNOISE": 5.0}))
    for keyword in ("GAIN", "EGAIN", "CCDGAIN"):
        assert keyword in str(info.value)


def test_missing_read_noise_lists_every_keyword():
    with pytest.raises(ValueError, match="needs the read noise") as info:
        CCDNoiseModel(flat=1, sky=0).variance_terms(image(meta={"GAIN": 2.0}))
    for keyword in ("RDNOISE", "READNOIS", "RON", "READNOISE"):
        assert keyword in str(info.value)


def test_missing_em_gain_lists_every_keyword():
    with pytest.raises(ValueError, match="needs the EM gain") as info:
        EMCCDNoiseModel(flat=1, sky=0).variance_terms(image(meta={"GAIN": 2.0}))
    assert "EMGAIN" in str(info.value) and "EM_GAIN" in str(info.value)


@pytest.mark.parametrize("gain", [0.0, -1.0, np.nan, np.inf, 0 * u.electron / u.adu,
                                  -2 * u.electron / u.adu, np.inf * u.electron / u.adu])
@pytest.mark.parametrize("model_class", [CCDNoiseModel, EMCCDNoiseModel])
def test_explicit_bad_gain_fails_at_construction(model_class, gain):
    with pytest.raises(ValueError, match="gain must be positive and finite"):
        model_class(gain=gain)


@pytest.mark.parametrize("value", [0.0, -1.5, np.nan, np.inf])
def test_header_bad_gain(value):
    with pytest.raises(ValueError, match=r"finite.*EGAIN|EGAIN.*finite"):
        CCDNoiseModel(flat=1, sky=0).variance_terms(
            image(meta={"EGAIN": value, "RDNOISE": 5.0}))


def test_header_gain_that_is_not_a_number():
    with pytest.raises(ValueError, match="header keyword GAIN should give the gain"):
        CCDNoiseModel(flat=1, sky=0).variance_terms(image(meta={"GAIN": "high", "RDNOISE": 5.0}))


def test_gain_in_wrong_unit():
    with pytest.raises(u.UnitsError, match="gain must be in units convertible to electron / adu"):
        CCDNoiseModel(gain=2 * u.adu / u.electron)


@pytest.mark.parametrize("value", [-1.0, np.nan])
def test_header_bad_read_noise(value):
    with pytest.raises(ValueError, match=r"read noise must be non-negative and finite|RON "
                                         r"should give the read noise .* as a finite"):
        CCDNoiseModel(flat=1, sky=0).variance_terms(image(meta={"GAIN": 2.0, "RON": value}))


def test_explicit_negative_read_noise():
    with pytest.raises(ValueError, match="read_noise must be non-negative and finite"):
        CCDNoiseModel(read_noise=-3 * u.electron, flat=1, sky=0).variance_terms(
            image(meta={"GAIN": 2.0}))


@pytest.mark.parametrize("unit", ["electron / s", "adu / s", "Jy"])
@pytest.mark.parametrize("model_class", [CCDNoiseModel, EMCCDNoiseModel])
def test_rate_units_are_a_units_error_naming_the_unit(model_class, unit):
    meta = {"GAIN": 2.0, "RDNOISE": 5.0, "EMGAIN": 100.0}
    with pytest.raises(u.UnitsError, match="needs data in counts") as info:
        model_class(flat=1, sky=0).variance_terms(image(unit, meta=meta))
    assert str(u.Unit(unit)) in str(info.value)


# --------------------------------------------------------------------------
# The subtracted sky


@pytest.mark.parametrize("keyword", ["SKYLEVEL", "SKY", "SKYSUB"])
def test_sky_header_aliases(keyword):
    terms = CCDNoiseModel(flat=1).variance_terms(
        image(meta={"GAIN": 2.0, "RDNOISE": 4.0, keyword: 250.0}))
    assert terms.offset == 250.0
    assert terms.settings["sky"] == f"header {keyword}"
    assert_allclose(terms.variance(np.array(-50.0)), 4.0 + 200.0 / 2.0, rtol=1e-14)


def test_sky_keyword_order():
    meta = {"GAIN": 2.0, "RDNOISE": 4.0, "SKYSUB": 9.0, "SKY": 50.0, "SKYLEVEL": 20.0}
    assert CCDNoiseModel(flat=1).variance_terms(image(meta=meta)).offset == 20.0


def test_explicit_sky_overrides_header_and_accepts_quantity():
    meta = {"GAIN": 2.0, "RDNOISE": 4.0, "SKYLEVEL": 20.0}
    terms = CCDNoiseModel(flat=1, sky=35 * u.adu).variance_terms(image(meta=meta))
    assert terms.offset == 35.0 and terms.settings["sky"] == "argument"


def test_explicit_sky_in_wrong_unit_or_not_finite():
    meta = {"GAIN": 2.0, "RDNOISE": 4.0}
    with pytest.raises(u.UnitsError, match="sky must be in units convertible to adu"):
        CCDNoiseModel(flat=1, sky=3 * u.electron).variance_terms(image(meta=meta))
    with pytest.raises(ValueError, match="sky must be finite"):
        CCDNoiseModel(flat=1, sky=np.nan).variance_terms(image(meta=meta))


def test_header_sky_that_is_not_finite_is_rejected():
    meta = {"GAIN": 2.0, "RDNOISE": 4.0, "SKYLEVEL": np.nan}
    with pytest.raises(ValueError, match="sky"):
        CCDNoiseModel(flat=1).variance_terms(image(meta=meta))


def sky_subtracted_image(sky, *, gain=1.0, read_noise_e=5.0, shape=(64, 64), seed=0, **meta):
    """Pure sky, subtracted: zero-mean noise with the variance of the sky level."""
    rng = np.random.default_rng(seed)
    sigma = np.sqrt((read_noise_e / gain) ** 2 + sky / gain)
    data = rng.normal(0.0, sigma, shape)
    return image(meta={"GAIN": gain, "RDNOISE": read_noise_e, **meta}, data=data)


def test_boolean_skysub_is_ignored_not_read_as_one():
    # un-subtracted data: the flag alone must not become a 1 adu sky
    data = image(meta={"GAIN": 1.0, "RDNOISE": 5.0, "SKYSUB": True},
                 data=np.random.default_rng(2).normal(500.0, np.sqrt(525.0), (64, 64)))
    terms = CCDNoiseModel(flat=1).variance_terms(data)
    assert terms.offset == 0.0
    assert terms.settings["sky"] == "none"
    # sky-subtracted data with only the flag: the level is estimated instead
    data = sky_subtracted_image(1000.0, SKYSUB=True)
    with pytest.warns(NoiseModelWarning, match="sky-subtracted"):
        terms = CCDNoiseModel(flat=1).variance_terms(data)
    assert terms.offset == pytest.approx(1000.0, rel=0.15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sky_subtracted_image_without_keyword_warns_and_estimates_the_sky(seed):
    data = sky_subtracted_image(1000.0, gain=2.0, seed=seed)
    with pytest.warns(NoiseModelWarning, match="image looks sky-subtracted"):
        terms = CCDNoiseModel(flat=1).variance_terms(data)
    assert terms.offset > 0
    assert terms.offset == pytest.approx(1000.0, rel=0.15)
    assert terms.settings["sky"] == "estimated from the data"


def test_emccd_sky_subtracted_image_warns_too():
    gain, em_gain = 10.0, 50.0
    rng = np.random.default_rng(5)
    # eq. 7 variance of a 400 adu sky: 2 * 400 / (gain / em_gain)
    data = rng.normal(0.0, np.sqrt(2 * 400.0 * em_gain / gain), (64, 64))
    with pytest.warns(NoiseModelWarning, match="sky-subtracted"):
        terms = EMCCDNoiseModel(flat=1).variance_terms(
            image(meta={"GAIN": gain, "EMGAIN": em_gain}, data=data))
    assert terms.offset == pytest.approx(400.0, rel=0.15)


def test_unsubtracted_image_gives_no_warning_and_zero_offset():
    rng = np.random.default_rng(4)
    data = image(meta={"GAIN": 2.0, "RDNOISE": 10.0},
                 data=rng.normal(800.0, np.sqrt(25.0 + 400.0), (64, 64)))
    terms = CCDNoiseModel(flat=1).variance_terms(data)  # filterwarnings=error
    assert terms.offset == 0.0
    assert terms.settings["sky"] == "none"


@pytest.mark.parametrize("seed", [0, 1])
def test_crowded_unsubtracted_field_is_not_taken_for_sky_subtracted(seed):
    from astropy.stats import mad_std

    from astro_dia import DifferenceImager
    from astro_dia.simulate import make_image_pair

    # faint unresolved stars inflate the sky pixels' scatter far above the
    # model's prediction, but a 350 adu sky is not near zero: not subtracted
    reference, target, _ = make_image_pair(shape=(64, 64), density=1000, target_sky=350.0,
                                           kernel_sigma=1.0, seed=seed)
    terms = CCDNoiseModel(flat=1).variance_terms(target)  # filterwarnings=error: no warning
    assert terms.offset == 0.0
    assert terms.settings["sky"] == "none (the sky level is well above zero)"
    result = DifferenceImager(kernel_size=9, flat=1).fit(reference, target)
    assert result.difference.header["DIA_SKY"] == 0.0
    assert abs(mad_std(result.normalized_residuals()) - 1) < 0.05


def test_crowded_sky_subtracted_field_is_still_detected():
    from astro_dia.simulate import make_image_pair

    _, target, _ = make_image_pair(shape=(64, 64), density=300, target_sky=350.0, seed=3,
                                   sky_subtracted=True, record_sky=False)
    with pytest.warns(NoiseModelWarning, match="image looks sky-subtracted"):
        terms = CCDNoiseModel(flat=1).variance_terms(target)
    assert terms.offset > 100


def test_sky_estimate_needs_enough_unmasked_pixels():
    data = sky_subtracted_image(1000.0)
    mask = np.ones(data.shape, bool)
    mask[:5, :5] = False
    terms = CCDNoiseModel(flat=1).variance_terms(data, mask=mask)
    assert terms.offset == 0.0
    assert "too few pixels" in terms.settings["sky"]


def test_sky_zero_states_not_subtracted():
    data = sky_subtracted_image(1000.0)
    terms = CCDNoiseModel(flat=1, sky=0).variance_terms(data)
    assert terms.offset == 0.0


# --------------------------------------------------------------------------
# The target's own uncertainty next to a photon-noise model


def _with_uncertainty(ccd, factor):
    return CCDData(ccd.data, unit=ccd.unit, meta=ccd.meta,
                   uncertainty=StdDevUncertainty(ccd.uncertainty.array * factor))


def test_consistent_uncertainty_is_recorded_without_warning():
    from astro_dia.simulate import make_image_pair

    _, target, _ = make_image_pair(shape=(64, 64), density=50, seed=4)
    terms = CCDNoiseModel(flat=1, sky=0).variance_terms(target)
    assert "not used" in terms.settings["weights"]
    assert terms.settings["uncertainty_ratio"][0] == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_disagreeing_uncertainty_warns(factor):
    from astro_dia.simulate import make_image_pair

    _, target, _ = make_image_pair(shape=(64, 64), density=50, seed=4)
    with pytest.warns(NoiseModelWarning, match="the target's uncertainty gives a variance"):
        terms = CCDNoiseModel(flat=1, sky=0).variance_terms(_with_uncertainty(target, factor))
    assert terms.settings["uncertainty_ratio"][0] == pytest.approx(factor ** 2, rel=0.1)


def test_uncertainty_of_unknown_class_is_not_compared():
    data = image(meta={"GAIN": 2.0, "RDNOISE": 5.0},
                 uncertainty=UnknownUncertainty(np.ones(SHAPE)))
    terms = CCDNoiseModel(flat=1, sky=0).variance_terms(data)
    assert "uncertainty_ratio" not in terms.settings
