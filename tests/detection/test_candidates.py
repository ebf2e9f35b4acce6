"""Tests of astro_dia.detection.find_transients: the candidate table and its flags."""

import dataclasses

import numpy as np
import pytest
from astropy.nddata import CCDData
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS

from astro_dia import flags as pixel_flags
from astro_dia.detection import DETECTION_FLAGS, decode_detection_flags, find_transients
from astro_dia.photometry import gaussian_psf
from astro_dia.simulate import expected_snr, inject_point_sources
from scipy.signal import fftconvolve

from .helpers import KERNEL_SIZE, PSF_SIGMA, TARGET_SIGMA, fitted_pair, noise_difference

REFERENCE_PSF = gaussian_psf(2.3548 * PSF_SIGMA)


def nearest(table, x, y):
    """Row of the candidate nearest to (x, y) and its distance."""
    distance = np.hypot(np.asarray(table["x"], float) - x, np.asarray(table["y"], float) - y)
    i = int(np.argmin(distance))
    return table[i], float(distance[i])


@pytest.fixture(scope="module")
def injected():
    """A 256^2 pair with 24 point sources of expected S/N 8-30, both signs."""
    rng = np.random.default_rng(11)
    n = 24
    grid = np.stack(np.meshgrid(np.linspace(30, 226, 6), np.linspace(40, 216, 4)), -1)
    x, y = (grid.reshape(-1, 2) + rng.uniform(-3, 3, (n, 2))).T
    sign = np.where(np.arange(n) % 3 == 0, -1.0, 1.0)
    wanted = sign * rng.uniform(8.0, 30.0, n)
    fit0, _, _, truth = fitted_pair((256, 256), seed=21)
    variance = truth.target_variance + fftconvolve(
        truth.reference_variance, np.asarray(truth.kernel)[::-1, ::-1] ** 2, mode="same")
    flux = wanted / expected_snr(x, y, 1.0, TARGET_SIGMA, variance)
    result, *_ = fitted_pair((256, 256), x, y, flux, seed=21)
    return result, x, y, wanted, find_transients(result, 5.0, reference_psf=REFERENCE_PSF)


def test_bright_injected_sources_are_found_with_calibrated_snr(injected):
    result, x, y, wanted, table = injected
    found, ratios = 0, []
    for xi, yi, snr in zip(x, y, wanted):
        row, distance = nearest(table, xi, yi)
        if distance <= 1.5:
            found += 1
            ratios.append(row["snr"] / snr)
            assert row["sign"] == np.sign(snr)
            assert np.sign(row["flux"].value) == np.sign(snr)
    assert found / len(x) >= 0.95
    assert 0.8 <= np.median(ratios) <= 1.2


def test_table_columns_and_order(injected):
    table = injected[-1]
    assert table.colnames[:4] == ["id", "x", "y", "snr"]
    for name in ("flux", "flux_err", "flux_ref", "flux_ref_err", "sign", "flags"):
        assert name in table.colnames
    assert list(table["id"]) == list(range(1, len(table) + 1))
    assert np.all(np.diff(np.abs(table["snr"])) <= 0)
    assert table["flux"].unit == injected[0].difference.unit
    assert table.meta["threshold"] == 5.0
    np.testing.assert_allclose(table["flux_ref"] * injected[0].scale_factor, table["flux"],
                               rtol=1e-10)


def test_pure_noise_pair_has_at_most_one_false_detection():
    result, *_ = fitted_pair((400, 400), seed=31)
    table = find_transients(result, 5.0, reference_psf=REFERENCE_PSF)
    assert len(table[table["flags"] == 0]) <= 1


def test_no_candidate_gives_an_empty_table_with_its_columns():
    table = find_transients(noise_difference(seed=7), 50.0, reference_psf=gaussian_psf(4.0))
    assert len(table) == 0
    assert "snr" in table.colnames and "flags" in table.colnames


def test_dipole_of_a_misregistered_bright_star_is_flagged():
    # A bright star of the target moved by 0.5 pixel: +F at the new place, -F at the old.
    x0, y0, flux = 80.0, 80.0, 40000.0
    result, *_ = fitted_pair(x=[x0 + 0.5, x0, 140.0], y=[y0, y0, 40.0],
                             flux=[flux, -flux, 3000.0])
    table = find_transients(result, 5.0, reference_psf=REFERENCE_PSF)
    row, distance = nearest(table, x0, y0)
    assert distance < 3.0                      # on one of the two lobes
    assert row["flags"] & DETECTION_FLAGS["DIPOLE"]
    isolated, distance = nearest(table, 140.0, 40.0)
    assert distance < 1.5 and not isolated["flags"] & DETECTION_FLAGS["DIPOLE"]


def test_masked_column_and_edge_are_flagged():
    with pytest.warns(AstropyUserWarning, match="NaN or infinite pixels"):
        result, *_ = fitted_pair(x=[82.0, 40.0, KERNEL_SIZE // 2 + 3.0],
                                 y=[70.0, 120.0, 90.0], flux=[3000.0, 3000.0, 3000.0],
                                 bad_columns=(85,))
    table = find_transients(result, 5.0, reference_psf=REFERENCE_PSF)
    near_column, distance = nearest(table, 82.0, 70.0)
    assert distance < 1.5 and near_column["flags"] & DETECTION_FLAGS["MASKED"]
    clean, distance = nearest(table, 40.0, 120.0)
    assert distance < 1.5 and clean["flags"] == 0
    edge, distance = nearest(table, KERNEL_SIZE // 2 + 3.0, 90.0)
    assert distance < 1.5 and edge["flags"] & DETECTION_FLAGS["EDGE"]


@pytest.fixture(scope="module")
def plain():
    """A pair with three isolated point sources."""
    return fitted_pair(x=[60.0, 120.0, 70.0], y=[60.0, 120.0, 90.0],
                       flux=[3000.0, 3000.0, 3000.0])[0]


def test_saturated_pixels_in_the_box_are_flagged(plain):
    result = plain
    flags = result.flags.copy()
    flags[58:61, 61:64] |= pixel_flags.SATURATED   # pretend a saturated core there
    table = find_transients(dataclasses.replace(result, flags=flags), 5.0,
                            reference_psf=REFERENCE_PSF)
    near, _ = nearest(table, 60.0, 60.0)
    far, _ = nearest(table, 120.0, 120.0)
    assert near["flags"] & DETECTION_FLAGS["SATURATED"]
    assert not far["flags"] & DETECTION_FLAGS["SATURATED"]


def test_extended_source_is_flagged_and_a_point_source_is_not():
    result, reference, target, truth = fitted_pair(x=[50.0], y=[50.0], flux=[3000.0])
    galaxy = inject_point_sources(target, 110.0, 110.0, 30000.0, 4.0 * TARGET_SIGMA)
    from astro_dia import DifferenceImager
    result = DifferenceImager(kernel_size=KERNEL_SIZE, flat=1,
                              reference_noise=True).fit(reference, galaxy)
    table = find_transients(result, 5.0, reference_psf=REFERENCE_PSF)
    extended, distance = nearest(table, 110.0, 110.0)
    assert distance < 2.5 and extended["flags"] & DETECTION_FLAGS["EXTENDED"]
    point, distance = nearest(table, 50.0, 50.0)
    assert distance < 1.5 and not point["flags"] & DETECTION_FLAGS["EXTENDED"]


def test_skycoord_follows_the_wcs(plain):
    result = plain
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [80.0, 80.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    difference = CCDData(result.difference, wcs=wcs)
    table = find_transients(dataclasses.replace(result, difference=difference), 5.0,
                            reference_psf=REFERENCE_PSF)
    row, _ = nearest(table, 70.0, 90.0)
    expected = wcs.pixel_to_world(row["x"], row["y"])
    assert row["skycoord"].separation(expected).arcsec < 1e-6


def test_decode_detection_flags():
    assert decode_detection_flags(DETECTION_FLAGS["EDGE"] | DETECTION_FLAGS["EXTENDED"]) == [
        "EDGE", "EXTENDED"]


@pytest.mark.parametrize("threshold", [0.0, -1.0, np.nan])
def test_bad_threshold_is_an_error(threshold):
    with pytest.raises(ValueError, match="threshold"):
        find_transients(noise_difference(), threshold, reference_psf=gaussian_psf(4.0))


def test_difference_image_with_its_kernel_in_the_header_is_measured():
    # A CCDData difference (as subtract_reference writes it) rather than the fit: the
    # PSF photometry reads the kernel and P from the header.
    difference = inject_point_sources(noise_difference(seed=3), 100.0, 90.0, 3000.0, 1.7)
    table = find_transients(difference, 5.0, reference_psf=gaussian_psf(2.3548 * 1.7))
    row, distance = nearest(table, 100.0, 90.0)
    assert distance < 0.5
    assert abs(row["flux"].value - 3000.0) < 4 * row["flux_err"].value


@pytest.mark.parametrize("box_size, border", [(9, 0), (4, 0), (7, 5)])
def test_peaks_are_those_of_find_peaks_on_both_signs(box_size, border):
    # Only the pixels above the threshold are compared with their boxes; the
    # peaks, their order and ties are find_peaks' on S and on -S.
    from photutils.detection import find_peaks
    from scipy.ndimage import gaussian_filter

    from astro_dia.detection.candidates import _peaks

    rng = np.random.default_rng(box_size + border)
    significance = 6.0 * gaussian_filter(rng.normal(size=(150, 170)), 1.5)
    significance /= np.std(significance)
    significance[40:44, 60:64] = 9.0                 # a flat top: 16 tied pixels
    significance[100, 100] = -12.0
    significance[:, :3] = np.nan                     # undefined, next to the edge
    significance[75, 80:90] = np.nan
    threshold = 2.5
    xi, yi, signs = _peaks(significance, threshold, box_size, border)
    filled = np.where(np.isfinite(significance), significance, 0.0)
    expected = []
    for sign in (1, -1):
        table = find_peaks(sign * filled, threshold, box_size=box_size,
                           mask=~np.isfinite(significance), border_width=border)
        expected += [(int(x), int(y), sign) for x, y in zip(table["x_peak"], table["y_peak"])]
    assert len(expected) > 20
    assert list(zip(xi.tolist(), yi.tolist(), signs.tolist())) == expected
    # A flat image has no peak, above the threshold or not (find_peaks: None).
    for level in (7.0, -7.0, 1.0):
        flat = np.full((30, 40), level)
        assert all(len(found) == 0 for found in _peaks(flat, threshold, box_size, border))
    tilted = np.full((30, 40), 7.0)
    tilted[10, 10] = 8.0                             # every pixel above, ties away from it
    table = find_peaks(tilted, threshold, box_size=box_size, border_width=border)
    xi, yi, _ = _peaks(tilted, threshold, box_size, border)
    assert len(table) > 100
    assert list(zip(xi.tolist(), yi.tolist())) == list(zip(table["x_peak"].tolist(),
                                                           table["y_peak"].tolist()))
