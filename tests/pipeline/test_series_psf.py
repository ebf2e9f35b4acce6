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
