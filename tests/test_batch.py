"""Tests of `astro_dia.batch`: many frames, failures per frame, progress, dask."""

import io
import shutil
import sys

import numpy as np
import pytest
from astropy.nddata import CCDData

from astro_dia import DifferenceImager
from astro_dia.batch import FrameOutcome, fit_many, summary_table
from astro_dia.io import read_result
from astro_dia.simulate import make_image_pair

SHAPE = (48, 48)
SCALES = (0.8, 1.0, 1.2)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """A reference and three targets of one field (P = 0.8, 1, 1.2), in memory and on disk."""
    directory = tmp_path_factory.mktemp("frames")
    targets, truths = [], []
    for i, scale in enumerate(SCALES):
        reference, target, truth = make_image_pair(SHAPE, density=100, scale_factor=scale,
                                                   seed=21, noise_seed=100 + i)
        targets.append(target)
        truths.append(truth)
        target.write(directory / f"target_{i}.fits")
    reference.write(directory / "reference.fits")
    paths = [str(directory / f"target_{i}.fits") for i in range(len(SCALES))]
    return dict(reference=reference, targets=targets, truths=truths, paths=paths,
                reference_path=str(directory / "reference.fits"), directory=directory)


@pytest.fixture(scope="module")
def imager():
    return DifferenceImager(kernel_size=7, flat=1, sky=0)


def test_serial_batch_matches_single_fits_and_truth(frames, imager):
    outcomes = fit_many(imager, frames["reference"], frames["targets"], progress=False)
    assert [outcome.name for outcome in outcomes] == ["frame 0", "frame 1", "frame 2"]
    for outcome, target, truth in zip(outcomes, frames["targets"], frames["truths"]):
        assert outcome.ok and outcome.error is None
        single = imager.fit(frames["reference"], target)
        assert outcome.scale_factor == single.scale_factor
        np.testing.assert_array_equal(outcome.result.difference.data, single.difference.data)
        assert abs(outcome.scale_factor - truth.scale_factor) < 4 * outcome.scale_factor_err
        assert abs(outcome.background_offset - truth.background) < \
            4 * outcome.background_offset_err
        assert outcome.unit == "adu" and outcome.converged and outcome.n_iterations > 0


def test_failures_are_recorded_not_fatal(frames, imager, tmp_path):
    corrupt = tmp_path / "corrupt.fits"
    corrupt.write_bytes(b"this is not a FITS file at all" * 100)
    cube = tmp_path / "cube.fits"
    CCDData(np.ones((2, 2, 2)), unit="adu").write(cube)
    targets = [frames["paths"][0], str(tmp_path / "missing.fits"), str(corrupt),
               frames["targets"][1], str(cube)]
    outcomes = fit_many(imager, frames["reference_path"], targets, progress=False)
    assert [outcome.ok for outcome in outcomes] == [True, False, False, True, False]
    assert outcomes[1].error.startswith("OSError: the target file")
    assert "does not exist" in outcomes[1].error
    assert "not a readable FITS file" in outcomes[2].error
    assert outcomes[4].error.startswith("ValueError") and "no 2-D image" in outcomes[4].error
    for failure in (outcomes[1], outcomes[2], outcomes[4]):
        assert failure.result is None and np.isnan(failure.scale_factor)
        assert "\n" not in failure.error
    table = summary_table(outcomes)
    assert list(table["ok"]) == [True, False, False, True, False]
    assert table["error"][1] == outcomes[1].error and table["error"][0] == ""
    assert np.isnan(table["scale_factor"][2])
    assert table["scale_factor"][3] == outcomes[3].scale_factor


def test_output_files_plots_and_overwrite(frames, imager, tmp_path):
    outcomes = fit_many(imager, frames["reference"], frames["paths"][:2], output_dir=tmp_path,
                        plots=True, keep_results=False, progress=False)
    for i, outcome in enumerate(outcomes):
        assert outcome.output == str(tmp_path / f"target_{i}_diff.fits")
        assert outcome.result is None
        saved = read_result(outcome.output)
        assert saved.scale_factor == outcome.scale_factor
        assert (tmp_path / f"target_{i}_diff.png").read_bytes()[:4] == b"\x89PNG"
    again = fit_many(imager, frames["reference"], frames["paths"][:1], output_dir=tmp_path,
                     progress=False)
    assert not again[0].ok and "exists; pass overwrite=True" in again[0].error
    again = fit_many(imager, frames["reference"], frames["paths"][:1], output_dir=tmp_path,
                     overwrite=True, progress=False)
    assert again[0].ok


def test_progress_bar_reports_each_frame(frames, imager):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    fit_many(imager, frames["reference"], frames["targets"][:2], progress=terminal)
    text = terminal.getvalue()
    assert "1 /  2" in text and "2 /  2  (100.00%)" in text


def test_bad_arguments_fail_before_any_fit(frames, imager, tmp_path):
    with pytest.raises(TypeError, match="imager must be a DifferenceImager"):
        fit_many("imager", frames["reference"], frames["targets"])
    with pytest.raises(ValueError, match="no targets"):
        fit_many(imager, frames["reference"], [])
    with pytest.raises(TypeError, match="CCDData or a FITS path, got int at position 1"):
        fit_many(imager, frames["reference"], [frames["targets"][0], 3])
    with pytest.raises(OSError, match="reference file .* does not exist"):
        fit_many(imager, str(tmp_path / "nothing.fits"), frames["targets"])
    with pytest.raises(ValueError, match="every pixel of the reference"):
        fit_many(imager, CCDData(np.full(SHAPE, np.nan), unit="adu"), frames["targets"])
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(frames["paths"][0], other / "target_0.fits")
    with pytest.raises(ValueError, match="would both write"):
        fit_many(imager, frames["reference"], [frames["paths"][0], other / "target_0.fits"],
                 output_dir=tmp_path)
    with pytest.raises(ValueError, match="needs output_dir"):
        fit_many(imager, frames["reference"], frames["targets"], plots=True)
    with pytest.raises(ValueError, match="give output_dir"):
        fit_many(imager, frames["reference_path"], frames["paths"], workers=2)
    with pytest.raises(ValueError, match="as FITS paths"):
        fit_many(imager, frames["reference"], frames["paths"], workers=2, output_dir=tmp_path)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        fit_many(imager, frames["reference_path"], frames["paths"], workers=0,
                 output_dir=tmp_path)


def test_missing_dask_names_the_extra(frames, imager, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(ImportError, match=r'pip install "astro_dia\[dask\]"'):
        fit_many(imager, frames["reference_path"], frames["paths"], workers=2,
                 output_dir=tmp_path)


def test_dask_cluster_gives_the_serial_results(frames, imager, tmp_path):
    pytest.importorskip("dask.distributed")
    targets = frames["paths"] + [str(tmp_path / "missing.fits")]
    serial = fit_many(imager, frames["reference_path"], targets, output_dir=tmp_path / "serial",
                      progress=False)
    parallel = fit_many(imager, frames["reference_path"], targets,
                        output_dir=tmp_path / "dask", workers=2, progress=False,
                        cluster_options=dict(processes=False))
    assert [outcome.name for outcome in parallel] == [outcome.name for outcome in serial]
    assert [outcome.ok for outcome in parallel] == [True, True, True, False]
    assert parallel[3].error == serial[3].error
    for one, other in zip(serial[:3], parallel[:3]):
        assert isinstance(other, FrameOutcome) and other.result is None
        for name in ("scale_factor", "scale_factor_err", "background_offset",
                     "background_offset_err", "n_iterations", "converged"):
            assert getattr(other, name) == getattr(one, name), name
        mine, theirs = read_result(one.output), read_result(other.output)
        np.testing.assert_array_equal(theirs.difference.data, mine.difference.data)
        np.testing.assert_array_equal(theirs.kernel, mine.kernel)
        assert other.output.startswith(str(tmp_path / "dask"))


def test_dask_on_an_existing_client(frames, imager, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        outcomes = fit_many(imager, frames["reference_path"], frames["paths"][:1],
                            output_dir=tmp_path, scheduler=client, progress=False)
        # The client given is left open for its owner.
        assert client.status == "running"
    assert outcomes[0].ok
    assert abs(outcomes[0].scale_factor - SCALES[0]) < 4 * outcomes[0].scale_factor_err
