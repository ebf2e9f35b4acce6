"""Tests of astro_dia.detection.cutouts: stamps, their FITS file and their plot."""

import numpy as np
import pytest
from astropy.nddata import CCDData
from astropy.table import QTable

from astro_dia.detection import (CandidateCutouts, candidate_cutouts, find_transients,
                                 read_cutouts, significance_image, write_cutouts)
from astro_dia.photometry import gaussian_psf

from .helpers import PSF_SIGMA, fitted_pair

REFERENCE_PSF = gaussian_psf(2.3548 * PSF_SIGMA)


@pytest.fixture(scope="module")
def fit():
    result, reference, target, _ = fitted_pair(x=[50.0, 3.0], y=[60.0, 100.0],
                                               flux=[4000.0, 4000.0])
    table = find_transients(result, 5.0, reference_psf=REFERENCE_PSF)
    return result, reference, target, table


def test_stamps_are_cut_from_each_image(fit):
    result, reference, target, table = fit
    significance = significance_image(result, REFERENCE_PSF)
    cutouts = candidate_cutouts(result, table, 15, reference=reference,
                                significance=significance)
    assert len(cutouts) == len(table)
    first = cutouts[0]
    assert isinstance(first, CandidateCutouts) and first.id == table["id"][0]
    assert list(first.stamps) == ["reference", "target", "difference", "significance"]
    yc, xc = int(round(first.y)), int(round(first.x))
    window = np.s_[yc - 7:yc + 8, xc - 7:xc + 8]
    np.testing.assert_allclose(first.stamps["reference"].data, reference.data[window])
    np.testing.assert_allclose(first.stamps["significance"].data, significance.data[window])
    # The target stamp is rebuilt as difference + model, equal to the target itself.
    good = np.isfinite(first.stamps["target"].data)
    np.testing.assert_allclose(first.stamps["target"].data[good], target.data[window][good],
                               rtol=1e-9, atol=1e-6)
    assert first.stamps["difference"].uncertainty.array.shape == (15, 15)


def test_stamp_off_the_image_is_nan_and_masked(fit):
    result, _, _, _ = fit
    table = QTable({"id": [7], "x": [2.0], "y": [100.0], "snr": [6.0]})
    stamp = candidate_cutouts(result, table, 11, reference_psf=REFERENCE_PSF)[0]
    difference = stamp.stamps["difference"]
    assert difference.shape == (11, 11)
    assert np.isnan(difference.data[:, :3]).all() and difference.mask[:, :3].all()


def test_fits_round_trip(fit, tmp_path):
    result, reference, _, table = fit
    cutouts = candidate_cutouts(result, table, 13, reference=reference,
                                reference_psf=REFERENCE_PSF)
    path = tmp_path / "stamps.fits"
    write_cutouts(cutouts, path)
    back = read_cutouts(path)
    assert [c.id for c in back] == [c.id for c in cutouts]
    for original, read in zip(cutouts, back):
        assert read.x == pytest.approx(original.x) and read.snr == pytest.approx(original.snr)
        assert list(read.stamps) == list(original.stamps)
        for name, stamp in original.stamps.items():
            np.testing.assert_allclose(read.stamps[name].data, stamp.data, rtol=1e-6,
                                       equal_nan=True)
            assert read.stamps[name].unit == stamp.unit
        np.testing.assert_allclose(read.stamps["difference"].uncertainty.array,
                                   original.stamps["difference"].uncertainty.array, rtol=1e-6,
                                   equal_nan=True)
    with pytest.raises(OSError):
        write_cutouts(cutouts, path)


def test_plot_draws_one_panel_per_stamp(fit):
    pytest.importorskip("matplotlib")
    result, reference, _, table = fit
    cutouts = candidate_cutouts(result, table[:1], reference=reference,
                                reference_psf=REFERENCE_PSF)
    figure = cutouts[0].plot()
    images = [ax for ax in figure.axes if ax.images]
    assert len(images) == 4


@pytest.mark.parametrize("size", [0, 2.5, True])
def test_bad_size_is_an_error(fit, size):
    with pytest.raises(ValueError, match="size"):
        candidate_cutouts(fit[0], fit[3], size)


def test_reference_of_another_shape_is_an_error(fit):
    reference = CCDData(np.zeros((10, 10)), unit="adu")
    with pytest.raises(ValueError, match="shape"):
        candidate_cutouts(fit[0], fit[3], reference=reference, reference_psf=REFERENCE_PSF)
