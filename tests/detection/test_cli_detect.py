"""Tests of ``astro-dia detect``."""

import numpy as np
import pytest
from astropy.table import Table

from astro_dia.cli import main
from astro_dia.detection import read_cutouts

from .helpers import fitted_pair


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
