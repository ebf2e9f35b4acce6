"""Tests of the STAR_RESIDUAL flag of find_transients: cores of bright stars, not changes."""

import numpy as np
import pytest

from astro_dia import DifferenceImager
from astro_dia.detection import DETECTION_FLAGS, find_transients
from astro_dia.detection._sharpness import STAR_RESIDUAL_FRACTION, star_flux
from astro_dia.photometry import gaussian_psf
from astro_dia.simulate import inject_point_sources, make_image_pair

from .helpers import KERNEL_SIGMA, KERNEL_SIZE, PSF_SIGMA, TARGET_SIGMA

STAR_RESIDUAL = DETECTION_FLAGS["STAR_RESIDUAL"]
BRIGHT = 2.0e5
#: Share of a star's flux moved into a core of this sigma (pixels): a PSF-core mismatch.
CORE_SHARE, CORE_SIGMA = 0.08, 0.7


def nearest(table, x, y):
    """Row of the candidate nearest to (x, y) and its distance."""
    distance = np.hypot(np.asarray(table["x"], float) - x, np.asarray(table["y"], float) - y)
    i = int(np.argmin(distance))
    return table[i], float(distance[i])


def with_noise(before, after, gain, seed):
    """``after`` with the photon noise of what was added to ``before``."""
    added = np.asarray(after.data, float) - np.asarray(before.data, float)
    rng = np.random.default_rng(seed)
    out = after.copy()
    out.data = out.data + rng.normal(0.0, 1.0, added.shape) * np.sqrt(np.abs(added) / gain)
    return out


@pytest.fixture(scope="module")
def bright_star_fit():
    """A sparse pair with 12 bright stars: 4 constant, 4 brighter by 10%, 4 with a sharper core.

    The sharper core moves ``CORE_SHARE`` of the star's flux from the target
    PSF into a Gaussian of sigma ``CORE_SIGMA``: the total flux is unchanged.
    """
    shape = (300, 300)
    reference, target, truth = make_image_pair(shape, psf_sigma=PSF_SIGMA,
                                               kernel_sigma=KERNEL_SIGMA, density=5, seed=41)
    gain = float(truth.settings["gain"])
    p = float(truth.scale_factor)
    centres = np.linspace(40, 260, 4)
    x, y = np.stack(np.meshgrid(centres, np.linspace(60, 240, 3)), -1).reshape(-1, 2).T
    x, y = x + 0.3, y - 0.2
    kind = np.repeat(["constant", "variable", "core"], 4)
    new_reference = with_noise(reference, inject_point_sources(reference, x, y, BRIGHT,
                                                               PSF_SIGMA), gain, 1)
    flux = np.where(kind == "variable", 1.1, 1.0) * BRIGHT * p
    broad = np.where(kind == "core", 1 - CORE_SHARE, 1.0) * flux
    new_target = inject_point_sources(target, x, y, broad, TARGET_SIGMA)
    core = kind == "core"
    new_target = inject_point_sources(new_target, x[core], y[core], CORE_SHARE * flux[core],
                                      CORE_SIGMA)
    new_target = with_noise(target, new_target, gain, 2)
    result = DifferenceImager(kernel_size=KERNEL_SIZE, flat=1).fit(new_reference, new_target)
    table = find_transients(result, 5.0, reference_psf=gaussian_psf(2.3548 * PSF_SIGMA))
    return result, table, x, y, kind


def test_star_flux_measures_the_model_star(bright_star_fit):
    result, _, x, y, kind = bright_star_fit
    flux = star_flux(result.model.data, ~result.difference.mask, x, y, 2.3548 * TARGET_SIGMA)
    expected = BRIGHT * result.scale_factor
    # The model is the reference's star convolved with K: its flux is P times the
    # reference's; an aperture of 2 FWHM holds all but ~0.1% of a Gaussian.
    np.testing.assert_allclose(flux, expected, rtol=0.01)


def test_residuals_of_unchanged_stars_are_flagged_and_flux_changes_are_not(bright_star_fit):
    # The four sharper cores pull the one kernel towards them, so that every unchanged
    # star leaves a residual of a few per cent of its flux at S/N 10-20: each is a
    # STAR_RESIDUAL. The stars 10% brighter give PSF-shaped candidates: not flagged.
    _, table, x, y, kind = bright_star_fit
    for xi, yi, what in zip(x, y, kind):
        row, distance = nearest(table, xi, yi)
        if what == "variable":
            assert distance < 1.0 and row["snr"] > 20
            assert not row["flags"] & STAR_RESIDUAL
        else:
            assert distance < 3.0 and abs(row["snr"]) > 10
            assert abs(row["flux"].value) < STAR_RESIDUAL_FRACTION * BRIGHT
            assert row["flags"] & STAR_RESIDUAL


def test_a_difference_without_its_model_gets_no_star_residual_flag(bright_star_fit):
    result, table, x, y, kind = bright_star_fit
    plain = find_transients(result.difference, 5.0,
                            reference_psf=gaussian_psf(2.3548 * PSF_SIGMA))
    assert len(plain) == len(table)
    assert not np.any(np.asarray(plain["flags"]) & STAR_RESIDUAL)
    assert np.any(np.asarray(table["flags"]) & STAR_RESIDUAL)
