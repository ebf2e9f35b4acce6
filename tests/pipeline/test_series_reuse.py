"""
Work a series does once, not per frame: the reference's stars, each epoch's significance.

The series must find the reference's stars once for the registration of
all its frames (and register each frame as `register` does alone), and
compute each epoch's significance image once for both the stack and the
candidate search.
"""

import numpy as np
import pytest
from astropy.table import QTable

from astro_dia import DifferenceImager
from astro_dia.detection import candidates as candidates_module
from astro_dia.pipeline import _epochs, process_series
from astro_dia.pipeline import series as series_module
from astro_dia.registration import _register, register
from astro_dia.simulate import make_variable_series

N_EPOCHS = 4


@pytest.fixture(scope="module")
def frames():
    reference, targets, _ = make_variable_series(
        N_EPOCHS, shape=(160, 160), n_variables=1, amplitude=3000.0, variable_flux=6000.0,
        shift=3.0, density=40, seed=8)
    return reference, targets


def test_reference_stars_found_once_and_transforms_unchanged(frames, tmp_path, monkeypatch):
    reference, targets = frames
    made, searched = [], []
    original_class, original_stars = _epochs.ReferenceStars, _register._stars

    def counting_class(*args, **kwargs):
        made.append(1)
        return original_class(*args, **kwargs)

    def counting_stars(frame, *args):
        searched.append(frame.name)
        return original_stars(frame, *args)

    monkeypatch.setattr(_epochs, "ReferenceStars", counting_class)
    monkeypatch.setattr(_register, "_stars", counting_stars)
    epochs = _epochs.read_frames(targets)
    table, stars = _epochs.register_frames(epochs, reference, tmp_path, progress=False)
    assert len(made) == 1
    assert stars.fwhm > 0
    assert searched == ["image"] * N_EPOCHS          # never the reference again
    monkeypatch.undo()
    for row, target in zip(table, targets):
        alone = register(target, reference, resample=False)
        assert row["shift_x"] == alone.header["REGA13"]
        assert row["shift_y"] == alone.header["REGA23"]
        assert row["reg_nstars"] == alone.header["REGNSTAR"]


def test_significance_computed_once_per_epoch(frames, tmp_path, monkeypatch):
    reference, targets = frames
    calls = []
    original = series_module.compute_significance

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(series_module, "compute_significance", counting)
    monkeypatch.setattr(candidates_module, "compute_significance", counting)
    result = process_series(targets, tmp_path, reference=reference,
                            imager=DifferenceImager(kernel_size=9, flat=1), progress=False,
                            plots=False)
    assert len(calls) == N_EPOCHS
    assert len(result.light_curves) == N_EPOCHS * len(result.variability)
    frames_table = QTable.read(tmp_path / "frames.ecsv")
    assert np.all(frames_table["error"] == "")


def test_reference_fwhm_is_the_registrations(frames, tmp_path, monkeypatch):
    # A reference without REFFWHM: its FWHM is the one the registration measured,
    # the same number frame_statistics gives, which is not run again.
    import astro_dia.reference as reference_module

    reference, targets = frames
    assert "REFFWHM" not in reference.header
    expected = float(reference_module.frame_statistics([reference])["fwhm"][0])
    calls, seen = [], []
    original_statistics = reference_module.frame_statistics
    original_sources = series_module.reference_sources

    def counting(*args, **kwargs):
        calls.append(1)
        return original_statistics(*args, **kwargs)

    def sources(reference, fwhm, **kwargs):
        seen.append(fwhm)
        return original_sources(reference, fwhm, **kwargs)

    monkeypatch.setattr(reference_module, "frame_statistics", counting)
    monkeypatch.setattr(series_module, "reference_sources", sources)
    process_series(targets[:2], tmp_path, reference=reference,
                   imager=DifferenceImager(kernel_size=9, flat=1), progress=False, plots=False)
    assert calls == []
    assert seen == [expected]
    # With only a SATLEVEL card (which the registration reads and frame_statistics
    # does not), frame_statistics measures it.
    reference = reference.copy()
    reference.meta["SATLEVEL"] = 1e9
    process_series(targets[:2], tmp_path / "satlevel", reference=reference,
                   imager=DifferenceImager(kernel_size=9, flat=1), progress=False, plots=False)
    assert calls == [1]
