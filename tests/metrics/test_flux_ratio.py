"""`astro_dia.metrics.flux_ratio`: the photometric scale factor without a kernel fit."""

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import CCDData, StdDevUncertainty
from numpy.testing import assert_allclose

from astro_dia.metrics import FluxRatio, flux_ratio
from astro_dia.simulate import inject_point_sources, make_image_pair

from ..conftest import assert_unchanged, snapshot

#: Simulated pairs with enough bright isolated stars (five or more) for a ratio.
PAIR = dict(shape=(400, 400), density=30, target_sky=100.0)


def simulated(scale_factor=1.1, seed=1, **kwargs):
    return make_image_pair(scale_factor=scale_factor, seed=seed, **{**PAIR, **kwargs})


@pytest.fixture(scope="module")
def pair():
    return simulated()


@pytest.fixture(scope="module")
def measured(pair):
    reference, target, _ = pair
    return flux_ratio(reference, target)


@pytest.mark.parametrize("scale_factor, kernel_sigma, seed", [(1.0, 1.0, 0), (1.1, 1.5, 1),
                                                             (1.1, 2.0, 4)])
def test_recovers_the_scale_factor(scale_factor, kernel_sigma, seed):
    """Seeing 1.3-1.7 times worse in the target: P within 3 sigma, and sigma below 1%."""
    reference, target, truth = simulated(scale_factor, seed, kernel_sigma=kernel_sigma)
    result = flux_ratio(reference, target)
    assert isinstance(result, FluxRatio)
    assert result.n_stars >= 5 and result.ratio_err < 0.01
    assert abs(result.ratio - truth.scale_factor) < 3 * result.ratio_err
    assert result.fwhm[1] > result.fwhm[0]
    assert_allclose(result.fwhm[1] / result.fwhm[0],
                    truth.settings["target_psf_sigma"] / truth.settings["psf_sigma"], rtol=0.05)


def test_errors_are_honest():
    """Six pairs: the errors match the scatter of the ratios about the truth."""
    pulls = []
    for seed in range(6, 12):
        reference, target, truth = simulated(1.0 + 0.1 * (seed % 2), seed)
        result = flux_ratio(reference, target)
        pulls.append((result.ratio - truth.scale_factor) / result.ratio_err)
    pulls = np.array(pulls)
    assert np.all(np.abs(pulls) < 4)
    assert 0.35 < np.sqrt(np.mean(pulls ** 2)) < 2.0


def test_errors_grow_with_the_noise():
    quiet = flux_ratio(*simulated(seed=4)[:2])
    noisy = flux_ratio(*simulated(seed=4, read_noise=20.0)[:2], snr_min=5)
    assert noisy.ratio_err > 1.5 * quiet.ratio_err


def test_table_of_stars(measured):
    stars = measured.stars
    assert stars.colnames == ["x", "y", "flux_ref", "flux_ref_err", "flux_tgt", "flux_tgt_err",
                              "ratio", "ratio_err", "used"]
    assert int(stars["used"].sum()) == measured.n_stars
    assert_allclose(stars["ratio"], stars["flux_tgt"] / stars["flux_ref"])
    assert np.all(stars["flux_ref"] / stars["flux_ref_err"] >= 20)
    assert_allclose(measured.aperture_radius, 3 * max(measured.fwhm))


def stars_near(result, image, level, radius):
    """The measured stars with a pixel at or above ``level`` within ``radius``."""
    y, x = np.indices(image.shape)
    hot = image.data >= level
    near = [bool(hot[np.hypot(x - s["x"], y - s["y"]) <= radius].any()) for s in result.stars]
    return result.stars[np.array(near, bool)]


def test_saturated_stars_are_left_out():
    """SATURATE is read from the header; ignored, a clipped star is measured (ratio off)."""
    level = 2000.0
    reference, target, truth = simulated(seed=1, saturation=level)
    assert (target.data >= level).sum() > 10
    result = flux_ratio(reference, target)
    radius = 4.5 * max(result.fwhm)
    assert len(stars_near(result, target, level, radius)) == 0
    assert abs(result.ratio - truth.scale_factor) < 3 * result.ratio_err
    assert flux_ratio(reference, target, saturation=level * u.adu).ratio == result.ratio
    # (with the FWHM given: measured on clipped stars, it would come out too wide)
    ignored = flux_ratio(reference, target, saturation=1e9, fwhm=result.fwhm)
    clipped = stars_near(ignored, target, level, radius)
    assert len(clipped) > 0
    assert np.all(np.abs(clipped["ratio"] / truth.scale_factor - 1) > 0.1)


def test_crowded_stars_are_left_out(pair, measured):
    """A companion as bright as a used star, 2 FWHM away, removes it from the sample."""
    reference, target, truth = pair
    used = measured.stars[measured.stars["used"]]
    star = used[np.argmax(used["flux_ref"])]
    x, y = float(star["x"]) + 2 * max(measured.fwhm), float(star["y"])
    flux = float(star["flux_ref"])
    crowded_ref = inject_point_sources(reference, x, y, flux, truth.settings["psf_sigma"])
    crowded_tgt = inject_point_sources(target, x, y, truth.scale_factor * flux,
                                       truth.settings["target_psf_sigma"])
    result = flux_ratio(crowded_ref, crowded_tgt, fwhm=measured.fwhm)
    for sx, sy in ((star["x"], star["y"]), (x, y)):
        assert np.hypot(result.stars["x"] - sx, result.stars["y"] - sy).min() > 2
    assert result.n_stars >= measured.n_stars - 2


def test_given_positions_and_fwhm_reproduce_the_measurement(pair, measured):
    reference, target, _ = pair
    positions = np.column_stack([measured.stars["x"], measured.stars["y"]])
    again = flux_ratio(reference, target, positions=positions, fwhm=measured.fwhm)
    assert again.n_stars == measured.n_stars
    assert_allclose(again.ratio, measured.ratio, rtol=1e-12)
    table = flux_ratio(reference, target, positions=measured.stars, fwhm=measured.fwhm)
    assert_allclose(table.ratio, measured.ratio, rtol=1e-12)


def test_reference_in_another_unit(pair, measured):
    """A reference in kiloadu (uncertainty too) is converted; the ratio does not change."""
    reference, target, _ = pair
    scaled = CCDData(reference.data / 1000, unit=u.Unit("1000 adu"),
                     uncertainty=StdDevUncertainty(reference.uncertainty.array / 1000))
    result = flux_ratio(scaled, target, fwhm=measured.fwhm)
    assert_allclose(result.ratio, measured.ratio, rtol=1e-9)
    assert_allclose(result.ratio_err, measured.ratio_err, rtol=1e-9)


def test_arrays_and_quantities(pair, measured):
    reference, target, _ = pair
    fwhm = measured.fwhm
    bare = [CCDData(image.data, unit=image.unit) for image in (reference, target)]
    expected = flux_ratio(*bare, fwhm=fwhm)
    assert flux_ratio(reference.data, target.data, fwhm=fwhm).ratio == expected.ratio
    quantities = [image.data * u.adu for image in (reference, target)]
    assert flux_ratio(*quantities, fwhm=fwhm).ratio == expected.ratio


def test_inputs_are_not_modified(pair):
    reference, target, _ = pair
    before = snapshot(reference), snapshot(target)
    flux_ratio(reference, target)
    assert_unchanged(reference, before[0])
    assert_unchanged(target, before[1])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(aperture_radius=0), ValueError, "aperture_radius must be a positive"),
    (dict(clip="four"), TypeError, "clip must be a number, got 'four'"),
    (dict(annulus_radii=(2.0, 6.0)), ValueError, "aperture_radius < inner < outer"),
    (dict(fwhm=-3.0), ValueError, "fwhm must be a positive"),
    (dict(fwhm=(3.0, 4.0, 5.0)), ValueError, "fwhm must be one number"),
    (dict(min_stars=1), ValueError, "min_stars must be at least 2"),
    (dict(positions=[[1.0, 2.0, 3.0]]), ValueError, "positions must be finite"),
    (dict(saturation=3 * u.electron), u.UnitsError, "saturation is in electron"),
    (dict(min_stars=500), ValueError, "only .* stars were found .*min_stars=500"),
])
def test_bad_settings(pair, measured, kwargs, error, match):
    reference, target, _ = pair
    with pytest.raises(error, match=match):
        flux_ratio(reference, target, **{"fwhm": measured.fwhm, **kwargs})


def test_bad_images(pair):
    reference, target, _ = pair
    with pytest.raises(ValueError, match="same pixel grid"):
        flux_ratio(reference, target[:200, :200])
    with pytest.raises(TypeError, match="must be a CCDData or NDData"):
        flux_ratio("reference.fits", target)
    with pytest.raises(u.UnitsError, match="cannot be converted"):
        flux_ratio(reference, CCDData(target.data, unit="electron"))
