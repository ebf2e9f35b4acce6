"""The fit options of ``astro-dia diff`` and ``subtract`` for real frames, and diff -> detect."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import CCDData
from astropy.table import Table

from astro_dia import cli
from astro_dia.cli._fit_options import make_imager
from astro_dia.exceptions import FitQualityWarning, SaturationWarning
from astro_dia.flags import OUTLIER, SATURATED
from astro_dia.io import read_result
from astro_dia.simulate import inject_point_sources, make_image_pair

from .test_cli import assert_one_line_error, run_main

FIT = ["--kernel-size", "7", "--flat", "1", "--sky", "0"]


def write_pair(directory, reference, target):
    """Write a pair as FITS files; return their paths as strings."""
    paths = [directory / "ref.fits", directory / "tgt.fits"]
    for image, path in zip((reference, target), paths):
        image.write(path)
    return [str(path) for path in paths]


@pytest.fixture(scope="module")
def cosmic_files(tmp_path_factory):
    """A pair whose target has cosmic rays, as FITS files, and where they hit."""
    directory = tmp_path_factory.mktemp("cosmic")
    reference, target, _ = make_image_pair((64, 64), density=60, seed=5)
    data = target.data.copy()
    rng = np.random.default_rng(1)
    hits = (rng.integers(8, 56, 6), rng.integers(8, 56, 6))
    data[hits] += 3000.0
    target = CCDData(data, unit=target.unit, meta=target.meta, uncertainty=target.uncertainty)
    return write_pair(directory, reference, target), hits


@pytest.fixture(scope="module")
def saturated_files(tmp_path_factory):
    """A pair with three bright stars flat-topped at 65300 adu and no SATURATE keyword."""
    directory = tmp_path_factory.mktemp("saturated")
    reference, target, _ = make_image_pair((64, 64), density=30, seed=7)
    x, y = [15.3, 40.6, 48.2], [20.4, 45.1, 18.7]
    reference = inject_point_sources(reference, x, y, 3e6, 1.5)
    target = inject_point_sources(target, x, y, 3e6, np.hypot(1.5, 1.5))
    for image in (reference, target):
        image.data = np.minimum(image.data, 65300.0)
    assert "SATURATE" not in target.meta
    return write_pair(directory, reference, target), target.data >= 65300.0


def test_help_lists_the_real_frame_options(capsys):
    for command in ("diff", "subtract"):
        status, out, _ = run_main(capsys, command, "--help")
        assert status == 0
        for option in ("--clip SIGMA", "--saturation L", "--reference-noise",
                       "--regularization LAMBDA", "--fit-region", "'none'", "SATURATED", "OUTLIER"):
            assert option in out, (command, option)
    status, out, _ = run_main(capsys, "diff", "--help")
    assert "result file" in out and "astro-dia detect" in out


@pytest.mark.parametrize("argv, expected", [
    ([], dict(clip=5.0, saturation=None, reference_noise=False, regularization=0.0,
              fit_region="auto")),
    (["--fit-region", "stars"], dict(fit_region="stars")),
    (["--fit-region", "all"], dict(fit_region="all")),
    (["--clip", "none"], dict(clip=None)),
    (["--clip", "NONE"], dict(clip=None)),
    (["--clip", "3.5"], dict(clip=3.5)),
    (["--saturation", "6.5e4"], dict(saturation=65000.0)),
    (["--reference-noise"], dict(reference_noise=True)),
    (["--regularization", "0.5"], dict(regularization=0.5)),
])
@pytest.mark.parametrize("command", [["diff", "r.fits", "t.fits"],
                                     ["subtract", "r.fits", "t.fits", "--out", "d"]])
def test_options_configure_the_imager(command, argv, expected):
    arguments = cli.build_parser().parse_args(command + argv)
    imager = make_imager(arguments)
    for name, value in expected.items():
        assert getattr(imager, name) == value, name


@pytest.mark.parametrize("argv, fragments", [
    (["--clip", "2"], ["argument --clip", "at least 3", "--clip none"]),
    (["--clip", "nan"], ["argument --clip", "at least 3"]),
    (["--clip", "off"], ["argument --clip", "'none'", "'off'"]),
    (["--saturation", "-1"], ["argument --saturation", "positive", "'-1'"]),
    (["--saturation", "0"], ["argument --saturation", "positive"]),
    (["--saturation", "inf"], ["argument --saturation", "finite"]),
    (["--saturation", "high"], ["argument --saturation", "'high'"]),
    (["--regularization", "-0.1"], ["argument --regularization", "non-negative", "'-0.1'"]),
    (["--regularization", "nan"], ["argument --regularization", "finite"]),
    (["--regularization", "strong"], ["argument --regularization", "'strong'"]),
    (["--reference-noise", "yes"], ["unrecognized arguments: yes"]),
    (["--fit-region", "stamps"], ["argument --fit-region", "invalid choice", "'stamps'"]),
])
@pytest.mark.parametrize("command", ["diff", "subtract"])
def test_bad_values_are_one_line_errors(cosmic_files, tmp_path, capsys, command, argv,
                                        fragments):
    (reference, target), _ = cosmic_files
    out = tmp_path / ("out.fits" if command == "diff" else "out")
    status, stdout, err = run_main(capsys, command, reference, target, "--out", str(out),
                                   *FIT, *argv)
    assert_one_line_error(status, stdout, err, *fragments)
    assert not out.exists()


def test_clip_none_keeps_the_cosmic_rays_in_the_fit(cosmic_files, tmp_path, capsys):
    (reference, target), hits = cosmic_files
    out = tmp_path / "default.fits"
    status, stdout, err = run_main(capsys, "diff", reference, target, "--out", str(out), *FIT)
    assert status == 0, err
    assert "outliers rejected" in stdout and "(--clip 5)" in stdout
    default = read_result(out)
    out = tmp_path / "off.fits"
    # Kept in the fit, the hits spoil it, and the fit-quality check says so.
    with pytest.warns(FitQualityWarning, match="outliers the fit kept"):
        status, stdout, err = run_main(capsys, "diff", reference, target, "--out", str(out),
                                       *FIT, "--clip", "none")
    assert status == 0, err
    assert "off (--clip none)" in stdout
    off = read_result(out)
    assert default.clip == 5.0 and default.n_outliers > 0
    assert np.all(default.flags[hits] & OUTLIER)
    assert off.clip is None and off.n_outliers == 0
    assert not (off.flags & OUTLIER).any()
    assert off.fit_mask[hits].all() and not default.fit_mask[hits].any()
    assert off.difference.header["DIA_CLIP"] == "none"


def test_saturation_masks_and_flags(saturated_files, tmp_path, capsys):
    (reference, target), saturated = saturated_files
    out = tmp_path / "masked.fits"
    with warnings.catch_warnings():
        # a single-epoch reference: the guard predicts its noise's bias of P
        warnings.filterwarnings("ignore", "the reference's noise is predicted",
                                FitQualityWarning)
        status, _, err = run_main(capsys, "diff", reference, target, "--out", str(out), *FIT,
                                  "--saturation", "65300")
    assert status == 0, err
    result = read_result(out)
    assert tuple(result.saturation_levels["target"]) == (65300.0, "argument")
    assert np.all(result.flags[saturated] & SATURATED)
    assert result.difference.header["DIA_TSAT"] == 65300.0
    # Without it: the level is named in a warning, and nothing is flagged.
    out = tmp_path / "blind.fits"
    with warnings.catch_warnings():
        # the flat tops may spoil the fit too: not what is tested here
        warnings.simplefilter("ignore", FitQualityWarning)
        with pytest.warns(SaturationWarning, match="saturation=65300 "):
            status, _, err = run_main(capsys, "diff", reference, target, "--out", str(out),
                                      *FIT)
    assert status == 0, err
    assert not (read_result(out).flags & SATURATED).any()


def test_regularization_and_reference_noise_reach_the_fit(cosmic_files, tmp_path, capsys):
    (reference, target), _ = cosmic_files
    out = tmp_path / "smooth.fits"
    status, _, err = run_main(capsys, "diff", reference, target, "--out", str(out), *FIT,
                              "--regularization", "10", "--reference-noise")
    assert status == 0, err
    header = CCDData.read(out).header
    assert header["DIA_LAMB"] == 10.0 and header["DIA_REFN"] is True
    plain = tmp_path / "plain.fits"
    status, _, err = run_main(capsys, "diff", reference, target, "--out", str(plain), *FIT)
    assert status == 0, err
    header = CCDData.read(plain).header
    assert header["DIA_LAMB"] == 0.0 and header["DIA_REFN"] is False
    # The penalty smooths the kernel: its Laplacian roughness drops.
    rough = [np.abs(np.diff(read_result(path).kernel, 2, axis=1)).sum() for path in (plain, out)]
    assert rough[1] < rough[0]


def test_subtract_passes_the_options_on(cosmic_files, tmp_path, capsys):
    (reference, target), _ = cosmic_files
    out_dir = tmp_path / "night"
    # without rejection the cosmic rays stay in the fit, and the guard says so
    with pytest.warns(FitQualityWarning, match="beyond 5 sigma"):
        status, _, err = run_main(capsys, "subtract", reference, target, "--out", str(out_dir),
                                  *FIT, "--clip", "none", "--regularization", "2",
                                  "--saturation", "60000")
    assert status == 0, err
    result = read_result(out_dir / "tgt_diff.fits")
    assert result.clip is None and result.n_outliers == 0
    assert result.difference.header["DIA_LAMB"] == 2.0
    assert result.saturation_levels["target"][0] == 60000.0


def test_diff_then_detect(tmp_path, capsys):
    """``astro-dia detect`` reads what ``astro-dia diff`` wrote, and finds the new source."""
    reference, target, _ = make_image_pair((96, 96), density=30, seed=4)
    target = inject_point_sources(target, [60.3], [35.6], [6000.0], np.hypot(1.5, 1.5))
    target.meta["MJD-OBS"] = 60001.5
    reference_path, target_path = write_pair(tmp_path, reference, target)
    out = tmp_path / "tgt_diff.fits"
    status, _, err = run_main(capsys, "diff", reference_path, target_path, "--out", str(out),
                              "--kernel-size", "9", "--flat", "1", "--sky", "0")
    assert status == 0, err
    # Still the difference image for CCDData.read ...
    difference = CCDData.read(out)
    assert difference.shape == (96, 96) and difference.unit == u.adu
    assert difference.header["DIA_KSZ"] == 9
    # ... and a result file for detect.
    candidates = tmp_path / "candidates.ecsv"
    status, stdout, err = run_main(capsys, "detect", str(out), "--out", str(candidates),
                                   "--fwhm", "3.53", "--cutouts", str(tmp_path / "stamps"))
    assert status == 0, err
    table = Table.read(candidates)
    assert set(table["file"]) == {"tgt_diff.fits"}
    assert np.allclose(table["time"].mjd, 60001.5)
    best = table[np.argmax(np.abs(table["snr"]))]
    assert np.hypot(best["x"] - 60.3, best["y"] - 35.6) < 1.0 and best["snr"] > 5
    assert (tmp_path / "stamps" / "tgt_diff_cutouts.fits").is_file()
    assert "in 1 files" in stdout
