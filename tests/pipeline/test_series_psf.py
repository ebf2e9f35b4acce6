"""The series' PSF: an ePSF that measures its own stars as apertures do, or a Gaussian."""

import numpy as np
import pytest

from astro_dia.photometry import gaussian_psf
from astro_dia.photometry._psf_stars import reference_sources
from astro_dia.pipeline import _light_curves
from astro_dia.pipeline._light_curves import psf_flux_agreement, series_psf
from astro_dia.simulate import make_image_pair

from ..real_data import PAIRS

FWHM = 2.355 * 1.5


@pytest.fixture(scope="module")
def reference():
    reference, _, _ = make_image_pair((200, 200), psf_sigma=1.5, density=20, seed=6)
    return reference


@pytest.fixture(scope="module")
def stars(reference):
    sources = reference_sources(reference, FWHM)
    good = sources[np.asarray(sources["isolated"]) & ~np.asarray(sources["saturated"])]
    assert len(good) >= 8
    return good[:40]


def test_the_true_psf_measures_its_stars_as_apertures_do(reference, stars):
    median, scatter = psf_flux_agreement(reference, stars, gaussian_psf(FWHM), FWHM)
    assert abs(median - 1) < 0.03 and scatter < 0.1


def test_a_wrong_psf_does_not(reference, stars):
    """A PSF twice too narrow underestimates every star's flux."""
    median, _ = psf_flux_agreement(reference, stars, gaussian_psf(FWHM / 2), FWHM)
    assert median < 1 - _light_curves.EPSF_MEDIAN_TOLERANCE


def test_series_keeps_the_epsf_of_a_real_crowded_reference():
    """The pyDIA cutout: its ePSF measures its stars within 2% (a Gaussian: 10% low)."""
    reference = PAIRS["pydia"]().reference
    fwhm = float(reference.header["PFWHM"])
    sources = reference_sources(reference, fwhm, saturation=65300.0)
    _, kind = series_psf(reference, sources, fwhm)
    assert kind == "epsf"


def test_series_keeps_the_epsf_of_a_rich_simulated_field():
    reference, _, _ = make_image_pair((300, 300), psf_sigma=1.5, density=30, seed=6)
    _, kind = series_psf(reference, reference_sources(reference, FWHM), FWHM)
    assert kind == "epsf"


def test_series_replaces_an_epsf_that_fails_its_stars(reference, monkeypatch):
    """An ePSF builder that returns a broken model: the series falls back on the Gaussian."""
    sources = reference_sources(reference, FWHM)
    narrow = gaussian_psf(FWHM / 3)
    monkeypatch.setattr(_light_curves, "build_reference_psf", lambda *args, **kw: narrow)
    psf, kind = series_psf(reference, sources, FWHM)
    assert kind == "gaussian" and psf is not narrow


def test_reference_fluxes_are_photutils_fits_of_each_source_alone(reference):
    # Every source of the reference (blends, the edge, one off the image, a masked
    # patch): the fluxes and errors of photutils' PSFPhotometry with fixed
    # positions and no grouper, which the linear fit reaches in one step.
    import warnings

    from astropy.stats import sigma_clipped_stats
    from astropy.table import QTable
    from astropy.utils.exceptions import AstropyUserWarning
    from photutils.psf import PSFPhotometry

    reference = reference.copy()
    reference.mask = np.zeros(reference.shape, bool)
    reference.mask[100:104, 50:58] = True
    sources = reference_sources(reference, FWHM, threshold=5.0)
    x = np.append(np.asarray(sources["x"], float), [1.2, 60.0, 230.0])
    y = np.append(np.asarray(sources["y"], float), [80.3, 101.5, 20.0])
    sky = _light_curves.reference_sky(reference)
    psf = gaussian_psf(FWHM)
    flux, flux_err = _light_curves.reference_fluxes(reference, x, y, psf, FWHM, sky=sky)
    assert np.array_equal(
        np.asarray(_light_curves.reference_fluxes(reference, x, y, psf, FWHM)), [flux, flux_err],
        equal_nan=True)
    data = np.asarray(reference.data, float)
    bad = reference.mask | ~np.isfinite(data)
    _, median, std = sigma_clipped_stats(data, mask=bad, maxiters=5)
    assert (median, std) == sky[1:]
    error = reference.uncertainty.array          # the reference's own
    assert np.all(error > 0)
    size = int(2 * np.ceil(1.5 * FWHM) + 1)
    model = psf.copy()
    model.x_0.fixed = model.y_0.fixed = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        table = PSFPhotometry(model, (size, size), aperture_radius=1.5 * FWHM)(
            np.where(bad, 0.0, data - median), mask=bad, error=error,
            init_params=QTable({"x": x, "y": y}))
    theirs, theirs_err = np.asarray(table["flux_fit"]), np.asarray(table["flux_err"])
    assert len(x) > 40 and np.isnan(flux[-1]) and np.all(np.isfinite(flux[:-1]))
    np.testing.assert_allclose(flux[:-1], theirs[:-1], rtol=0, atol=1e-3 * np.min(flux_err[:-1]))
    np.testing.assert_allclose(flux_err[:-1], theirs_err[:-1], rtol=1e-4)
