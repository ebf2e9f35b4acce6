"""Tests of ``astro-dia detect``."""

import numpy as np
import pytest
from astropy.table import Table

from astro_dia.cli import main
from astro_dia.detection import decode_detection_flags, read_cutouts

from ..detection.helpers import fitted_pair


@pytest.fixture(scope="module")
def result_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("detect")
    paths = []
    for seed, (x, y) in ((4, (50.0, 60.0)), (5, (100.0, 40.0))):
        result, *_ = fitted_pair(x=[x], y=[y], flux=[4000.0], seed=seed)
        result.difference.meta["MJD-OBS"] = 60000.0 + seed
        path = directory / f"night{seed}_diff.fits"
        result.write(path)
        paths.append(path)
    return directory, paths


def test_detect_writes_one_long_table_and_the_cutouts(result_files, capsys):
    directory, paths = result_files
    out = directory / "candidates.ecsv"
    status = main(["detect", *map(str, paths), "--threshold", "5", "--out", str(out),
                   "--cutouts", str(directory / "stamps"), "--fwhm", "3.53"])
    assert status == 0
    table = Table.read(out)
    assert set(table["file"]) == {p.name for p in paths}
    assert {"time", "x", "y", "snr", "flags"} <= set(table.colnames)
    for path, (x, y) in zip(paths, ((50.0, 60.0), (100.0, 40.0))):
        rows = table[table["file"] == path.name]
        assert np.min(np.hypot(rows["x"] - x, rows["y"] - y)) < 1.5
        stamps = read_cutouts(directory / "stamps" / f"{path.stem}_cutouts.fits")
        assert len(stamps) == len(rows)
    assert "candidates in 2 files" in capsys.readouterr().out


def test_detect_refuses_to_overwrite(result_files, capsys):
    directory, paths = result_files
    out = directory / "exists.ecsv"
    out.write_text("keep")
    assert main(["detect", str(paths[0]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep"


def test_detect_on_a_missing_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "nope.fits"), "--out", str(tmp_path / "c.ecsv")]) == 2
    assert "nope.fits" in capsys.readouterr().err


def test_detect_table_carries_the_sharp_flag_of_cosmic_rays(tmp_path):
    result, _, target, truth = fitted_pair(x=[50.0], y=[60.0], flux=[4000.0], seed=6,
                                           n_cosmic_rays=4)
    path = tmp_path / "cosmic_diff.fits"
    result.write(path)
    out = tmp_path / "candidates.ecsv"
    assert main(["detect", str(path), "--out", str(out), "--fwhm", "3.53"]) == 0
    table = Table.read(out)
    assert {"peak_excess", "peak_excess_snr"} <= set(table.colnames)
    names = [decode_detection_flags(value) for value in table["flags"]]
    source = int(np.argmin(np.hypot(table["x"] - 50.0, table["y"] - 60.0)))
    assert "SHARP" not in names[source]
    hits = np.argwhere(target.data - truth.target_noiseless > 400 * np.sqrt(
        truth.target_variance))
    sharp = [i for i, n in enumerate(names) if "SHARP" in n]
    assert len(sharp) >= 1
    assert len(sharp) <= len(hits)
    for i in sharp:      # each on a cosmic ray
        assert np.min(np.hypot(hits[:, 1] - table["x"][i], hits[:, 0] - table["y"][i])) < 1.5
