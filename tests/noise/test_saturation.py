"""Saturation levels from the header, and the warning for saturated frames without one."""

import os
import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData

from astro_dia import DifferenceImager
from astro_dia.noise._header import SATURATION_KEYWORDS
from astro_dia.noise._saturation import MIN_PLATEAU_PIXELS, find_plateau, storage_maximum
from astro_dia.exceptions import FitQualityWarning, SaturationWarning
from astro_dia.flags import SATURATED
from astro_dia.simulate import inject_point_sources, make_image_pair

from ..conftest import assert_unchanged, snapshot

REAL = os.path.join(os.path.dirname(__file__), os.pardir, "data")
# Bright stars, off pixel centres: three star cores saturate in both images.
BRIGHT_X, BRIGHT_Y = [20.3, 50.6, 74.2], [25.4, 70.1, 40.7]
PSF_SIGMA = 1.5   # make_image_pair's reference PSF; its target's is hypot(1.5, 1.5)


def bright_pair(level=None, *, sky_subtracted=False, dtype=float):
    """A simulated pair with three bright stars, clipped at ``level``, no SATURATE keyword."""
    reference, target, truth = make_image_pair(shape=(96, 96), density=30, seed=7,
                                               sky_subtracted=sky_subtracted)
    reference = inject_point_sources(reference, BRIGHT_X, BRIGHT_Y, 3e6, PSF_SIGMA)
    target = inject_point_sources(target, BRIGHT_X, BRIGHT_Y, 3e6, np.hypot(PSF_SIGMA, 1.5))
    images = []
    for image in (reference, target):
        data = image.data if level is None else np.minimum(image.data, level)
        if np.issubdtype(dtype, np.integer):
            data = np.rint(data).astype(dtype)
        images.append(CCDData(data, unit=image.unit, meta=image.meta.copy(),
                              uncertainty=image.uncertainty))
    assert all("SATURATE" not in image.meta for image in images)
    return images[0], images[1], truth


def fit(reference, target, **kwargs):
    return DifferenceImager(11, flat=1, sky=kwargs.pop("sky", 0), **kwargs).fit(reference,
                                                                               target)


# -- the header keywords --------------------------------------------------------------

@pytest.fixture(scope="module")
def clipped_pair():
    return make_image_pair(shape=(96, 96), density=100, seed=31, saturation=4000.0)


def _with_keywords(image, **cards):
    meta = image.meta.copy()
    del meta["SATURATE"]
    meta.update(cards)
    return CCDData(image.data, unit=image.unit, meta=meta, uncertainty=image.uncertainty)


@pytest.mark.parametrize("keyword", SATURATION_KEYWORDS)
def test_each_saturation_keyword_is_read(clipped_pair, keyword):
    reference, target, _ = clipped_pair
    assert SATURATION_KEYWORDS == ("SATURATE", "SATLEVEL", "SATURATN", "SATURATA", "MAXLIN")
    bare_reference = _with_keywords(reference, **{keyword: 4000.0})
    bare_target = _with_keywords(target, **{keyword: 4000.0})
    before = snapshot(bare_target)
    result = fit(bare_reference, bare_target)
    assert_unchanged(bare_target, before)
    assert result.saturation_levels["target"] == (4000.0, f"header {keyword}")
    assert result.saturation_levels["reference"] == (4000.0, f"header {keyword}")
    saturated = target.data >= 4000.0
    assert saturated.sum() > 5
    assert np.all(result.flags[saturated] & SATURATED)


@pytest.mark.parametrize("first, second", [("SATURATE", "MAXLIN"), ("SATLEVEL", "SATURATN"),
                                           ("SATURATN", "SATURATA"), ("SATURATA", "MAXLIN")])
def test_the_first_keyword_of_the_list_wins(clipped_pair, first, second):
    reference, target, _ = clipped_pair
    cards = {second: 3000.0, first: 4000.0}   # the order of the cards does not matter
    result = fit(_with_keywords(reference, **cards), _with_keywords(target, **cards))
    assert result.saturation_levels["target"] == (4000.0, f"header {first}")


def test_the_argument_overrides_the_header(clipped_pair):
    reference, target, _ = clipped_pair
    result = fit(_with_keywords(reference, MAXLIN=3000.0), _with_keywords(target, MAXLIN=3000.0),
                 saturation=3500.0)
    assert result.saturation_levels["target"] == (3500.0, "argument")


def test_a_keyword_missing_everywhere_is_named(clipped_pair):
    reference, target, _ = clipped_pair
    plain = CCDData(np.minimum(target.data, 3000.0), unit="adu", meta={"GAIN": 1.0,
                                                                       "RDNOISE": 5.0})
    with pytest.warns(SaturationWarning, match="the target looks saturated"):
        result = fit(reference, plain)
    source = result.saturation_levels["target"][1]
    assert result.saturation_levels["target"][0] is None
    for keyword in SATURATION_KEYWORDS:
        assert keyword in source


# -- the warning: saturated frames without a level ------------------------------------

@pytest.mark.parametrize("level", [65535.0, 65300.0])
def test_clipped_bright_stars_warn(level):
    reference, target, _ = bright_pair(level)
    for image in (reference, target):
        assert (image.data >= level).sum() >= 3 * MIN_PLATEAU_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(reference, target)
    messages = sorted(str(w.message) for w in caught if w.category is SaturationWarning)
    assert len(messages) == 2
    # The flat-topped cores the fit cannot match make a tail the guard sees too.
    assert "TAIL" in result.quality["causes"]
    for name, message in zip(("reference", "target"), messages):
        assert message.startswith(f"the {name} looks saturated")
        assert f"saturation={level:g} " in message
        assert "in 3 separate groups" in message
        n_pixels = int(message.split("saturated: ")[1].split()[0])
        image = reference if name == "reference" else target
        assert n_pixels == int((image.data == level).sum())
        assert "SATURATE" in message and "MAXLIN" in message
        assert "largest value" not in message   # float data: no integer ceiling
    # The warning changes nothing: the pixels are not masked.
    assert not (result.flags & SATURATED).any()


def test_the_warned_level_masks_the_stars():
    reference, target, truth = bright_pair(65300.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SaturationWarning)
        with pytest.warns(FitQualityWarning, match="saturated stars without a saturation"):
            blind = fit(reference, target)
    masked = fit(reference, target, saturation=65300.0)   # no warning
    assert np.all(masked.flags[target.data >= 65300.0] & SATURATED)
    # The flat-topped cores pull P away; masked, it is back within its error.
    assert abs(masked.scale_factor - truth.scale_factor) < 3 * masked.scale_factor_error
    assert (abs(blind.scale_factor - truth.scale_factor)
            > 2 * abs(masked.scale_factor - truth.scale_factor))


def test_integer_frames_at_their_ceiling_say_so(tmp_path):
    reference, target, _ = bright_pair(65535.0, dtype=np.uint16)
    for name, image in (("ref", reference), ("tgt", target)):
        image.write(tmp_path / f"{name}.fits")
    # As a real frame comes: 16-bit integers with BZERO = 32768 (no BUNIT).
    reference = CCDData.read(tmp_path / "ref.fits", unit="adu")
    target = CCDData.read(tmp_path / "tgt.fits", unit="adu")
    assert fits.getheader(tmp_path / "tgt.fits")["BZERO"] == 32768
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(reference, target)
    messages = [str(w.message) for w in caught if w.category is SaturationWarning]
    assert len(messages) == 2
    assert all("65535 adu, the largest value its integer" in m for m in messages)
    assert "TAIL" in result.quality["causes"]


@pytest.mark.parametrize("sky_subtracted", [False, True])
def test_unclipped_bright_stars_do_not_warn(sky_subtracted):
    # filterwarnings = error: any warning fails the test
    reference, target, _ = bright_pair(None, sky_subtracted=sky_subtracted)
    assert target.data.max() > 65535 and (target.data == target.data.max()).sum() == 1
    fit(reference, target, sky=None if sky_subtracted else 0)


@pytest.mark.parametrize("saturation", [65300.0, 65300.0 * u.adu])
def test_a_given_level_does_not_warn(saturation):
    reference, target, _ = bright_pair(65300.0)
    result = fit(reference, target, saturation=saturation)
    assert result.saturation_levels["target"] == (65300.0, "argument")


def test_only_the_image_without_a_level_warns():
    reference, target, _ = bright_pair(65300.0)
    target.meta["SATURATE"] = 65300.0
    with pytest.warns(SaturationWarning, match="the reference looks saturated") as caught:
        fit(reference, target)
    assert len(caught) == 1


def test_the_reference_level_is_given_in_the_target_unit():
    reference, target, _ = bright_pair(65300.0)
    in_kadu = CCDData(reference.data / 1000, unit="kadu", meta=reference.meta)
    target.meta["SATURATE"] = 65300.0
    with pytest.warns(SaturationWarning, match=r"saturation=65300 \(in adu"):
        fit(in_kadu, target)


# -- the detector on its own ----------------------------------------------------------

def _frame(seed=1, sky=1000.0, shape=(200, 200)):
    rng = np.random.default_rng(seed)
    return rng.normal(sky, 30.0, shape), np.zeros(shape, bool)


def test_isolated_equal_pixels_are_not_a_plateau():
    data, bad = _frame()
    data[[10, 50, 90, 130, 170, 20, 60], [15, 55, 95, 135, 175, 150, 30]] = 65000.0  # hot pixels
    assert find_plateau(data, bad) is None
    data[100:102, 100:103] = 65000.0   # one flat top of six pixels
    plateau = find_plateau(data, bad)
    assert (plateau.level, plateau.n_pixels, plateau.n_groups) == (65000.0, 6, 1)


def test_few_pixels_make_a_plateau_only_at_the_integer_ceiling():
    data, bad = _frame()
    data[40, 40:42] = 65535.0
    assert find_plateau(data, bad) is None
    plateau = find_plateau(data, bad, ceiling=65535.0)
    assert plateau.at_ceiling and plateau.n_pixels == 2


def test_a_masked_plateau_is_ignored():
    data, bad = _frame()
    data[100:103, 100:103] = 65000.0
    bad[100:103, 100:103] = True
    assert find_plateau(data, bad) is None


def test_a_low_contrast_integer_frame_is_not_saturated():
    # Many pixels share the maximum of a photon-counting frame, but not far above its sky.
    data = np.random.default_rng(2).integers(0, 4, (200, 200)).astype(float)
    bad = np.zeros(data.shape, bool)
    assert (data == data.max()).sum() >= MIN_PLATEAU_PIXELS
    assert find_plateau(data, bad) is None


def test_a_nearly_equal_flat_top_counts():
    data, bad = _frame()
    data[100:103, 100:103] = 65300.0 - np.arange(9).reshape(3, 3) * 0.5   # within 1e-4
    assert find_plateau(data, bad).n_pixels == 9
    data[100:103, 100:103] = 65300.0 - np.arange(9).reshape(3, 3) * 50.0  # a star's peak
    assert find_plateau(data, bad) is None


@pytest.mark.parametrize("dtype, header, expected", [
    (np.uint16, {}, 65535.0),
    (np.int16, {}, 32767.0),
    (np.float64, {"BITPIX": 16, "BZERO": 32768, "BSCALE": 1}, 65535.0),
    (np.float64, {"BITPIX": 16}, 32767.0),
    (np.float32, {"BITPIX": 8}, 255.0),
    (np.float64, {"BITPIX": 32, "BZERO": 2 ** 31}, 2.0 ** 32 - 1),
    (np.float64, {"BITPIX": -32}, None),
    (np.float64, {}, None),
    (np.float64, None, None),
])
def test_storage_maximum(dtype, header, expected):
    assert storage_maximum(np.dtype(dtype), header) == expected


# -- real frames (cutouts in tests/data; see its README) -------------------------

def _read_real(name):
    with warnings.catch_warnings():   # astropy's note that it set MJD-OBS from DATE-OBS
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        from astropy.wcs import FITSFixedWarning
        warnings.simplefilter("ignore", FITSFixedWarning)
        return CCDData.read(os.path.join(REAL, name), unit="adu")


def test_real_pair_saturated_at_65535_warns():
    reference = _read_real("eso085_004_cutout.fits")
    target = _read_real("eso085_005_cutout.fits")
    settings = dict(gain=1 * u.electron / u.adu, read_noise=10 * u.electron, flat=1, sky=0)
    # Both frames are single exposures: the guard predicts the bias that the
    # reference's noise gives P, which is not what is tested here.
    noisy_reference = dict(message="the reference('s noise is predicted| is about as noisy)",
                           category=FitQualityWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blind = DifferenceImager(11, **settings).fit(reference, target)
    saturation = [str(w.message) for w in caught if w.category is SaturationWarning]
    assert all("65535 adu, the largest value" in m for m in saturation)
    assert sorted(m.split()[1] for m in saturation) == ["reference", "target"]
    assert not (blind.flags & SATURATED).any()
    # What the warning asks for: no saturation warning, and the cores are masked.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", **noisy_reference)
        masked = DifferenceImager(11, saturation=65535.0, **settings).fit(reference, target)
    assert np.all(masked.flags[target.data == 65535] & SATURATED)


def test_real_frame_with_a_flat_top_at_65300():
    image = _read_real("kb13475_0001_cutout.fits")
    data = np.asarray(image.data, float)
    plateau = find_plateau(data, np.zeros(data.shape, bool),
                           ceiling=storage_maximum(image.data.dtype, image.meta))
    assert plateau.level == 65300.0 and not plateau.at_ceiling
    assert plateau.n_groups == 3 and plateau.n_pixels == int((data == 65300.0).sum())
    # Below the saturated cores the frame has no plateau.
    assert find_plateau(data, data >= 65300.0) is None


def test_a_result_with_both_levels_writes_without_warnings(tmp_path):
    # The DIA_SATL card's JSON then nearly fills the card: no room for its comment,
    # which astropy would cut with a VerifyWarning (an error in this suite).
    from astro_dia.io import read_result

    reference, target, _ = bright_pair(65300.0)
    result = fit(reference, target, saturation=65300.0)
    result.write(tmp_path / "result.fits")
    again = read_result(tmp_path / "result.fits")
    assert tuple(again.saturation_levels["target"]) == (65300.0, "argument")
    assert tuple(again.saturation_levels["reference"]) == (65300.0, "argument")
