"""
`astro_dia.registration._gaussians`: all stars' Gaussians at once, against photutils star by star.

The fits must land where photutils' own do (``centroid_sources`` with
``centroid_2dg``, ``fit_fwhm``) on the same boxes, masked and non-finite
pixels included, give the truth on noiseless stars, and answer NaN, not
raise, where photutils has nothing to fit.
"""

import warnings

import numpy as np
import pytest
from astropy.modeling.models import Gaussian2D
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning
from photutils.centroids import centroid_2dg, centroid_sources
from photutils.datasets import make_model_image
from photutils.psf import CircularGaussianPRF, fit_fwhm

from astro_dia.registration._gaussians import gaussian_centroids, gaussian_fwhms

SKY = 50.0


@pytest.fixture(scope="module")
def field():
    """A noisy field of elliptical stars, some crowded, with masked and NaN pixels."""
    rng = np.random.default_rng(5)
    shape = (200, 220)
    n = 80
    x = rng.uniform(8, shape[1] - 9, n)
    y = rng.uniform(8, shape[0] - 9, n)
    yy, xx = np.indices(shape)
    data = np.full(shape, SKY)
    for xi, yi, amplitude, theta in zip(x, y, rng.uniform(50, 2000, n), rng.uniform(0, np.pi, n)):
        data += Gaussian2D(amplitude, xi, yi, 2.0, 1.6, theta)(xx, yy)
    data += rng.normal(0, 3.0, shape)
    mask = np.zeros(shape, bool)
    mask[rng.integers(0, shape[0], 150), rng.integers(0, shape[1], 150)] = True
    data[rng.integers(0, shape[0], 20), rng.integers(0, shape[1], 20)] = np.nan
    # Guesses off by up to a pixel; three stars too near the edge for the box.
    gx = np.concatenate([x + rng.uniform(-1, 1, n), [2.0, 218.5, 100.0]])
    gy = np.concatenate([y + rng.uniform(-1, 1, n), [100.0, 50.0, 1.0]])
    return data, mask, gx, gy


def test_centroids_match_centroid_2dg(field):
    data, mask, x, y = field
    box = 11
    ours = gaussian_centroids(data, mask, x, y, box=box, sky=SKY)
    inside = (x >= 5) & (x <= data.shape[1] - 6) & (y >= 5) & (y <= data.shape[0] - 6)
    assert np.all(np.isnan(ours[~inside]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        theirs = np.column_stack(centroid_sources(data - SKY, x[inside], y[inside], box_size=box,
                                                  centroid_func=centroid_2dg, mask=mask))
    ours = ours[inside]
    assert np.all(np.isfinite(ours))
    # Faint stars in blends run off in both fits (to other places): the
    # registration drops centroids that moved more than half the FWHM.
    moved_ours = np.hypot(ours[:, 0] - x[inside], ours[:, 1] - y[inside]) > 2.5
    moved_theirs = np.hypot(theirs[:, 0] - x[inside], theirs[:, 1] - y[inside]) > 2.5
    np.testing.assert_array_equal(moved_ours, moved_theirs)
    assert moved_ours.sum() < 10
    distance = np.hypot(*(ours - theirs)[~moved_ours].T)
    # photutils' fitter stops a little short of the minimum.
    assert np.median(distance) < 1e-4
    assert np.max(distance) < 2e-3


def test_fwhms_match_fit_fwhm():
    rng = np.random.default_rng(8)
    shape = (160, 160)
    n = 25
    x, y = rng.uniform(10, 150, n), rng.uniform(10, 150, n)
    params = QTable({"x_0": x, "y_0": y, "flux": rng.uniform(2e3, 5e4, n)})
    data = make_model_image(shape, CircularGaussianPRF(fwhm=4.2), params, model_shape=(25, 25))
    data += SKY + rng.normal(0, 2.0, shape)
    mask = np.zeros(shape, bool)
    mask[rng.integers(0, shape[0], 100), rng.integers(0, shape[1], 100)] = True
    guess_x, guess_y = x + rng.uniform(-0.5, 0.5, n), y + rng.uniform(-0.5, 0.5, n)
    ours = gaussian_fwhms(data, mask, guess_x, guess_y, box=11, fwhm=3.0, sky=SKY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        theirs = fit_fwhm(data - SKY, xypos=np.column_stack([guess_x, guess_y]), fwhm=3.0,
                          fit_shape=11, mask=mask)
    np.testing.assert_allclose(np.abs(ours), theirs, atol=2e-3)
    assert abs(np.median(ours) - 4.2) < 0.05


def test_noiseless_stars_exact():
    yy, xx = np.indices((60, 60))
    truth = np.array([[20.3, 30.7], [41.55, 15.2]])
    data = sum(Gaussian2D(500, cx, cy, 1.7, 1.2, 0.6)(xx, yy) for cx, cy in truth)
    found = gaussian_centroids(data, None, np.round(truth[:, 0]), np.round(truth[:, 1]), box=9)
    np.testing.assert_allclose(found, truth, atol=1e-6)
    prf = make_model_image((60, 60), CircularGaussianPRF(fwhm=3.3),
                           QTable({"x_0": truth[:, 0], "y_0": truth[:, 1], "flux": [1e4, 2e4]}),
                           model_shape=(21, 21))
    fwhm = gaussian_fwhms(prf, None, truth[:, 0] + 0.3, truth[:, 1] - 0.2, box=11, fwhm=3.0)
    np.testing.assert_allclose(fwhm, 3.3, atol=1e-6)


def test_nothing_to_fit_gives_nan():
    data = np.zeros((40, 40))
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    data[20, 20] = 1.0
    assert gaussian_centroids(data, mask, [], [], box=9).shape == (0, 2)
    assert gaussian_fwhms(data, mask, [], [], box=9, fwhm=3.0).shape == (0,)
    # All masked, all NaN, flat: no fit, no error.
    assert np.all(np.isnan(gaussian_centroids(data, mask, [20.0], [20.0], box=9)))
    assert np.all(np.isnan(gaussian_fwhms(data, mask, [20.0], [20.0], box=9, fwhm=3.0)))
    nan = np.full((40, 40), np.nan)
    assert np.all(np.isnan(gaussian_centroids(nan, None, [20.0], [20.0], box=9)))
    assert np.all(np.isnan(gaussian_fwhms(nan, None, [20.0], [20.0], box=9, fwhm=3.0)))
    assert np.all(np.isnan(gaussian_centroids(np.ones((40, 40)), None, [20.0], [20.0], box=9)))
