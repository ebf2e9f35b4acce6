"""Tests of astro_dia.noise: the per-pixel variance models of eq. 6 and 7."""

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import (CCDData, InverseVariance, NDData, StdDevUncertainty,
                            UnknownUncertainty, VarianceUncertainty)
from numpy.testing import assert_allclose

from astro_dia.exceptions import NoiseModelWarning
from astro_dia.noise import (CCDNoiseModel, EMCCDNoiseModel, NoiseModel, UncertaintyNoiseModel,
                             UniformNoiseModel, VarianceTerms, make_noise_model, refine_sky,
                             uncertainty_variance)

from ..conftest import assert_unchanged, snapshot
from .helpers import SHAPE, image, random_flat, random_model


# --------------------------------------------------------------------------
# VarianceTerms


def test_variance_terms_evaluate_the_affine_form_with_floor():
    terms = VarianceTerms(constant=4.0, slope=0.5, offset=10.0, minimum=6.0)
    model = np.array([-30.0, -10.0, -8.0, 0.0, 100.0])
    # max(4 + 0.5 * max(M + 10, 0), 6)
    expected = np.array([6.0, 6.0, 6.0, 9.0, 59.0])
    assert_allclose(terms.variance(model), expected, rtol=0, atol=1e-12)


def test_variance_terms_cropped_crops_arrays_and_keeps_scalars():
    rng = np.random.default_rng(3)
    constant, slope = rng.uniform(1, 2, SHAPE), rng.uniform(0.1, 1, SHAPE)
    bad = rng.uniform(size=SHAPE) > 0.8
    settings = {"gain": (2.0, "argument")}
    terms = VarianceTerms(constant=constant, slope=slope, offset=7.0, minimum=0.5, bad=bad,
                          estimate_scale=True, settings=settings)
    region = (slice(2, 9), slice(1, 4))
    small = terms.cropped(region)
    assert_allclose(small.constant, constant[region], rtol=0, atol=0)
    assert_allclose(small.slope, slope[region], rtol=0, atol=0)
    np.testing.assert_array_equal(small.bad, bad[region])
    assert small.minimum == 0.5
    assert small.offset == 7.0
    assert small.estimate_scale is True
    assert small.settings == settings and small.settings is not settings
    model = random_model(shape=(7, 3))
    assert_allclose(small.variance(model), terms.variance(np.pad(model, ((2, 3), (1, 6))))[region],
                    rtol=1e-14)


def test_variance_terms_cropped_without_bad_mask():
    small = VarianceTerms(constant=1.0, slope=2.0).cropped((slice(0, 2), slice(0, 2)))
    assert small.bad is None
    assert small.constant == 1.0 and small.slope == 2.0


# --------------------------------------------------------------------------
# CCD model, eq. 6


def test_ccd_variance_follows_eq6_with_header_gain_and_read_noise():
    gain, read_noise_e, sky = 2.5, 12.0, 40.0
    flat = random_flat()
    flat_norm = flat / flat.mean()
    terms = CCDNoiseModel(flat=flat, sky=sky).variance_terms(
        image(meta={"GAIN": gain, "RDNOISE": read_noise_e}))
    model = random_model()
    read_noise_adu = read_noise_e / gain
    expected = (read_noise_adu ** 2 / flat_norm ** 2
                + np.maximum(model + sky, 0) / (gain * flat_norm))
    assert_allclose(terms.variance(model), expected, rtol=1e-12)
    assert terms.offset == sky
    assert terms.settings["gain"] == (gain, "header GAIN")
    assert_allclose(terms.settings["read_noise"][0], read_noise_adu, rtol=1e-14)
    assert terms.settings["sky"] == "argument"


def test_ccd_docstring_numbers():
    terms = CCDNoiseModel(flat=1, sky=0).variance_terms(
        image(meta={"GAIN": 2.0, "RDNOISE": 10.0}))
    # (10 e- / 2 e-/adu)**2 + 100 adu / 2 e-/adu
    assert float(terms.variance(np.array(100.0))) == pytest.approx(75.0, rel=1e-14)


@pytest.mark.parametrize("gain_key", ["GAIN", "EGAIN", "CCDGAIN"])
@pytest.mark.parametrize("noise_key", ["RDNOISE", "READNOIS", "RON", "READNOISE"])
def test_ccd_header_aliases(gain_key, noise_key):
    terms = CCDNoiseModel(flat=1, sky=0).variance_terms(
        image(meta={gain_key: 4.0, noise_key: 8.0}))
    assert terms.settings["gain"] == (4.0, f"header {gain_key}")
    assert terms.settings["read_noise"] == (2.0, f"header {noise_key} (electrons)")
    assert_allclose(terms.variance(np.array([0.0, 400.0])), [4.0, 104.0], rtol=1e-14)


def test_ccd_header_keyword_order_prefers_first_alias():
    meta = {"CCDGAIN": 8.0, "GAIN": 2.0, "READNOISE": 100.0, "RDNOISE": 4.0}
    terms = CCDNoiseModel(flat=1, sky=0).variance_terms(image(meta=meta))
    assert terms.settings["gain"] == (2.0, "header GAIN")
    assert terms.settings["read_noise"][1] == "header RDNOISE (electrons)"


def test_ccd_lower_case_keys_and_value_comment_tuples_in_dict_meta():
    meta = {"gain": (2.0, "e-/adu"), "rdnoise": 6.0, "skylevel": 50.0}
    terms = CCDNoiseModel(flat=1).variance_terms(image(meta=meta))
    assert terms.settings["gain"] == (2.0, "header GAIN")
    assert terms.offset == 50.0
    assert_allclose(terms.variance(np.array(10.0)), 9.0 + 60.0 / 2.0, rtol=1e-14)


def test_ccd_reads_a_fits_header_meta():
    header = fits.Header()
    header["GAIN"] = (2.0, "e-/adu")
    header["RDNOISE"] = (6.0, "e-")
    terms = CCDNoiseModel(flat=1, sky=0).variance_terms(image(meta=header))
    assert_allclose(terms.variance(np.array(10.0)), 9.0 + 5.0, rtol=1e-14)


def test_ccd_explicit_quantities_override_header():
    meta = {"GAIN": 5.0, "RDNOISE": 50.0}
    terms = CCDNoiseModel(gain=2 * u.electron / u.adu, read_noise=3 * u.electron, flat=1,
                          sky=0).variance_terms(image(meta=meta))
    assert terms.settings["gain"] == (2.0, "argument")
    assert terms.settings["read_noise"] == (1.5, "argument")
    assert_allclose(terms.variance(np.array(10.0)), 1.5 ** 2 + 10.0 / 2.0, rtol=1e-14)


def test_ccd_explicit_read_noise_in_adu_is_not_divided_by_gain():
    terms = CCDNoiseModel(gain=2 * u.electron / u.adu, read_noise=3 * u.adu, flat=1,
                          sky=0).variance_terms(image())
    assert_allclose(terms.variance(np.array(10.0)), 9.0 + 5.0, rtol=1e-14)


def test_ccd_bare_numbers_take_the_documented_units():
    terms = CCDNoiseModel(gain=2.0, read_noise=3.0, flat=1, sky=0).variance_terms(image())
    # gain in e-/adu, read noise in electrons
    assert_allclose(terms.variance(np.array(10.0)), 1.5 ** 2 + 5.0, rtol=1e-14)


def test_ccd_convertible_quantity_units_are_converted():
    terms = CCDNoiseModel(gain=2000 * u.electron / (1000 * u.adu), read_noise=3 * u.electron,
                          flat=1, sky=0).variance_terms(image())
    assert terms.settings["gain"][0] == pytest.approx(2.0, rel=1e-14)


@pytest.mark.parametrize("model_class, extra", [(CCDNoiseModel, {"RDNOISE": 10.0}),
                                                (EMCCDNoiseModel, {"EMGAIN": 200.0})])
def test_data_in_electrons_give_the_same_physical_variance(model_class, extra):
    gain, sky_adu = 2.0, 30.0
    meta = {"GAIN": gain, **extra}
    flat = random_flat()
    model_adu = random_model()
    adu = model_class(flat=flat, sky=sky_adu).variance_terms(image("adu", meta=dict(meta)))
    electron = model_class(flat=flat, sky=sky_adu * gain).variance_terms(
        image("electron", meta=dict(meta)))
    assert electron.settings["gain"] == (1.0, "data in electrons")
    # variance scales with the square of the unit conversion
    assert_allclose(electron.variance(gain * model_adu), gain ** 2 * adu.variance(model_adu),
                    rtol=1e-12)


def test_ccd_data_in_electrons_use_read_noise_directly_and_ignore_gain():
    data = image("electron", meta={"GAIN": 7.0, "RDNOISE": 5.0})
    terms = CCDNoiseModel(flat=1, sky=0).variance_terms(data)
    assert_allclose(terms.variance(np.array(100.0)), 25.0 + 100.0, rtol=1e-14)
    explicit = CCDNoiseModel(gain=3.0, read_noise=4 * u.electron, flat=1,
                             sky=0).variance_terms(data)
    assert_allclose(explicit.variance(np.array(100.0)), 16.0 + 100.0, rtol=1e-14)


def test_ccd_data_in_electrons_need_no_gain():
    terms = CCDNoiseModel(flat=1, sky=0).variance_terms(image("electron", meta={"RON": 3.0}))
    assert_allclose(terms.variance(np.array(1.0)), 10.0, rtol=1e-14)


def test_read_noise_in_adu_for_data_in_electrons_is_a_units_error():
    with pytest.raises(u.UnitsError, match="read_noise is in adu but the data are in electrons"):
        CCDNoiseModel(read_noise=3 * u.adu, flat=1, sky=0).variance_terms(image("electron"))


def test_zero_read_noise_floors_at_one_electron():
    terms = CCDNoiseModel(gain=4.0, read_noise=0 * u.electron, flat=1,
                          sky=0).variance_terms(image())
    # one electron is 1/4 adu, Poisson variance 1 e-**2 = 1/16 adu**2
    assert_allclose(terms.variance(np.array([-5.0, 0.0, 0.1, 8.0])),
                    [1 / 16, 1 / 16, 1 / 16, 2.0], rtol=1e-14)


def test_variance_terms_do_not_modify_the_image():
    data = image(meta={"GAIN": 2.0, "RDNOISE": 5.0},
                 data=np.random.default_rng(0).normal(0, 30, (32, 32)),
                 uncertainty=StdDevUncertainty(np.full((32, 32), 3.0)),
                 mask=np.zeros((32, 32), bool))
    before = snapshot(data)
    with pytest.warns(NoiseModelWarning):
        CCDNoiseModel(flat=np.full((32, 32), 2.0)).variance_terms(data)
    UncertaintyNoiseModel().variance_terms(data)
    assert_unchanged(data, before)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refine_sky_recovers_a_known_sky(seed):
    rng = np.random.default_rng(seed)
    shape, a, b, sky = (200, 200), 25.0, 0.8, 1000.0
    model = rng.uniform(0.0, 200.0, shape)
    residual = rng.standard_normal(shape) * np.sqrt(a + b * (model + sky))
    mask = np.ones(shape, bool)
    # an outlier excluded by the mask, and one rejected by the 5-sigma cut
    residual[0, 0] = residual[0, 1] = 1e5
    mask[0, 0] = False
    terms = VarianceTerms(constant=a, slope=b, offset=800.0)
    assert refine_sky(terms, model, residual, mask) == pytest.approx(sky, rel=0.03)
    # iterating from no sky at all converges to the same level
    estimate = 0.0
    for _ in range(6):
        estimate = refine_sky(VarianceTerms(constant=a, slope=b, offset=estimate), model,
                              residual, mask)
    assert estimate == pytest.approx(sky, rel=0.03)


def test_refine_sky_is_never_negative():
    rng = np.random.default_rng(7)
    model = rng.uniform(100.0, 200.0, (50, 50))
    residual = 0.1 * rng.standard_normal((50, 50))
    terms = VarianceTerms(constant=25.0, slope=1.0)
    assert refine_sky(terms, model, residual, np.ones((50, 50), bool)) == 0.0


# --------------------------------------------------------------------------
# EMCCD model, eq. 7


def test_emccd_variance_follows_eq7_with_floor():
    gain, em_gain, excess, sky = 2.0, 300.0, 1.7, 25.0
    flat = random_flat()
    flat_norm = flat / flat.mean()
    terms = EMCCDNoiseModel(gain=gain * u.electron / u.adu, em_gain=em_gain,
                            excess_noise_factor=excess, flat=flat,
                            sky=sky).variance_terms(image())
    total_gain = gain / em_gain  # photo-electrons per adu
    model = random_model(low=0.0, high=5e4)
    expected = excess * (model + sky) / (total_gain * flat_norm)
    one_electron = excess / (total_gain ** 2 * flat_norm)
    above = model + sky >= 1 / total_gain  # at least one photo-electron
    assert_allclose(terms.variance(model)[above], expected[above], rtol=1e-12)
    # floor at one photo-electron where M + S <= 0
    below = np.full(SHAPE, -sky - 10.0)
    assert_allclose(terms.variance(below), one_electron, rtol=1e-12)
    assert_allclose(terms.variance(model), np.maximum(expected, one_electron), rtol=1e-12)
    assert terms.settings["em_gain"] == (em_gain, "argument")


@pytest.mark.parametrize("keyword", ["EMGAIN", "EM_GAIN"])
def test_emccd_em_gain_header_aliases_and_default_excess_factor(keyword):
    terms = EMCCDNoiseModel(flat=1, sky=0).variance_terms(
        image(meta={"GAIN": 4.0, keyword: 100.0}))
    assert terms.settings["em_gain"] == (100.0, f"header {keyword}")
    # E = 2: slope = 2 / (4 / 100)
    assert_allclose(terms.variance(np.array(1000.0)), 50.0 * 1000.0, rtol=1e-14)


def test_emccd_reads_header_read_noise_in_output_electrons():
    # RDNOISE is the output amplifier's, in the electrons of GAIN: (400 / 4)**2 adu**2
    meta = {"GAIN": 4.0, "EMGAIN": 100.0, "RDNOISE": 400.0}
    terms = EMCCDNoiseModel(flat=1, sky=0).variance_terms(image(meta=meta))
    assert_allclose(terms.variance(np.array(1000.0)), 1e4 + 50.0 * 1000.0, rtol=1e-14)
    assert terms.settings["read_noise"] == (100.0, "header RDNOISE (electrons)")
    # an explicit read noise still overrides the header
    explicit = EMCCDNoiseModel(read_noise=40 * u.electron, flat=1, sky=0).variance_terms(
        image(meta=meta))
    assert_allclose(explicit.variance(np.array(1000.0)), 100.0 + 50.0 * 1000.0, rtol=1e-14)


def test_emccd_without_read_noise_keyword_is_eq7():
    terms = EMCCDNoiseModel(flat=1, sky=0).variance_terms(
        image(meta={"GAIN": 4.0, "EMGAIN": 100.0}))
    assert terms.constant == 0.0
    assert "eq. 7 has no read-noise term" in terms.settings["read_noise"][1]


@pytest.mark.parametrize("keyword", ["EMREALGN", "EMCCDGN", "EMCCDGAI", "GAINEM"])
def test_emccd_em_gain_keywords_of_camera_software(keyword):
    header = fits.Header()
    header["GAIN"] = 4.0
    header[keyword] = 100.0
    terms = EMCCDNoiseModel(flat=1, sky=0).variance_terms(image(meta=header))
    assert terms.settings["em_gain"] == (100.0, f"header {keyword}")
    assert_allclose(terms.variance(np.array(1000.0)), 50.0 * 1000.0, rtol=1e-14)


def test_emccd_em_gain_from_a_hierarch_card():
    header = fits.Header()
    header["GAIN"] = 4.0
    header["HIERARCH EMCCDGAIN"] = 100.0
    terms = EMCCDNoiseModel(flat=1, sky=0).variance_terms(image(meta=header))
    assert terms.settings["em_gain"] == (100.0, "header EMCCDGAIN")


def test_emccd_photon_data_are_photo_electrons():
    # photo-electrons: total gain 1, whatever the EM gain; it only converts the read noise
    meta = {"GAIN": 4.0, "EMGAIN": 100.0, "RDNOISE": 50.0}
    terms = EMCCDNoiseModel(flat=1, sky=0).variance_terms(image("photon", meta=meta))
    assert_allclose(terms.variance(np.array(1000.0)), (50.0 / 100.0) ** 2 + 2 * 1000.0,
                    rtol=1e-14)
    assert terms.settings["total_gain"][0] == 1.0
    with pytest.raises(u.UnitsError, match="read_noise is in adu but the data are in photo"):
        EMCCDNoiseModel(read_noise=3 * u.adu, flat=1, sky=0).variance_terms(
            image("photon", meta=meta))
    with pytest.raises(u.UnitsError, match=r"counts \(adu or electron\).*unit is ph"):
        CCDNoiseModel(flat=1, sky=0).variance_terms(image("photon", meta=meta))


@pytest.mark.parametrize("value", [0.5, 0.0, -2.0, np.nan, np.inf])
def test_emccd_excess_noise_factor_validation(value):
    with pytest.raises(ValueError, match="excess_noise_factor must be finite and at least 1"):
        EMCCDNoiseModel(excess_noise_factor=value)


def test_emccd_excess_noise_factor_one_is_allowed():
    assert EMCCDNoiseModel(excess_noise_factor=1).excess_noise_factor == 1.0


@pytest.mark.parametrize("value", [0.0, -5.0, np.nan])
def test_emccd_bad_em_gain(value):
    with pytest.raises(ValueError, match="em_gain must be positive and finite"):
        EMCCDNoiseModel(em_gain=value)
    with pytest.raises(ValueError, match=r"finite.*EMGAIN|EMGAIN.*finite"):
        EMCCDNoiseModel(flat=1, sky=0).variance_terms(
            image(meta={"GAIN": 2.0, "EMGAIN": value}))


def test_emccd_em_gain_that_is_not_a_number():
    with pytest.raises(TypeError, match="em_gain must be a number"):
        EMCCDNoiseModel(em_gain="lots")


# --------------------------------------------------------------------------
# Uniform and uncertainty models


@pytest.mark.parametrize("unit", ["adu", "electron / s", "Jy"])
def test_uniform_model_is_constant_with_scale_estimated(unit):
    terms = UniformNoiseModel().variance_terms(image(unit))
    assert terms.estimate_scale is True
    assert_allclose(terms.variance(random_model()), 1.0, rtol=0)
    assert CCDNoiseModel(gain=2.0, read_noise=1.0, flat=1, sky=0).variance_terms(
        image()).estimate_scale is False


def make_uncertainty(kind, sigma):
    with np.errstate(divide="ignore"):
        if kind == "std":
            return StdDevUncertainty(sigma)
        if kind == "var":
            return VarianceUncertainty(sigma ** 2)
        return InverseVariance(1 / sigma ** 2)


@pytest.mark.parametrize("kind", ["std", "var", "ivar"])
def test_uncertainty_model_classes_give_the_same_variance(kind):
    sigma = np.random.default_rng(0).uniform(1.0, 5.0, SHAPE)
    uncertainty = make_uncertainty(kind, sigma)
    terms = UncertaintyNoiseModel().variance_terms(image("Jy", uncertainty=uncertainty))
    assert_allclose(terms.variance(random_model()), sigma ** 2, rtol=1e-13)
    assert terms.bad is None
    assert terms.estimate_scale is False
    assert terms.settings["uncertainty"][0] == type(uncertainty).__name__


@pytest.mark.parametrize("kind", ["std", "var", "ivar"])
def test_uncertainty_zero_and_nan_are_bad(kind):
    sigma = np.full(SHAPE, 2.0)
    sigma[1, 1], sigma[2, 3] = 0.0, np.nan
    terms = UncertaintyNoiseModel().variance_terms(
        image(uncertainty=make_uncertainty(kind, sigma)))
    expected = np.zeros(SHAPE, bool)
    expected[1, 1] = expected[2, 3] = True
    np.testing.assert_array_equal(terms.bad, expected)
    variance = terms.variance(np.zeros(SHAPE))
    assert np.all(np.isfinite(variance)) and np.all(variance > 0)
    assert_allclose(variance[~expected], 4.0, rtol=1e-14)


def test_negative_standard_deviation_is_bad():
    sigma = np.full(SHAPE, 2.0)
    sigma[4, 4] = -2.0
    terms = UncertaintyNoiseModel().variance_terms(image(uncertainty=StdDevUncertainty(sigma)))
    assert terms.bad is not None and terms.bad[4, 4]


def test_missing_uncertainty():
    with pytest.raises(ValueError, match="the target has no uncertainty"):
        UncertaintyNoiseModel().variance_terms(image())
    with pytest.raises(ValueError, match="the reference has no uncertainty"):
        uncertainty_variance(image(), name="reference")


def test_uncertainty_of_unknown_class():
    data = image(uncertainty=UnknownUncertainty(np.ones(SHAPE)))
    with pytest.raises(TypeError, match="must be a StdDevUncertainty.*UnknownUncertainty"):
        uncertainty_variance(data)


def test_uncertainty_shape_mismatch():
    data = NDData(np.ones(SHAPE), unit="adu", uncertainty=StdDevUncertainty(np.ones((2, 2))))
    with pytest.raises(ValueError, match=r"uncertainty has shape \(2, 2\), its data \(12, 10\)"):
        uncertainty_variance(data)


@pytest.mark.parametrize("uncertainty, expected", [
    (StdDevUncertainty(np.full(SHAPE, 3.0), unit="mJy"), 9e-6),
    (VarianceUncertainty(np.full(SHAPE, 9.0), unit="mJy2"), 9e-6),
    (InverseVariance(np.full(SHAPE, 1 / 9.0), unit="1 / mJy2"), 9e-6),
    (StdDevUncertainty(np.full(SHAPE, 3.0)), 9.0),
])
def test_uncertainty_variance_converts_to_the_data_unit(uncertainty, expected):
    variance = uncertainty_variance(image("Jy", uncertainty=uncertainty))
    assert type(variance) is np.ndarray
    assert_allclose(variance, expected, rtol=1e-12)


@pytest.mark.parametrize("kind", ["std", "var", "ivar"])
def test_uncertainty_variance_without_units(kind):
    sigma = np.random.default_rng(1).uniform(1.0, 5.0, SHAPE)
    sigma[0, 0] = 0.0
    variance = uncertainty_variance(NDData(np.ones(SHAPE),
                                           uncertainty=make_uncertainty(kind, sigma)))
    assert type(variance) is np.ndarray
    assert np.isnan(variance[0, 0])
    assert_allclose(variance.ravel()[1:], (sigma ** 2).ravel()[1:], rtol=1e-13)


def test_uncertainty_variance_returns_a_copy():
    sigma = np.full(SHAPE, 3.0)
    data = image(uncertainty=VarianceUncertainty(sigma))
    variance = uncertainty_variance(data)
    variance[:] = -1
    assert_allclose(data.uncertainty.array, 3.0, rtol=0)


# --------------------------------------------------------------------------
# make_noise_model


@pytest.mark.parametrize("name, cls", [("ccd", CCDNoiseModel), ("emccd", EMCCDNoiseModel),
                                       ("uniform", UniformNoiseModel),
                                       ("uncertainty", UncertaintyNoiseModel),
                                       ("CCD", CCDNoiseModel)])
def test_make_noise_model_names(name, cls):
    model = make_noise_model(name)
    assert type(model) is cls
    assert repr(model) == f"{cls.__name__}()"


def test_make_noise_model_forwards_settings_and_ignores_none():
    model = make_noise_model("emccd", gain=2.0, em_gain=50.0, excess_noise_factor=1.5,
                             flat=1, sky=None, read_noise=None)
    assert model.gain == 2.0 and model.em_gain == 50.0 and model.excess_noise_factor == 1.5
    assert model.sky is None and model.read_noise is None
    assert type(make_noise_model("uniform", gain=None)) is UniformNoiseModel


def test_make_noise_model_passes_instances_through():
    model = CCDNoiseModel(gain=2.0)
    assert make_noise_model(model) is model
    assert make_noise_model(model, gain=None) is model


def test_make_noise_model_instance_with_settings():
    with pytest.raises(ValueError, match=r"detector settings \['gain'\] were given together "
                                         "with a CCDNoiseModel instance"):
        make_noise_model(CCDNoiseModel(), gain=2.0)


@pytest.mark.parametrize("name, setting", [("ccd", "em_gain"), ("uniform", "gain"),
                                           ("uncertainty", "flat"), ("ccd", "bogus")])
def test_make_noise_model_unknown_setting(name, setting):
    with pytest.raises(ValueError, match=f"noise_model='{name}' does not take {setting}"):
        make_noise_model(name, **{setting: 1.0})


@pytest.mark.parametrize("name", ["poisson", "", 3, None])
def test_make_noise_model_unknown_name(name):
    with pytest.raises(ValueError, match="noise_model must be one of"):
        make_noise_model(name)


def test_base_noise_model_is_abstract():
    with pytest.raises(NotImplementedError):
        NoiseModel().variance_terms(image())


def test_base_noise_model_refines_nothing():
    terms = VarianceTerms(constant=4.0, slope=0.5)
    model = NoiseModel()
    assert not model.refines(terms, "start") and not model.refines(terms, "fit")
    region = (slice(None), slice(None))
    assert model.refine(terms, np.zeros(SHAPE), np.zeros(SHAPE), np.ones(SHAPE, bool),
                        region=region, stage="fit") is terms


class _RecordingModel(NoiseModel):
    """A user-defined model: CCD terms, refined at both stages with a sky of its own."""

    name = "recording"

    def __init__(self):
        self.calls = []

    def variance_terms(self, image, *, mask=None):
        return CCDNoiseModel(flat=1, sky=0).variance_terms(image, mask=mask)

    def refines(self, terms, stage):
        return True

    def refine(self, terms, model, residual, mask, *, region, stage):
        from dataclasses import replace

        self.calls.append((stage, model.shape, residual.shape, mask.dtype))
        return replace(terms, offset=3.0) if stage == "fit" else terms


@pytest.mark.parametrize("solver", ["direct", "iterative"])
def test_a_user_defined_noise_model_takes_part_in_the_refinement(ccd_pair, solver):
    from astro_dia import DifferenceImager

    reference, target, _ = ccd_pair(density=60)
    noise_model = _RecordingModel()
    result = DifferenceImager(9, noise_model=noise_model, solver=solver,
                              clip=None).fit(reference, target)
    valid = (64 - 8, 64 - 8)
    assert noise_model.calls == [("start", valid, valid, bool), ("fit", valid, valid, bool)]
    assert result.noise_settings["sky"][0] == 3.0   # the refined terms reach the result


# --------------------------------------------------------------------------
# EMCCD data calibrated to electrons or photo-electrons, end to end


def _emccd_pair_in(unit, *, gain=8.0, em_gain=150.0, seed=21):
    """An EMCCD pair in adu, re-expressed in output electrons or photo-electrons."""
    from astro_dia.simulate import make_image_pair

    reference, target, _ = make_image_pair(shape=(64, 64), density=100, seed=seed,
                                           noise_model="emccd", gain=gain, em_gain=em_gain,
                                           target_sky=300.0)
    factor = {"adu": 1.0, "electron": gain, "photon": gain / em_gain}[unit]

    def convert(ccd, as_unit):
        meta = ccd.meta.copy()
        meta["RDNOISE"] = (40.0, "output amplifier read noise (e-)")
        return CCDData(ccd.data * factor, unit=as_unit, meta=meta,
                       uncertainty=StdDevUncertainty(ccd.uncertainty.array * factor))

    return convert(reference, unit), convert(target, unit), factor


@pytest.mark.parametrize("unit", ["adu", "electron", "photon"])
def test_emccd_fit_is_honest_in_adu_output_electrons_and_photo_electrons(unit):
    from astropy.stats import mad_std

    from astro_dia import DifferenceImager

    reference, target, _ = _emccd_pair_in(unit)
    result = DifferenceImager(9, noise_model="emccd", flat=1, sky=0).fit(reference, target)
    assert abs(mad_std(result.normalized_residuals()) - 1) < 0.07
    assert result.noise_settings["total_gain"][0] == pytest.approx(
        {"adu": 8.0 / 150.0, "electron": 1 / 150.0, "photon": 1.0}[unit])


def test_emccd_photo_electrons_labelled_electron_are_an_error():
    from astro_dia import DifferenceImager

    # photo-electrons, mislabelled: eq. 7 for output electrons would give sigma ~12x too large
    reference, target, _ = _emccd_pair_in("photon")
    target = CCDData(target.data, unit="electron", meta=target.meta)
    reference = CCDData(reference.data, unit="electron", meta=reference.meta)
    with pytest.raises(ValueError, match=r"look like photo-electrons.*unit photon"):
        DifferenceImager(9, noise_model="emccd", flat=1, sky=0).fit(reference, target)
    with pytest.raises(ValueError, match="look like photo-electrons"):
        EMCCDNoiseModel(flat=1).variance_terms(target)
