"""``fit_region``: the fit on every pixel, or on the footprints of the reference's stars."""

import warnings

import numpy as np
import pytest
import torch

from astro_dia import DifferenceImager
from astro_dia.exceptions import DIAError, FitQualityWarning
from astro_dia.fitting import _normal
from astro_dia.fitting._fit_region import star_region
from astro_dia.fitting._normal import assemble_normal_equations
from astro_dia.fitting._problem import FitProblem
from astro_dia.background import background_basis
from astro_dia.losses import get_loss
from astro_dia.noise._variance_terms import VarianceTerms
from astro_dia.result.io import read_result, write_result
from astro_dia.simulate import make_image_pair

#: A dense field whose single-exposure reference is as noisy as its target.
NOISY_PAIR = dict(psf_sigma=1.8, kernel_sigma=1.3, scale_factor=1.0, reference_sky=1000.0,
                  target_sky=1000.0, gain=2.4, read_noise=5.0, density=30.0,
                  reference_variance_ratio=1.0)


def noisy_pair(seed=1, **extra):
    reference, target, truth = make_image_pair((400, 400), seed=seed, noise_seed=seed + 100,
                                               **{**NOISY_PAIR, **extra})
    return reference, target, truth


def fit(reference, target, **settings):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = DifferenceImager(flat=1, sky=0, **settings).fit(reference, target)
    return result, [w.message for w in caught]


def refnoise_warnings(caught):
    return [m for m in caught if isinstance(m, FitQualityWarning)
            and "predicted to bias P" in str(m)]


def test_star_region_holds_bright_stars_and_no_bare_sky():
    reference, _, truth = noisy_pair()
    data = np.asarray(reference.data, float)
    region = star_region(data, truth.reference_variance, np.zeros(data.shape, bool))
    stars = truth.stars
    x, y = np.round(stars["x"]).astype(int), np.round(stars["y"]).astype(int)
    inside = (x >= 5) & (x < data.shape[1] - 5) & (y >= 5) & (y < data.shape[0] - 5)
    peak_snr = (np.asarray(stars["flux"]) / (2 * np.pi * NOISY_PAIR["psf_sigma"] ** 2)
                / np.sqrt(truth.reference_variance[y.clip(0, 399), x.clip(0, 399)]))
    bright = inside & (peak_snr > 20)
    assert bright.sum() >= 10 and region[y[bright], x[bright]].all()
    # the region is the stars' footprints: a minority of a dense field
    assert 0.02 < region.mean() < 0.6
    # bare sky (noiseless star light under half a sigma) is mostly left out
    light = truth.reference_noiseless - NOISY_PAIR["reference_sky"]
    bare = light < 0.5 * np.sqrt(truth.reference_variance)
    assert region[bare].mean() < 0.1


def test_star_region_of_pure_noise_is_empty_and_avoids_bad_pixels():
    rng = np.random.default_rng(5)
    noise = rng.normal(1000.0, 20.0, (200, 200))
    assert not star_region(noise, np.full(noise.shape, 400.0), np.zeros(noise.shape, bool)).any()
    star = noise.copy()
    star[95:106, 95:106] += 5e4 * np.exp(-((np.indices((11, 11)) - 5) ** 2).sum(0) / 8.0)
    bad = np.zeros(star.shape, bool)
    bad[100, :] = True
    region = star_region(star, None, bad)
    assert region[97, 100] and region[103, 100]
    # grown by the margin over the bad row, never seeded or propagated on it
    assert region.sum() < 600 and not region[0:50].any()


def test_gathered_normal_equations_equal_whole_strips(monkeypatch):
    """Multiplying only the fitted pixels' columns changes no element of A^T W A."""
    reference, target, truth = noisy_pair()
    shape, size = reference.shape, 9
    h = size // 2
    valid = (slice(h, shape[0] - h), slice(h, shape[1] - h))
    mask = star_region(np.asarray(reference.data, float), truth.reference_variance,
                       np.zeros(shape, bool))[valid]
    assert 0.02 < mask.mean() < 0.6
    terms = VarianceTerms(constant=np.full(shape, 100.0), slope=np.full(shape, 0.4),
                          minimum=1e-3, offset=0.0)
    problem = FitProblem(np.asarray(reference.data, float), np.asarray(target.data, float),
                         mask, background_basis(shape, 1, region=valid), terms.cropped(valid),
                         size, get_loss("gaussian"), 0.0, None, device="cpu", dtype="float64")
    weights = torch.as_tensor(1.0 / (100.0 + 0.4 * np.asarray(target.data, float)[valid]))
    gathered = assemble_normal_equations(problem, weights)
    monkeypatch.setattr(_normal, "GATHER_BELOW", 0.0)
    whole = assemble_normal_equations(problem, weights)
    for left, right in zip(gathered, whole):
        assert torch.allclose(left, right, rtol=1e-10, atol=1e-12 * float(right.abs().max()))


def test_fit_region_is_validated():
    with pytest.raises(ValueError, match="fit_region must be one of 'auto', 'all', 'stars'"):
        DifferenceImager(fit_region="stamps")


def test_auto_refits_on_the_stars_when_the_reference_noise_biases_p():
    reference, target, _ = noisy_pair()
    everything, caught_all = fit(reference, target, fit_region="all")
    assert everything.fit_region == "all" and refnoise_warnings(caught_all)
    auto, caught_auto = fit(reference, target)
    stars, _ = fit(reference, target, fit_region="stars")
    assert auto.fit_region == "stars" == stars.fit_region
    # the refit lessens the bias, and says that the reference is noisy
    assert "REFNOISE" in auto.quality["causes"]
    assert any("fitted on the reference's stars" in str(m) for m in refnoise_warnings(caught_auto))
    assert auto.difference.header["DIA_FREG"] == "stars"
    assert auto.scale_factor == stars.scale_factor and auto.n_data == stars.n_data
    assert auto.n_data < 0.6 * everything.n_data
    # the fit pixels are those of the stars, and D is still made everywhere
    assert np.isfinite(auto.difference.data[~auto.fit_mask]).mean() > 0.9


def test_auto_keeps_every_pixel_with_a_quiet_reference():
    reference, target, _ = noisy_pair(reference_variance_ratio=0.05)
    result, caught = fit(reference, target)
    assert result.fit_region == "all" and not refnoise_warnings(caught)
    assert result.difference.header["DIA_FREG"] == "all"


def test_stars_with_too_few_star_pixels_is_an_error():
    reference, target, _ = make_image_pair((120, 120), density=2.0, seed=3, noise_seed=4,
                                           reference_variance_ratio=1.0)
    with pytest.raises(DIAError, match="fit_region='all'"):
        DifferenceImager(flat=1, sky=0, fit_region="stars").fit(reference, target)


def test_the_fit_region_survives_a_file(tmp_path):
    reference, target, _ = noisy_pair()
    result, _ = fit(reference, target, fit_region="stars")
    path = tmp_path / "diff.fits"
    write_result(result, path)
    assert read_result(path).fit_region == "stars"
