"""Tests of ``astro-dia series``."""

import os

import numpy as np
from astropy.nddata import CCDData, StdDevUncertainty

from astro_dia import cli
from astro_dia.simulate import make_variable_series


def write_frames(folder, n=4, seed=7, blank=False):
    _, targets, _ = make_variable_series(n, shape=(140, 140), shift=2.0, density=40,
                                         variable_flux=6000.0, amplitude=3000.0, seed=seed)
    paths = []
    for index, target in enumerate(targets):
        path = os.path.join(folder, f"frame{index}.fits")
        target.write(path)
        paths.append(path)
    if blank:
        noise = np.random.default_rng(1).normal(100.0, 3.0, (140, 140))
        path = os.path.join(folder, "blank.fits")
        CCDData(noise, unit="adu", meta=dict(targets[0].meta),
                uncertainty=StdDevUncertainty(np.full((140, 140), 3.0))).write(path)
        paths.append(path)
    return paths


def test_series_writes_the_outputs_and_names_the_failed_frame(tmp_path, capsys):
    frames = write_frames(tmp_path, blank=True)
    out = tmp_path / "night"
    status = cli.main(["series", *frames, "--out", str(out), "--kernel-size", "7",
                       "--flat", "1", "--no-plots"])
    captured = capsys.readouterr()
    assert status == 1
    assert "5 frames, 4 differenced, 1 failed" in captured.out
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("astro-dia: error: blank:")
    for name in ("reference.fits", "frames.ecsv", "candidates.ecsv", "light_curves.ecsv",
                 "variability.ecsv"):
        assert (out / name).is_file()
    assert not (out / "light_curves.png").exists()


def test_series_refuses_a_bad_worker_count(tmp_path, capsys):
    status = cli.main(["series", "a.fits", "--out", str(tmp_path), "--workers", "0"])
    captured = capsys.readouterr()
    assert status == 2 and "--workers must be at least 1" in captured.err
