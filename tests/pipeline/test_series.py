"""Tests of astro_dia.pipeline.process_series: a series of unaligned frames to light curves."""

import os

import numpy as np
import pytest
from astropy.nddata import CCDData
from astropy.table import QTable

from astro_dia import DifferenceImager
from astro_dia.pipeline import process_series
from astro_dia.pipeline._across_epochs import StackedSignificance, group_candidates
from astro_dia.pipeline._light_curves import variability
from astro_dia.simulate import make_variable_series

N_EPOCHS = 7


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Seven frames shifted by up to 3 px, two variable stars (3000 adu semi-amplitude)."""
    reference, targets, truth = make_variable_series(
        N_EPOCHS, shape=(180, 180), n_variables=2, amplitude=3000.0, variable_flux=6000.0,
        shift=3.0, density=40, seed=4)
    before = [target.data.copy() for target in targets]
    out = tmp_path_factory.mktemp("series")
    result = process_series(targets, out, imager=DifferenceImager(kernel_size=9, flat=1),
                            progress=False, plots=True)
    return result, targets, before, truth, out


def test_outputs_are_written_and_inputs_unchanged(series):
    result, targets, before, _, out = series
    for name in ("reference.fits", "frames.ecsv", "candidates.ecsv", "light_curves.ecsv",
                 "variability.ecsv", "light_curves.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert len(os.listdir(os.path.join(out, "differences"))) == N_EPOCHS
    for target, data in zip(targets, before):
        np.testing.assert_array_equal(target.data, data)
    frames = QTable.read(os.path.join(out, "frames.ecsv"))
    assert list(frames["error"]) == [""] * N_EPOCHS
    assert np.all(frames["reg_nstars"] >= 5)
    curves = QTable.read(os.path.join(out, "light_curves.ecsv"))
    for name in ("id", "x", "y", "time", "flux", "flux_err", "flags", "reference_flux",
                 "reference_flux_err"):
        assert name in curves.colnames
    assert len(curves) == N_EPOCHS * len(result.variability)
    np.testing.assert_allclose(np.unique(curves["time"]), np.sort(frames["time"]))


def test_the_variables_are_the_most_variable_and_constant_stars_scatter_as_their_errors(series):
    result, _, _, truth, _ = series
    top = result.variability[:2]
    sources = result.light_curves
    for row in top:
        curve = sources[sources["id"] == row["id"]]
        distance = np.hypot(np.asarray(truth.variables["x"]) - curve["x"][0],
                            np.asarray(truth.variables["y"]) - curve["y"][0])
        # the reference is on the grid of one frame, shifted by at most 3 px per axis
        assert distance.min() < 5.0
        assert row["chi2_dof"] > 50
    stars = result.variability[result.variability["kind"] == "star"][2:]
    assert 0.7 <= np.nanmedian(stars["chi2_dof"]) <= 1.6


def test_the_variables_light_curve_follows_the_truth(series):
    # The differential flux on the reference's scale against the true change: a
    # straight line of slope 1 / P_ref (the reference is matched to one frame's scale)
    # and a correlation near 1.
    result, _, _, truth, _ = series
    curves = result.light_curves
    for k in range(2):
        tx, ty = truth.variables["x"][k], truth.variables["y"][k]
        ids = np.unique(curves["id"])
        xs = np.array([curves["x"][curves["id"] == i][0] for i in ids])
        ys = np.array([curves["y"][curves["id"] == i][0] for i in ids])
        nearest = ids[np.argmin(np.hypot(xs - tx, ys - ty))]
        curve = curves[curves["id"] == nearest]
        change = truth.flux_change[np.asarray(curve["epoch"]), k]
        assert np.corrcoef(np.asarray(curve["flux"], float), change)[0, 1] > 0.98
        slope = np.polyfit(change, np.asarray(curve["flux"], float), 1)[0]
        assert 0.6 < slope < 1.5


def test_a_frame_that_cannot_be_registered_is_recorded_and_the_rest_go_on(tmp_path):
    reference, targets, _ = make_variable_series(4, shape=(150, 150), shift=2.0, density=40,
                                                 seed=5)
    rng = np.random.default_rng(0)
    blank = CCDData(rng.normal(100.0, 3.0, (150, 150)), unit="adu",
                    meta=dict(targets[0].meta))
    result = process_series(targets + [blank], tmp_path, reference=reference,
                            imager=DifferenceImager(kernel_size=7, flat=1), progress=False,
                            plots=False)
    errors = list(result.frames["error"])
    assert errors[:4] == [""] * 4
    assert "RegistrationError" in errors[4]
    assert set(result.light_curves["epoch"]) == {0, 1, 2, 3}


def test_a_fit_that_stopped_at_its_iteration_limit_is_marked_in_the_frames_table(tmp_path):
    # Its ConvergenceWarning is not repeated per frame in a series: the table says it.
    reference, targets, _ = make_variable_series(2, shape=(150, 150), shift=2.0, density=40,
                                                 seed=5)
    result = process_series(targets, tmp_path, reference=reference,
                            imager=DifferenceImager(kernel_size=7, flat=1, max_iter=1),
                            progress=False, plots=False)
    assert all("UNCONVERGED" in quality.split(",") for quality in result.frames["quality"])
    assert list(result.frames["error"]) == ["", ""]


def test_converged_fits_are_not_marked(series):
    result = series[0]
    assert not any("UNCONVERGED" in quality for quality in result.frames["quality"])


def test_frames_without_an_observation_time_are_refused(tmp_path):
    reference, targets, _ = make_variable_series(2, shape=(100, 100), seed=6)
    target = targets[0].copy()
    for key in ("DATE-OBS", "MJD-OBS"):
        target.meta.pop(key, None)
    with pytest.raises(ValueError, match="observation time"):
        process_series([target], tmp_path, reference=reference, progress=False)


def test_group_candidates_joins_epochs_and_samples_the_stack():
    detections = QTable({"x": [10.0, 10.4, 50.0, 10.2], "y": [20.0, 19.8, 50.0, 20.1],
                         "snr": [6.0, 8.0, -5.5, 7.0], "flags": [0, 0, 32, 0],
                         "epoch": [0, 1, 1, 2]})
    stack = StackedSignificance((64, 64))
    for value in (2.0, 4.0):
        image = np.zeros((64, 64))
        image[20, 10] = value
        stack.add(image)
    table = group_candidates(detections, 1.5, stack)
    assert len(table) == 2
    first = table[0]
    assert (first["n_epochs"], first["n_clean"], first["max_snr"]) == (3, 3, 8.0)
    np.testing.assert_allclose(first["stacked_snr"], 6.0 / np.sqrt(2))
    np.testing.assert_allclose(first["chi2"], (4.0 + 16.0) / 2)
    assert table[1]["n_clean"] == 0 and table[1]["flags"] == 32
    assert list(detections["candidate_id"]) == [1, 1, 2, 1]


def test_variability_is_the_chi2_about_the_weighted_mean():
    curves = QTable({"id": [1, 1, 1, 2, 2], "flux": [1.0, 3.0, 2.0, 5.0, 7.0],
                     "flux_err": [1.0, 1.0, 1.0, 1.0, 1.0], "flags": [0, 0, 0, 0, 4]})
    table = variability(curves, [1, 2])
    np.testing.assert_allclose(table["mean_flux"], [2.0, 5.0])
    np.testing.assert_allclose(table["chi2_dof"][0], 2.0 / 2)
    assert table["n_good"][1] == 1 and np.isnan(table["chi2_dof"][1])
    # without the epoch farthest from the mean (1 and 3 are as far: the first goes)
    np.testing.assert_allclose(table["chi2_robust"][0], 0.5)


def test_one_outlier_does_not_make_a_variable():
    flux = np.zeros(20)
    flux[7] = 50.0                       # one cosmic ray: chi^2 large, robust chi^2 ~0
    curves = QTable({"id": np.ones(20, int), "flux": flux, "flux_err": np.ones(20),
                     "flags": np.zeros(20, int)})
    table = variability(curves, [1])
    assert table["chi2_dof"][0] > 100 and table["chi2_robust"][0] < 1e-12


def test_light_curve_sources_skip_single_epoch_candidates_and_mark_saturated_surroundings():
    from astro_dia.pipeline.series import _sources

    stars = QTable({"x": [10.0, 80.0], "y": [10.0, 80.0], "saturated": [False, True]})
    candidates = QTable({"x": [10.5, 40.0, 60.0, 85.0], "y": [10.2, 40.0, 20.0, 80.0],
                         "n_clean": [5, 1, 3, 4]})
    sources, ids, on_star = _sources(stars, candidates, 2.0, 8.0)
    assert list(ids) == [1, 0, 3, 4] and list(on_star) == [True, False, False, False]
    assert list(sources["kind"]) == ["star", "star", "candidate", "candidate"]
    assert list(sources["near_saturated"]) == [False, True, False, True]


def test_a_series_whose_every_fit_fails_says_why(tmp_path):
    # noise_model='ccd' without a flat: every fit fails the same way; the series
    # stops with the first error instead of writing empty light curves.
    reference, targets, _ = make_variable_series(2, shape=(150, 150), density=40, seed=7)
    with pytest.raises(ValueError, match="no frame could be differenced.*flat"):
        process_series(targets, tmp_path, reference=reference,
                       imager=DifferenceImager(kernel_size=7), progress=False, plots=False)
    frames = QTable.read(tmp_path / "frames.ecsv")
    assert all("flat" in error for error in frames["error"])


def test_ensemble_scale_recovers_each_epochs_scale_error_and_corrects_it():
    # 12 constant stars and one variable; at each epoch the fit's P is off by c_e,
    # which puts c_e F of differential flux on every star (F its reference flux).
    from astro_dia.pipeline._light_curves import apply_ensemble_scale, ensemble_scale

    rng = np.random.default_rng(2)
    c = np.array([0.01, -0.008, 0.0, 0.004, -0.012, 0.006])
    reference = rng.uniform(2e4, 2e5, 13)
    change = np.zeros((6, 13))
    change[:, 12] = [0, 500, 1000, 0, -500, 300]          # star 13 varies
    rows = []
    for e in range(6):
        for j in range(13):
            measured = c[e] * (reference[j] + change[e, j]) + change[e, j]
            rows.append((j + 1, e, measured + rng.normal(0, 5), 5.0, 0, reference[j]))
    curves = QTable(rows=rows, names=("id", "epoch", "flux", "flux_err", "flags",
                                      "reference_flux"))
    scale, scale_err = ensemble_scale(curves, np.arange(1, 13), 6)
    # determined up to the median over the epochs, which is set to 0
    np.testing.assert_allclose(scale, c - np.median(c), atol=3e-4)
    assert np.all(scale_err < 3e-4)
    apply_ensemble_scale(curves, c, np.zeros(6))          # with the true c: exact
    variable = curves[curves["id"] == 13]
    np.testing.assert_allclose(variable["flux"], change[:, 12], atol=20)
    constant = curves[curves["id"] == 3]
    assert np.all(np.abs(constant["flux"]) < 20)


def test_ensemble_error_scale_is_the_scatter_of_the_constant_stars_in_sigma():
    from astro_dia.pipeline._light_curves import ensemble_error_scale

    rng = np.random.default_rng(3)
    true_sigma = np.array([1.0, 2.0, 3.0])                # per epoch, the quoted error is 1
    rows = [(j + 1, e, rng.normal(0, true_sigma[e]), 1.0, 0)
            for j in range(400) for e in range(3)]
    curves = QTable(rows=rows, names=("id", "epoch", "flux", "flux_err", "flags"))
    factor = ensemble_error_scale(curves, np.arange(1, 401), 3)
    # the residuals about each star's mean of three epochs are not the epochs' noise
    # alone, but their order and rough size are
    assert factor[0] < factor[1]
    assert factor[1] < factor[2]
    assert factor[0] >= 1.0
    assert factor[0] < 1.6
    assert factor[2] > 2.0
    assert factor[2] < 3.5


def test_line_defects_are_found_and_masked():
    # A band of +1.2 sigma along row 40 and -1.1 sigma along column 70 of a noise
    # difference (120 px: the 8-sigma bar of a median is 0.94 sigma): both found and
    # masked; noise alone leaves nothing.
    from astro_dia.pipeline._line_defects import line_defects, mask_line_defects
    from astro_dia.simulate import make_image_pair

    reference, target, _ = make_image_pair((120, 120), density=20, seed=9)
    result = DifferenceImager(kernel_size=7, flat=1).fit(reference, target)
    assert [len(found) for found in line_defects(result.difference)] == [0, 0]
    sigma = result.difference.uncertainty.array
    result.difference.data[40, :] += 1.2 * sigma[40, :]
    result.difference.data[:, 70] -= 1.1 * sigma[:, 70]
    rows, columns = line_defects(result.difference)
    assert list(rows) == [40] and list(columns) == [70]
    assert [list(found) for found in mask_line_defects(result)] == [[40], [70]]
    assert result.difference.mask[40].all() and result.difference.mask[:, 70].all()
    assert np.all(result.flags[40] & 1)
