"""Tests of the SHARP flag of find_transients: cosmic rays and hot pixels, not transients."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.signal import fftconvolve

from astro_dia import DifferenceImager
from astro_dia import flags as pixel_flags
from astro_dia.detection import DETECTION_FLAGS, decode_detection_flags, find_transients
from astro_dia.detection._sharpness import SHARP_RELATIVE, SHARP_SIGMA, peak_excess
from astro_dia.photometry import gaussian_psf, moffat_psf, render_psf
from astro_dia.simulate import expected_snr, inject_point_sources, make_image_pair

from .helpers import noise_difference

SHARP = DETECTION_FLAGS["SHARP"]


def nearest(table, x, y):
    """Row of the candidate nearest to (x, y) and its distance."""
    distance = np.hypot(np.asarray(table["x"], float) - x, np.asarray(table["y"], float) - y)
    i = int(np.argmin(distance))
    return table[i], float(distance[i])


def grid(n_side, shape, margin, seed):
    """``n_side**2`` jittered positions, far enough apart not to blend."""
    rng = np.random.default_rng(seed)
    centres = np.linspace(margin, shape[0] - margin, n_side)
    x, y = (np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)
            + rng.uniform(-2, 2, (n_side ** 2, 2))).T
    return x, y


def add_defects(image, sigma, x, y, amplitudes, sizes):
    """A copy of ``image`` with hot pixels (size 1) and cosmic rays of 2-3 pixels."""
    out = image.copy()
    data = np.array(out.data, float)
    for xi, yi, amplitude, size in zip(x, y, amplitudes, sizes):
        ix, iy = int(round(xi)), int(round(yi))
        for k in range(size):          # a diagonal track, each pixel a bit fainter
            data[iy + k, ix + k] += amplitude * sigma[iy + k, ix + k] * (1 - 0.2 * k)
    out.data = data
    return out


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_peak_excess_of_one_pixel_is_the_analytic_value(sign):
    psf, sigma, amplitude, half = gaussian_psf(3.0), 2.0, 100.0, 4
    data = np.zeros((41, 41))
    data[20, 20] = sign * amplitude
    arrays = (data, np.full(data.shape, sigma ** 2), np.ones(data.shape, bool))
    excess, excess_snr = peak_excess(arrays, psf, np.array([20.0]), np.array([20.0]),
                                     np.array([sign]), half)
    phi = render_psf(psf, 2 * half + 1)
    peak_fraction = phi[half, half] ** 2 / (phi ** 2).sum()   # f phi_max / amplitude
    assert_allclose(excess, 1 / peak_fraction - 1, rtol=1e-6)
    assert_allclose(excess_snr, amplitude * (1 - peak_fraction) / sigma, rtol=1e-6)


def test_peak_excess_of_a_point_source_is_zero_and_masked_centres_give_nan():
    psf = gaussian_psf(3.0)
    data = 500.0 * render_psf(psf, 41)
    good = np.ones(data.shape, bool)
    arrays = (data, np.ones(data.shape), good)
    excess, excess_snr = peak_excess(arrays, psf, np.array([20.0]), np.array([20.0]),
                                     np.array([1]), 4)
    assert_allclose([excess[0], excess_snr[0]], [0.0, 0.0], atol=1e-8)
    good[19:22, 19:22] = False
    excess, excess_snr = peak_excess((data, np.ones(data.shape), good), psf, np.array([20.0]),
                                     np.array([20.0]), np.array([1]), 4)
    assert np.isnan(excess[0]) and np.isnan(excess_snr[0])


def test_faint_sources_are_kept_by_noise_and_hot_pixels_are_flagged():
    # White noise, delta kernel: 36 point sources of S/N 5-8 and, between them, 25 hot
    # pixels and two- and three-pixel cosmic rays of S/N 10-40.
    sigma, psf_sigma, shape = 10.0, 1.5, (300, 300)
    difference = noise_difference(shape, sigma=sigma, seed=12)
    x, y = grid(6, shape, 25, seed=1)
    rng = np.random.default_rng(2)
    wanted = rng.uniform(5.0, 8.0, x.size) * rng.choice([-1.0, 1.0], x.size)
    flux = wanted / expected_snr(x, y, 1.0, psf_sigma, np.full(shape, sigma ** 2))
    difference = inject_point_sources(difference, x, y, flux, psf_sigma)
    hx, hy = grid(5, shape, 25 + 23, seed=3)
    sizes = np.arange(hx.size) % 3 + 1
    hot = add_defects(difference, np.full(shape, sigma), hx, hy,
                      rng.uniform(40.0, 130.0, hx.size), sizes)
    table = find_transients(hot, 5.0, reference_psf=gaussian_psf(2.3548 * psf_sigma))
    sources = [row for row, d in (nearest(table, *p) for p in zip(x, y)) if d <= 1.5]
    assert len(sources) >= 30
    assert not any(row["flags"] & SHARP for row in sources)
    # Noise alone puts many faint peaks half a PSF peak above the fit: the
    # significance criterion, not the relative one, keeps them clean.
    assert sum(row["peak_excess"] > SHARP_RELATIVE for row in sources) >= 5
    assert max(row["peak_excess_snr"] for row in sources) < SHARP_SIGMA
    defects = [row for row, d in (nearest(table, *p) for p in zip(hx, hy)) if d <= 2.0]
    assert len(defects) == hx.size
    assert all(row["flags"] & SHARP for row in defects)
    assert min(abs(row["snr"]) for row in defects) >= 10


def test_bright_moffat_source_fitted_with_a_gaussian_is_not_sharp():
    # A source in a PSF with wide wings (Moffat beta 1.5, FWHM 2 pixels) measured with
    # the Gaussian that fits its core: the peak pixel exceeds the fit, very
    # significantly but by far less than half the fit's peak.
    difference = noise_difference((300, 300), sigma=10.0, seed=5)
    moffat = moffat_psf(2.0, 1.5)
    moffat.x_0, moffat.y_0, moffat.flux = 150.3, 149.8, 5.0e4
    y, x = np.mgrid[:300, :300]
    offsets = (np.arange(5) - 2) / 5
    image = sum(moffat(x + dx, y + dy) for dx in offsets for dy in offsets) / 25
    difference.data = difference.data + image
    table = find_transients(difference, 5.0, reference_psf=gaussian_psf(2.7),
                            max_candidates=1)
    row, distance = nearest(table, 150.3, 149.8)
    assert distance < 0.5
    assert row["peak_excess_snr"] > 3 * SHARP_SIGMA
    assert 0.05 < row["peak_excess"] < 0.6 * SHARP_RELATIVE
    assert not row["flags"] & SHARP


def defect_frame(psf_sigma, kernel_sigma, kernel_size, seed, *, shape=(200, 200), n_side=4,
                 snr_range=(5.0, 30.0), amplitudes=(60.0, 150.0)):
    """A fitted pair whose target has point sources and, between them, defects of 1-3 pixels.

    ``n_side**2`` sources (one in four fading) of expected S/N log-uniform in
    ``snr_range``, and ``(n_side - 1)**2`` defects of peak ``amplitudes``
    times the pixel's noise. Returns the fit, its candidates, and the
    positions of the sources and of the defects.
    """
    reference, target, truth = make_image_pair(shape, psf_sigma=psf_sigma,
                                               kernel_sigma=kernel_sigma, seed=seed)
    target_sigma = float(np.hypot(psf_sigma, kernel_sigma))
    kernel = np.asarray(truth.kernel)
    variance = truth.target_variance + fftconvolve(truth.reference_variance,
                                                   kernel[::-1, ::-1] ** 2, mode="same")
    margin = 30
    x, y = grid(n_side, shape, margin, seed=seed + 1)
    rng = np.random.default_rng(seed + 2)
    wanted = np.exp(rng.uniform(*np.log(snr_range), x.size))
    wanted *= np.where(np.arange(x.size) % 4 == 0, -1.0, 1.0)
    flux = wanted / expected_snr(x, y, 1.0, target_sigma, variance)
    target = inject_point_sources(target, x, y, flux, target_sigma)
    half_step = (shape[0] - 2 * margin) / (n_side - 1) / 2
    hx, hy = grid(n_side - 1, shape, margin + half_step, seed=seed + 3)
    target = add_defects(target, np.sqrt(truth.target_variance), hx, hy,
                         rng.uniform(*amplitudes, hx.size), np.arange(hx.size) % 3 + 1)
    imager = DifferenceImager(kernel_size=kernel_size, flat=1, reference_noise=True)
    result = imager.fit(reference, target)
    table = find_transients(result, 5.0, reference_psf=gaussian_psf(2.3548 * psf_sigma))
    return result, table, (x, y), (hx, hy)


@pytest.mark.parametrize("psf_sigma, kernel_sigma, kernel_size", [(1.5, 1.2, 11),
                                                                   (0.6, 0.6, 7)])
def test_fit_with_cosmic_rays_flags_them_and_not_the_injected_sources(psf_sigma, kernel_sigma,
                                                                      kernel_size):
    # A fitted pair (target PSF FWHM 4.5 and 2 pixels): 16 point sources of S/N 5-30 and
    # 9 defects of 1-3 pixels in the target, of S/N 10 or more; the fit rejects the
    # defects (OUTLIER), the difference keeps them.
    result, table, sources, defects = defect_frame(psf_sigma, kernel_sigma, kernel_size, 8)
    found = [row for row, d in (nearest(table, *p) for p in zip(*sources)) if d <= 1.5]
    assert len(found) >= 14
    assert not any(row["flags"] & SHARP for row in found)
    for xi, yi in zip(*defects):
        row, distance = nearest(table, xi, yi)
        assert distance <= 2.0 and abs(row["snr"]) >= 10
        assert row["flags"] & SHARP
        assert result.flags[int(round(yi)), int(round(xi))] & pixel_flags.OUTLIER


@pytest.mark.slow
@pytest.mark.parametrize("psf_sigma, kernel_sigma, kernel_size", [(1.5, 1.2, 11),
                                                                   (0.6, 0.6, 7)])
def test_sharp_rates_over_seeds(psf_sigma, kernel_sigma, kernel_size):
    # Six 256 x 256 frames: 25 sources each, mostly near the threshold (S/N 5-12), and 16
    # defects of 15-150 sigma. Fewer than 2% of the sources found may be flagged, and
    # more than 95% of the defects found at S/N 10 or more must be.
    n_sources = n_sharp_sources = n_defects = n_sharp_defects = 0
    for seed in range(20, 26):
        _, table, sources, defects = defect_frame(
            psf_sigma, kernel_sigma, kernel_size, seed, shape=(256, 256), n_side=5,
            snr_range=(5.0, 12.0), amplitudes=(15.0, 150.0))
        for row, d in (nearest(table, *p) for p in zip(*sources)):
            if d <= 1.5:
                n_sources += 1
                n_sharp_sources += bool(row["flags"] & SHARP)
        for row, d in (nearest(table, *p) for p in zip(*defects)):
            if d <= 2.0 and abs(row["snr"]) >= 10:
                n_defects += 1
                n_sharp_defects += bool(row["flags"] & SHARP)
    assert n_sources >= 120 and n_defects >= 60
    assert n_sharp_sources <= 0.02 * n_sources
    assert n_sharp_defects >= 0.95 * n_defects


def test_sharp_is_a_new_bit_decoded_by_name():
    values = list(DETECTION_FLAGS.values())
    assert DETECTION_FLAGS["SHARP"] == 32
    assert len(set(values)) == len(values) and all(v & (v - 1) == 0 for v in values)
    assert decode_detection_flags(32 | 4) == ["DIPOLE", "SHARP"]


def test_empty_table_has_the_peak_excess_columns():
    table = find_transients(noise_difference(seed=7), 50.0, reference_psf=gaussian_psf(4.0))
    assert len(table) == 0
    assert {"peak_excess", "peak_excess_snr"} <= set(table.colnames)


def test_hot_pixel_beside_a_masked_patch_is_masked_and_sharp():
    mask = np.zeros((200, 200), bool)
    mask[99:102, 99:102] = True
    difference = noise_difference(seed=9, mask=mask)
    difference.data[100, 104] += 2000.0      # 200 sigma, three pixels from the patch
    table = find_transients(difference, 5.0, reference_psf=gaussian_psf(4.0))
    row, distance = nearest(table, 104.0, 100.0)
    assert distance < 1.5
    assert row["flags"] & DETECTION_FLAGS["MASKED"] and row["flags"] & SHARP
