"""From raw frames through ccdproc to difference images: `subtract_reference` and batches."""

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty

ccdproc = pytest.importorskip("ccdproc")

from astro_dia import DifferenceImager  # noqa: E402
from astro_dia.batch import fit_many, summary_table  # noqa: E402
from astro_dia.ccdproc_step import subtract_reference  # noqa: E402
from astro_dia.exceptions import FitQualityWarning, NoiseModelWarning  # noqa: E402
from astro_dia.simulate import make_image_pair  # noqa: E402

from ..conftest import assert_unchanged, snapshot  # noqa: E402

SHAPE = (64, 64)
GAIN = 2.0            # electron / adu
READ_NOISE = 6.0      # electron
BIAS_LEVEL = 400.0    # adu
REFERENCE_SKY = 100.0  # adu
#: (scale factor P, target sky in adu) of the light frames.
NIGHT = ((0.85, 150.0), (1.0, 250.0), (1.15, 350.0))
BAD_COLUMN = 20


def _noisy(rng, signal_adu):
    """CCD noise in adu for a signal in adu (photon noise in electrons, plus read noise)."""
    sigma = np.sqrt(np.maximum(signal_adu, 0) / GAIN + (READ_NOISE / GAIN) ** 2)
    return signal_adu + rng.standard_normal(signal_adu.shape) * sigma


def _raw(data, imagetyp, name, directory):
    header = fits.Header()
    header["IMAGETYP"] = imagetyp
    header["GAIN"] = (GAIN, "electron/adu")
    header["RDNOISE"] = (READ_NOISE, "electron")
    header["EXPTIME"] = 60.0
    CCDData(data, unit="adu", meta=header).write(directory / name)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Raw bias, flat and light frames of one field in a directory, with the truth."""
    rng = np.random.default_rng(2024)
    raw_dir = tmp_path_factory.mktemp("raw")
    ny, nx = SHAPE
    yy, xx = np.mgrid[:ny, :nx]
    flat = 1 + 0.06 * (xx / nx - 0.5) - 0.04 * (yy / ny - 0.5) + 0.01 * rng.standard_normal(SHAPE)
    flat /= flat.mean()
    bias = BIAS_LEVEL + 3.0 * np.sin(xx / 5.0)
    for i in range(6):
        _raw(bias + rng.standard_normal(SHAPE) * READ_NOISE / GAIN, "BIAS", f"bias_{i}.fits",
             raw_dir)
    for i in range(4):
        _raw(bias + _noisy(rng, 20000.0 * flat), "FLAT", f"flat_{i}.fits", raw_dir)
    truth = []
    reference = None
    for i, (scale, sky) in enumerate(NIGHT):
        ref, _, sim = make_image_pair(SHAPE, psf_sigma=1.3, kernel_sigma=1.0, shift=(0.3, -0.2),
                                      scale_factor=scale, reference_sky=REFERENCE_SKY,
                                      target_sky=sky, density=120, noise=False, seed=11)
        _raw(bias + _noisy(rng, flat * sim.target_noiseless), "LIGHT", f"light_{i}.fits",
             raw_dir)
        truth.append((scale, GAIN * sim.background))  # B0 in electrons
        if reference is None:
            # A deep stacked reference, already calibrated to electrons.
            clean = GAIN * sim.reference_noiseless
            sigma = np.sqrt(0.05 * (clean + READ_NOISE ** 2))
            reference = CCDData(clean + rng.standard_normal(SHAPE) * sigma, unit="electron",
                                uncertainty=StdDevUncertainty(sigma),
                                meta={"RDNOISE": READ_NOISE, "IMAGETYP": "REFERENCE"})
    return dict(raw_dir=raw_dir, reference=reference, truth=truth)


def _calibrate(night, out_dir):
    """Master bias and flat with ccdproc, then ccd_process every light frame into out_dir."""
    raw = ccdproc.ImageFileCollection(night["raw_dir"])
    biases = raw.files_filtered(imagetyp="BIAS", include_path=True)
    master_bias = ccdproc.combine(biases, method="average", unit="adu")
    flats = [ccdproc.subtract_bias(CCDData.read(path, unit="adu"), master_bias)
             for path in raw.files_filtered(imagetyp="FLAT", include_path=True)]
    master_flat = ccdproc.combine(flats, method="average")
    bad_pixels = np.zeros(SHAPE, bool)
    bad_pixels[:, BAD_COLUMN] = True
    for path in raw.files_filtered(imagetyp="LIGHT", include_path=True):
        light = CCDData.read(path, unit="adu")
        calibrated = ccdproc.ccd_process(
            light, master_bias=master_bias, master_flat=master_flat,
            gain=GAIN * u.electron / u.adu, readnoise=READ_NOISE * u.electron, error=True,
            bad_pixel_mask=bad_pixels, gain_corrected=False)
        calibrated.write(out_dir / path.rsplit("/", 1)[-1])
    return master_flat


# ccd_process creates the deviation before subtracting the bias (there is no
# overscan here), so the attached uncertainty is ~3x the true variance and the
# noise model says so; the model's weights are the right ones.
@pytest.mark.filterwarnings("ignore:the target's uncertainty gives a variance")
def test_night_through_ccdproc_and_a_batch(night, tmp_path):
    master_flat = _calibrate(night, tmp_path)
    lights = ccdproc.ImageFileCollection(tmp_path).filter(imagetyp="LIGHT")
    assert len(lights.files) == len(NIGHT)
    imager = DifferenceImager(kernel_size=9, flat=master_flat, sky=0)
    outcomes = fit_many(imager, night["reference"], lights, progress=False)
    table = summary_table(outcomes)
    assert all(table["ok"]), table["error"]
    assert list(table["unit"]) == ["electron"] * len(NIGHT)
    by_name = {outcome.name: outcome for outcome in outcomes}
    for i, (scale, background) in enumerate(night["truth"]):
        outcome = by_name[f"light_{i}.fits"]
        assert outcome.converged
        assert abs(outcome.scale_factor - scale) < 4 * outcome.scale_factor_err + 2e-3
        assert abs(outcome.background_offset - background) < \
            4 * outcome.background_offset_err + 1.0
        difference = outcome.result.difference
        assert difference.unit == u.electron
        # ccd_process's bad-pixel mask travels into the difference image.
        assert difference.mask[:, BAD_COLUMN].all()
        assert not difference.mask[32, BAD_COLUMN + 8]
        # The output keeps the ccdproc log and adds the fit's.
        assert "subbias" in difference.meta and "flatcor" in difference.meta
        assert difference.meta["DIA_P"] == pytest.approx(outcome.scale_factor)
        # The noise model matched: the residuals are unit normal.
        z = outcome.result.normalized_residuals()
        assert 0.9 < np.std(z) < 1.1


def test_subtract_reference_on_ccd_process_output(night, tmp_path):
    _calibrate(night, tmp_path)
    calibrated = CCDData.read(tmp_path / "light_2.fits")
    scale, background = night["truth"][2]
    assert calibrated.unit == u.electron and calibrated.uncertainty is not None
    before, reference_before = snapshot(calibrated), snapshot(night["reference"])
    # The uncertainty ccd_process propagated (error=True) weights the fit.
    # ccd_process made the deviation before subtracting the bias (no oscan=),
    # so it counts the bias level as signal: sigma is too large, and the
    # fit-quality check says so.
    with pytest.warns(FitQualityWarning, match="robust standard deviation of 0.[5-7]"):
        difference = subtract_reference(calibrated, night["reference"], kernel_size=9,
                                        noise_model="uncertainty")
    assert_unchanged(calibrated, before)
    assert_unchanged(night["reference"], reference_before)
    assert isinstance(difference, CCDData) and difference.unit == u.electron
    assert difference.header["HIERARCH SUBTRACT_REFERENCE"] == "subref"
    assert difference.header["SUBREF"] == ("ccd=<CCDData>, reference=<CCDData>, kernel_size=9, "
                                           "noise_model=uncertainty")
    perr = difference.header["DIA_PERR"]
    assert abs(difference.header["DIA_P"] - scale) < 4 * perr + 2e-3
    assert abs(difference.header["DIA_B0"] - background) < 4 * difference.header["DIA_B0ER"] + 1
    assert difference.mask[:, BAD_COLUMN].all()
    # The output can be written and read back, ccdproc's long keywords included.
    difference.write(tmp_path / "difference.fits")
    again = CCDData.read(tmp_path / "difference.fits")
    assert again.header["SUBREF"] == difference.header["SUBREF"]


def test_subtract_reference_logging_options(ccd_pair):
    reference, target, _ = ccd_pair(shape=(48, 48), density=100, seed=6)
    imager = DifferenceImager(kernel_size=7, flat=1, sky=0)
    quiet = subtract_reference(target, reference, kernel_size=7, flat=1, sky=0,
                               add_keyword=False)
    assert "SUBREF" not in quiet.header and "DIA_P" not in quiet.header
    named = subtract_reference(target, reference, imager=imager, add_keyword="DIFFED")
    assert "DIFFED" in named.header and "SUBREF" not in named.header
    assert "DIA_P" in named.header
    custom = subtract_reference(target, reference, imager=imager,
                                add_keyword={"DIAREF": "ref.fits"})
    assert custom.header["DIAREF"] == "ref.fits"
    keyword = subtract_reference(target, reference, imager=imager,
                                 add_keyword=ccdproc.Keyword("DIASTEP", value="done"))
    assert keyword.header["DIASTEP"] == "done"
    logged = subtract_reference(target, reference, imager=imager)
    assert logged.header["SUBREF"] == ("ccd=<CCDData>, reference=<CCDData>, "
                                       "imager=<DifferenceImager>")
    # Same fit whichever way the imager was made.
    np.testing.assert_array_equal(quiet.data, logged.data)


def test_subtract_reference_rejects_bad_arguments(ccd_pair):
    reference, target, _ = ccd_pair(shape=(48, 48))
    imager = DifferenceImager(kernel_size=7, flat=1, sky=0)
    with pytest.raises(TypeError, match="either imager or DifferenceImager settings"):
        subtract_reference(target, reference, imager=imager, kernel_size=7)
    with pytest.raises(TypeError, match="imager must be a DifferenceImager"):
        subtract_reference(target, reference, imager="imager")
    with pytest.raises(TypeError, match="add_keyword must be"):
        subtract_reference(target, reference, imager=imager, add_keyword=3.5)
    with pytest.raises(ValueError, match="kernel_size"):
        subtract_reference(target, reference, kernel_size=4)


# --------------------------------------------------------------------------
# A flat of +-15 %, through ccd_process, differenced with nothing passed by hand

STEP_SHAPE = (96, 96)


@pytest.fixture(scope="module")
def flat_step_frame():
    """A light frame with a +-15 % flat (left half 0.85, right 1.15), calibrated by ccdproc."""
    rng = np.random.default_rng(515)
    ny, nx = STEP_SHAPE
    xx = np.mgrid[:ny, :nx][1]
    flat = np.where(xx < nx // 2, 0.85, 1.15) * (1 + 0.01 * rng.standard_normal(STEP_SHAPE))
    header = {"GAIN": (GAIN, "electron/adu"), "RDNOISE": (READ_NOISE, "electron")}
    biases = [CCDData(BIAS_LEVEL + rng.standard_normal(STEP_SHAPE) * READ_NOISE / GAIN,
                      unit="adu", meta=header) for _ in range(6)]
    master_bias = ccdproc.combine(biases, method="average")
    flats = [ccdproc.subtract_bias(CCDData(BIAS_LEVEL + _noisy(rng, 20000.0 * flat),
                                           unit="adu", meta=header), master_bias)
             for _ in range(4)]
    master_flat = ccdproc.combine(flats, method="average")
    _, _, sim = make_image_pair(STEP_SHAPE, psf_sigma=1.3, kernel_sigma=1.0, shift=(0.3, -0.2),
                                scale_factor=1.1, reference_sky=REFERENCE_SKY, target_sky=350.0,
                                density=120, noise=False, seed=12)
    raw = CCDData(BIAS_LEVEL + _noisy(rng, flat * sim.target_noiseless), unit="adu",
                  meta=header)
    calibrated = ccdproc.ccd_process(
        raw, master_bias=master_bias, master_flat=master_flat,
        gain=GAIN * u.electron / u.adu, readnoise=READ_NOISE * u.electron, error=True,
        gain_corrected=False)
    clean = GAIN * sim.reference_noiseless
    sigma = np.sqrt(0.05 * (clean + READ_NOISE ** 2))
    reference = CCDData(clean + rng.standard_normal(STEP_SHAPE) * sigma, unit="electron",
                        uncertainty=StdDevUncertainty(sigma))
    return calibrated, reference, master_flat


def test_flat_recovered_from_the_ccdproc_uncertainty(flat_step_frame):
    from astropy.stats import mad_std

    calibrated, reference, master_flat = flat_step_frame
    half_width = STEP_SHAPE[1] // 2
    assert "FLATFILE" not in calibrated.meta and "flatcor" in calibrated.meta
    before = snapshot(calibrated)
    # ccd_process created the deviation before subtracting the 400 adu bias,
    # so its uncertainty is too large: the model sets the weights, and says so
    with pytest.warns(NoiseModelWarning, match="counts a bias level not yet subtracted"):
        result = DifferenceImager(kernel_size=9).fit(reference, calibrated)
    assert_unchanged(calibrated, before)
    assert result.noise_settings["flat"].startswith(
        "recovered from the ccdproc-propagated uncertainty")
    assert "not used" in result.noise_settings["weights"]
    # the constant part of ccdproc's variance: rn**2 + gain * bias, in electron**2
    implied = result.noise_settings["uncertainty_constant"][0]
    assert implied == pytest.approx(READ_NOISE ** 2 + GAIN * BIAS_LEVEL, rel=0.05)
    z = result.difference.data / result.difference.uncertainty.array
    for half in (slice(0, half_width), slice(half_width, None)):
        fitted = result.fit_mask[:, half]
        assert abs(mad_std(z[:, half][fitted]) - 1) < 0.07
    assert abs(result.scale_factor - 1.1) < 4 * result.scale_factor_error + 2e-3


def test_recovered_flat_matches_the_master_flat(flat_step_frame):
    from astro_dia.noise import flat_from_uncertainty

    calibrated, _, master_flat = flat_step_frame
    flat, _ = flat_from_uncertainty(calibrated, 1.0)
    truth = master_flat.data / master_flat.data.mean()
    error = np.abs(flat / truth - 1)
    assert np.median(error) < 0.01
    assert np.mean(error < 0.05) > 0.97  # star pixels take their neighbours' response


def test_subtract_reference_on_a_ccdproc_frame_needs_no_flat(flat_step_frame):
    import warnings

    calibrated, reference, _ = flat_step_frame
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoiseModelWarning)
        difference = subtract_reference(calibrated, reference, kernel_size=9)
    assert difference.header["DIA_P"] == pytest.approx(1.1, abs=0.02)
    # without the log of flat_correct nothing says what the flat was: the error stays
    unlogged = calibrated.copy()
    del unlogged.meta["flatcor"], unlogged.meta["flat_correct"]
    with pytest.raises(ValueError, match="needs the master flat F"):
        subtract_reference(unlogged, reference, kernel_size=9)
