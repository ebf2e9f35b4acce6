"""Tests of astro_dia.simulate: synthetic pairs and the noiseless bias tests."""

import inspect

import numpy as np
import pytest
from astropy import units as u
from numpy.testing import assert_allclose
from scipy.signal import convolve2d

from astro_dia.kernels import gaussian_kernel
from astro_dia.noise import CCDNoiseModel, EMCCDNoiseModel
from astro_dia.simulate import draw_s10_parameters, make_image_pair, make_star_field

SHAPE = (48, 48)
KINDS = ["identity", "blur", "shift", "half_shift"]


def interior(kernel):
    half = kernel.shape[0] // 2
    return (slice(half, -half), slice(half, -half))


# --------------------------------------------------------------------------
# make_bias_test


@pytest.mark.parametrize("kind", KINDS)
def test_bias_target_is_the_exact_convolution_plus_background(bias_pair, kind):
    reference, target, truth = bias_pair(kind, shape=SHAPE, kernel_size=9, background=37.0)
    valid = convolve2d(reference.data, truth.kernel, mode="valid") + 37.0
    assert_allclose(target.data[interior(truth.kernel)], valid, rtol=1e-12, atol=1e-12)
    assert truth.scale_factor == pytest.approx(truth.kernel.sum(), rel=1e-15)
    assert type(truth.scale_factor) is float
    assert truth.background == 37.0
    assert truth.kernel.shape == (9, 9)
    assert_allclose(target.data, truth.target_noiseless, rtol=0, atol=0)
    assert_allclose(reference.data, truth.reference_noiseless, rtol=0, atol=0)
    assert truth.settings["kind"] == kind


def test_bias_kernels_are_the_documented_ones(bias_pair):
    _, _, identity = bias_pair("identity", shape=SHAPE, kernel_size=7)
    _, _, blur = bias_pair("blur", shape=SHAPE, kernel_size=7)
    _, _, shift = bias_pair("shift", shape=SHAPE, kernel_size=7)
    _, _, half = bias_pair("half_shift", shape=SHAPE, kernel_size=7)
    expected = np.zeros((7, 7))
    expected[3, 3] = 1.0
    assert_allclose(identity.kernel, expected, rtol=0, atol=0)
    assert_allclose(blur.kernel, gaussian_kernel(7, 1.5), rtol=1e-15)
    expected = np.zeros((7, 7))
    expected[4, 4] = 1.0
    assert_allclose(shift.kernel, expected, rtol=0, atol=0)
    # a half-pixel cubic B-spline shift: symmetric about (3.5, 3.5), unit sum
    assert half.scale_factor == pytest.approx(1.0, rel=1e-12)
    assert_allclose(half.kernel[1:, 1:], half.kernel[1:, 1:][::-1, ::-1], rtol=1e-12, atol=1e-15)
    y = np.arange(7) - 3
    assert (half.kernel.sum(axis=1) * y).sum() == pytest.approx(0.5, abs=1e-12)
    assert (half.kernel.sum(axis=0) * y).sum() == pytest.approx(0.5, abs=1e-12)


def test_bias_shift_moves_the_image_by_one_pixel(bias_pair):
    reference, target, _ = bias_pair("shift", shape=SHAPE, kernel_size=5, background=10.0)
    assert_allclose(target.data[1:, 1:], reference.data[:-1, :-1] + 10.0, rtol=1e-14)


def test_bias_identity_target_is_reference_plus_background(bias_pair):
    reference, target, _ = bias_pair("identity", shape=SHAPE, kernel_size=5, background=-4.0)
    assert_allclose(target.data, reference.data - 4.0, rtol=0, atol=1e-12)


def test_bias_headers_and_uncertainties(bias_pair):
    reference, target, truth = bias_pair("blur", shape=SHAPE, kernel_size=5, gain=2.0,
                                         read_noise=3.0)
    for data in (reference, target):
        assert data.unit == u.adu
        assert data.header["GAIN"] == 2.0
        assert data.header["RDNOISE"] == 6.0  # electrons
        assert_allclose(data.uncertainty.array,
                        np.sqrt(9.0 + np.maximum(data.data, 0) / 2.0), rtol=1e-14)
    assert_allclose(truth.target_variance, target.uncertainty.array ** 2, rtol=1e-14)
    assert reference.header is not target.header


def test_bias_reference_is_a_sky_free_star_field(bias_pair):
    reference, _, truth = bias_pair("identity", shape=SHAPE, kernel_size=5)
    assert reference.data.min() >= 0
    # all of a star's flux lands in the image when it sits in the middle
    assert reference.data.sum() <= truth.stars["flux"].sum() * (1 + 1e-9)
    assert reference.data.max() > 0


def test_bias_bad_kind(bias_pair):
    with pytest.raises(ValueError, match="kind must be 'identity', 'blur', 'shift' or "
                                         "'half_shift', got 'rotate'"):
        bias_pair("rotate", shape=SHAPE, kernel_size=5)


def test_bias_bad_kernel_size(bias_pair):
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        bias_pair("identity", shape=SHAPE, kernel_size=6)


def test_bias_images_do_not_share_memory_with_the_truth(bias_pair):
    reference, target, truth = bias_pair("identity", shape=SHAPE, kernel_size=5)
    assert not np.shares_memory(reference.data, truth.reference_noiseless)
    assert not np.shares_memory(target.data, truth.target_noiseless)


# --------------------------------------------------------------------------
# make_image_pair


def test_pair_headers_describe_the_noise(ccd_pair):
    gain, read_noise, ratio = 2.0, 4.0, 0.25
    reference, target, truth = ccd_pair(shape=SHAPE, gain=gain, read_noise=read_noise,
                                        reference_variance_ratio=ratio)
    assert target.header["GAIN"] == gain
    assert target.header["RDNOISE"] == pytest.approx(read_noise * gain, rel=1e-15)
    assert reference.header["GAIN"] == pytest.approx(gain / ratio, rel=1e-15)
    # the reference read noise in adu is that of the stack: sqrt(ratio) * read_noise
    assert reference.header["RDNOISE"] / reference.header["GAIN"] == pytest.approx(
        np.sqrt(ratio) * read_noise, rel=1e-14)
    assert "SKYLEVEL" not in target.header and "SATURATE" not in target.header
    assert "EMGAIN" not in target.header
    for data in (reference, target):
        assert data.unit == u.adu and data.shape == SHAPE


def test_pair_variances_follow_eq6(ccd_pair):
    gain, read_noise, ratio = 2.0, 4.0, 0.25
    reference, target, truth = ccd_pair(shape=SHAPE, gain=gain, read_noise=read_noise,
                                        reference_variance_ratio=ratio)
    assert_allclose(truth.target_variance,
                    read_noise ** 2 + truth.target_noiseless / gain, rtol=1e-13)
    assert_allclose(truth.reference_variance,
                    ratio * (read_noise ** 2 + truth.reference_noiseless / gain), rtol=1e-13)
    assert_allclose(target.uncertainty.array, np.sqrt(truth.target_variance), rtol=1e-14)
    assert_allclose(reference.uncertainty.array, np.sqrt(truth.reference_variance), rtol=1e-14)


@pytest.mark.parametrize("unit", ["adu"])
def test_pair_headers_resolve_to_the_true_variance(ccd_pair, unit):
    reference, target, truth = ccd_pair(shape=SHAPE, gain=2.0, read_noise=4.0,
                                        reference_variance_ratio=0.25, unit=unit)
    model = CCDNoiseModel(flat=1, sky=0)
    assert_allclose(model.variance_terms(target).variance(truth.target_noiseless),
                    truth.target_variance, rtol=1e-12)
    assert_allclose(model.variance_terms(reference).variance(truth.reference_noiseless),
                    truth.reference_variance, rtol=1e-12)


def test_pair_unit_electron_multiplies_by_the_gain(ccd_pair):
    gain = 2.5
    kwargs = dict(shape=SHAPE, gain=gain, sky_subtracted=True, saturation=2000.0, seed=4)
    ref_adu, tgt_adu, truth_adu = ccd_pair(**kwargs)
    ref_e, tgt_e, truth_e = ccd_pair(unit="electron", **kwargs)
    assert tgt_e.unit == u.electron and ref_e.unit == u.electron
    assert_allclose(tgt_e.data, gain * tgt_adu.data, rtol=1e-14)
    assert_allclose(ref_e.data, gain * ref_adu.data, rtol=1e-14)
    assert_allclose(tgt_e.uncertainty.array, gain * tgt_adu.uncertainty.array, rtol=1e-14)
    assert_allclose(truth_e.target_noiseless, gain * truth_adu.target_noiseless, rtol=1e-14)
    assert_allclose(truth_e.target_variance, gain ** 2 * truth_adu.target_variance, rtol=1e-14)
    assert truth_e.background == pytest.approx(gain * truth_adu.background, rel=1e-14)
    assert tgt_e.header["SKYLEVEL"] == pytest.approx(gain * tgt_adu.header["SKYLEVEL"], rel=1e-15)
    assert tgt_e.header["SATURATE"] == pytest.approx(gain * 2000.0, rel=1e-15)
    assert tgt_e.header["RDNOISE"] == tgt_adu.header["RDNOISE"]


@pytest.mark.parametrize("scale_factor, shift", [(1.0, (0.0, 0.0)), (2.0, (0.3, -0.2))])
def test_noiseless_target_is_the_blurred_scaled_reference(ccd_pair, scale_factor, shift):
    reference, target, truth = ccd_pair(shape=SHAPE, noise=False, scale_factor=scale_factor,
                                        shift=shift, reference_sky=100.0, target_sky=300.0,
                                        psf_sigma=1.5, kernel_sigma=1.5)
    stars = truth.reference_noiseless - 100.0
    peak = (truth.target_noiseless - 300.0).max()
    assert truth.scale_factor == scale_factor
    assert truth.background == pytest.approx(300.0 - scale_factor * 100.0, rel=1e-15)
    # the truth kernel carries P: it sums to the scale factor
    assert truth.kernel.sum() == pytest.approx(scale_factor, rel=1e-13)
    region = interior(truth.kernel)
    predicted = convolve2d(stars, truth.kernel, mode="same") + 300.0
    assert np.abs(predicted - truth.target_noiseless)[region].max() < 0.03 * peak
    # A Gaussian PSF of variance s_R**2 + 1/12 (pixel-integrated) convolved with a kernel of
    # variance s**2 + 1/12 matches the target's s_R**2 + s_K**2 + 1/12 when
    # s**2 = s_K**2 - 1/12: then the relation is exact up to sampling.
    exact = scale_factor * gaussian_kernel(truth.kernel.shape[0], np.sqrt(1.5 ** 2 - 1 / 12),
                                           center=shift)
    predicted = convolve2d(stars, exact, mode="same") + 300.0
    assert np.abs(predicted - truth.target_noiseless)[region].max() < 1e-3 * peak


def test_noise_false_has_no_noise(ccd_pair):
    reference, target, truth = ccd_pair(shape=SHAPE, noise=False)
    assert_allclose(target.data, truth.target_noiseless, rtol=0, atol=0)
    assert_allclose(reference.data, truth.reference_noiseless, rtol=0, atol=0)
    assert target.uncertainty is not None


def test_noise_has_the_stated_variance(ccd_pair):
    reference, target, truth = ccd_pair(shape=(128, 128), seed=11)
    z_target = (target.data - truth.target_noiseless) / np.sqrt(truth.target_variance)
    z_reference = ((reference.data - truth.reference_noiseless)
                   / np.sqrt(truth.reference_variance))
    for z in (z_target, z_reference):
        assert abs(z.mean()) < 4 / 128
        assert z.std() == pytest.approx(1.0, abs=0.03)


def test_seeds_are_reproducible(ccd_pair):
    first = ccd_pair(shape=SHAPE, seed=5)
    again = ccd_pair(shape=SHAPE, seed=5)
    other = ccd_pair(shape=SHAPE, seed=6)
    for a, b in zip(first[:2], again[:2]):
        assert_allclose(a.data, b.data, rtol=0, atol=0)
    assert not np.allclose(first[1].data, other[1].data)
    generator_pair = make_image_pair(shape=SHAPE, seed=np.random.default_rng(5))
    assert_allclose(generator_pair[1].data, first[1].data, rtol=0, atol=0)


def test_sky_subtracted_subtracts_the_sky_and_records_it(ccd_pair):
    kwargs = dict(shape=SHAPE, seed=3, reference_sky=150.0, target_sky=900.0)
    ref, tgt, _ = ccd_pair(**kwargs)
    ref_sub, tgt_sub, _ = ccd_pair(sky_subtracted=True, **kwargs)
    assert_allclose(tgt_sub.data, tgt.data - 900.0, rtol=0, atol=1e-9)
    assert_allclose(ref_sub.data, ref.data - 150.0, rtol=0, atol=1e-9)
    assert tgt_sub.header["SKYLEVEL"] == 900.0
    assert ref_sub.header["SKYLEVEL"] == 150.0
    # the CCD model then takes the sky back from the header
    terms = CCDNoiseModel(flat=1).variance_terms(tgt_sub)
    assert terms.offset == 900.0


def test_record_sky_false_omits_the_keyword(ccd_pair):
    reference, target, _ = ccd_pair(shape=SHAPE, sky_subtracted=True, record_sky=False)
    assert "SKYLEVEL" not in target.header and "SKYLEVEL" not in reference.header


def test_truth_background_of_sky_subtracted_pair(ccd_pair):
    reference, target, truth = ccd_pair(shape=SHAPE, noise=False, sky_subtracted=True,
                                        reference_sky=100.0, target_sky=300.0)
    region = interior(truth.kernel)
    exact = gaussian_kernel(truth.kernel.shape[0], np.sqrt(1.5 ** 2 - 1 / 12))
    predicted = convolve2d(reference.data, exact, mode="same") + truth.background
    peak = target.data.max()
    assert np.abs(predicted - target.data)[region].max() < 1e-3 * peak


def test_bad_columns_are_nan_in_the_target_only(ccd_pair):
    reference, target, truth = ccd_pair(shape=SHAPE, bad_columns=(3, 17))
    assert np.all(np.isnan(target.data[:, [3, 17]]))
    others = np.delete(target.data, [3, 17], axis=1)
    assert np.all(np.isfinite(others))
    assert np.all(np.isfinite(reference.data))
    assert np.all(np.isfinite(truth.target_noiseless))
    assert target.mask is None


def test_saturation_clips_and_is_recorded(ccd_pair):
    level = 170.0
    reference, target, truth = ccd_pair(shape=SHAPE, saturation=level, seed=2, noise=False,
                                        reference_sky=100.0, target_sky=100.0)
    for data, clean in ((reference, truth.reference_noiseless),
                        (target, truth.target_noiseless)):
        assert data.header["SATURATE"] == level
        above = clean > level
        assert above.any() and not above.all()
        assert_allclose(data.data, np.minimum(clean, level), rtol=0, atol=0)
    # the truth is not clipped
    assert truth.reference_noiseless.max() > level and truth.target_noiseless.max() > level
    reference, target, _ = ccd_pair(shape=SHAPE, saturation=level, seed=2)
    assert reference.data.max() <= level and target.data.max() <= level


def test_emccd_pair(ccd_pair):
    gain, em_gain, excess = 4.0, 200.0, 1.8
    reference, target, truth = ccd_pair(shape=SHAPE, noise_model="emccd", gain=gain,
                                        em_gain=em_gain, excess_noise_factor=excess)
    assert target.header["EMGAIN"] == em_gain and reference.header["EMGAIN"] == em_gain
    assert "RDNOISE" not in target.header
    # eq. 7, E * M / (G / EM), plus the read noise (5 adu by default) that eq. 7 neglects
    assert_allclose(truth.target_variance, 25.0 + excess * em_gain / gain * truth.target_noiseless,
                    rtol=1e-13)
    model = EMCCDNoiseModel(excess_noise_factor=excess, read_noise=5.0 * gain * u.electron,
                            flat=1, sky=0)
    assert_allclose(model.variance_terms(target).variance(truth.target_noiseless),
                    truth.target_variance, rtol=1e-12)
    # the reference (a stack, ratio 0.1) has sqrt(0.1) times the read noise
    model = EMCCDNoiseModel(excess_noise_factor=excess, read_noise=np.sqrt(0.1) * 5.0 * u.adu,
                            flat=1, sky=0)
    assert_allclose(model.variance_terms(reference).variance(truth.reference_noiseless),
                    truth.reference_variance, rtol=1e-12)


def test_cosmic_rays_hit_single_pixels_upwards(ccd_pair):
    _, target, truth = ccd_pair(shape=SHAPE, noise=False, n_cosmic_rays=6)
    hit = target.data != truth.target_noiseless
    assert hit.sum() >= 1 and hit.sum() <= 6
    excess = (target.data - truth.target_noiseless)[hit]
    assert np.all(excess >= 500 * np.sqrt(truth.target_variance[hit]) * (1 - 1e-12))


def test_variable_star_adds_its_flux(ccd_pair):
    kwargs = dict(shape=SHAPE, noise=False, scale_factor=1.5, seed=8)
    _, steady, _ = ccd_pair(**kwargs)
    _, varied, truth = ccd_pair(variable_flux=1000.0, **kwargs)
    # the brightest star sits at the image centre, so all its flux is inside
    assert (varied.data - steady.data).sum() == pytest.approx(1.5 * 1000.0, rel=1e-6)


def test_with_uncertainty_false(ccd_pair):
    reference, target, _ = ccd_pair(shape=SHAPE, with_uncertainty=False)
    assert reference.uncertainty is None and target.uncertainty is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(unit="Jy"), "unit must be 'adu' or 'electron', got Jy"),
    (dict(noise_model="poisson"), "noise_model must be 'ccd' or 'emccd', got 'poisson'"),
])
def test_pair_bad_options(ccd_pair, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ccd_pair(shape=SHAPE, **kwargs)


# --------------------------------------------------------------------------
# make_star_field and draw_s10_parameters


def test_star_field():
    stars = make_star_field((100, 60), density=50.0, seed=0)
    assert len(stars) == 30
    assert np.all((stars["x"] >= -0.5) & (stars["x"] <= 59.5))
    assert np.all((stars["y"] >= -0.5) & (stars["y"] <= 99.5))
    # F**(-3/2) in [1e-9, 10**-4.5]  <=>  F in [10**3, 10**6]
    assert np.all((stars["flux"] >= 1e3) & (stars["flux"] <= 1e6))
    brightest = np.argmax(stars["flux"])
    assert (stars["x"][brightest], stars["y"][brightest]) == (29.5, 49.5)
    assert len(make_star_field((10, 10), density=1.0, seed=0)) == 1


def test_draw_s10_parameters_ranges():
    rng = np.random.default_rng(0)
    draws = [draw_s10_parameters(rng) for _ in range(300)]
    accepted = set(inspect.signature(make_image_pair).parameters)
    for settings in draws:
        assert set(settings) <= accepted
        assert 0.5 <= settings["psf_sigma"] <= 2.5
        assert 0.5 <= settings["kernel_sigma"] <= 2.5
        assert settings["density"] >= 1.0 and settings["density"] <= 1000.0
        assert 10.0 <= settings["reference_sky"] <= 1000.0
        assert 10.0 <= settings["target_sky"] <= 1000.0
        assert len(settings["shift"]) == 2
        assert all(-0.5 <= s <= 0.5 for s in settings["shift"])
        assert settings["gain"] == 1.0 and settings["read_noise"] == 5.0
        assert settings["reference_variance_ratio"] == 0.1
    # the ranges are actually explored (log-uniform density spans decades)
    densities = np.log10([d["density"] for d in draws])
    assert densities.min() < 0.2 and densities.max() > 2.8
    assert draws[0] != draws[1]
    reference, target, truth = make_image_pair(shape=(32, 32), seed=1, **draws[0])
    assert truth.settings["psf_sigma"] == draws[0]["psf_sigma"]
