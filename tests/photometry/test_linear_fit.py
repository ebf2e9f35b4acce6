"""
PSF fluxes at fixed positions by linear least squares (``astro_dia.photometry._linear``).

Checked against photutils' `~photutils.psf.PSFPhotometry` with fixed
positions (the same fit reached iteratively) for isolated sources, and
against injected fluxes, a blended pair included: its fluxes must be
unbiased and its errors must describe the scatter over noise realisations.
"""

import warnings

import numpy as np
import pytest
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.table import QTable
from photutils.psf import PSFPhotometry

from astro_dia.photometry import PHOTOMETRY_FLAGS, differential_photometry, gaussian_psf, \
    target_psf
from astro_dia.photometry import _linear
from astro_dia.photometry._linear import fit_fixed_positions

BOX = (15, 15)
SHAPE = (160, 160)


@pytest.fixture(scope="module")
def psf():
    return target_psf(gaussian_psf(3.5), None)


def _image(psf, x, y, flux, sky_sigma=5.0, seed=0):
    """Noisy image of the sources, its error and a mask (a bad row)."""
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    model = sum(f * psf.evaluate(xx, yy, 1.0, a, b) for f, a, b in zip(flux, x, y))
    error = np.sqrt(sky_sigma ** 2 + np.abs(model) / 2.0)
    data = model + np.random.default_rng(seed).normal(0.0, 1.0, SHAPE) * error
    bad = np.zeros(SHAPE, bool)
    bad[60, :] = True
    return model, data, error, bad


@pytest.fixture(scope="module")
def isolated(psf):
    """Sixteen sources 35 px apart: four on the bad row, four at the edge, some negative."""
    gx, gy = np.meshgrid([12.3, 47.0, 82.6, 117.9], [14.2, 58.7, 95.1, 155.5])
    x, y = gx.ravel() + 0.1 * np.arange(16) % 1, gy.ravel()
    flux = np.random.default_rng(1).normal(0.0, 3000.0, 16)
    return x, y, flux, _image(psf, x, y, flux)


def _photutils(psf, data, error, bad, x, y, flux):
    model = psf.copy()
    model.x_0.fixed = model.y_0.fixed = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PSFPhotometry(model, BOX)(np.where(bad, 0.0, data), mask=bad, error=error,
                                         init_params=QTable({"x": x, "y": y, "flux": flux}))


def _assert_as_photutils(ours, theirs):
    """Our fluxes, errors and quality columns are photutils': agreement far inside the error."""
    np.testing.assert_allclose(ours["flux"], theirs["flux_fit"], rtol=0,
                               atol=1e-3 * np.min(ours["flux_err"]))
    np.testing.assert_allclose(ours["flux_err"], theirs["flux_err"], rtol=1e-4)
    np.testing.assert_allclose(ours["reduced_chi2"], theirs["reduced_chi2"], rtol=1e-4)
    np.testing.assert_allclose(ours["qfit"], theirs["qfit"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(ours["cfit"], theirs["cfit"], rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(ours["n_pixels"], theirs["n_pixels_fit"])


def test_isolated_sources_agree_with_photutils(psf, isolated):
    x, y, flux, (_, data, error, bad) = isolated
    ours = fit_fixed_positions(psf, data, error, bad, x, y, BOX)
    theirs = _photutils(psf, data, error, bad, x, y, flux)
    assert np.all(ours["group_size"] == 1)
    # photutils iterates to the same minimum: agreement far inside the error
    _assert_as_photutils(ours, theirs)
    np.testing.assert_array_equal(ours["flags"], np.asarray(theirs["flags"]) & ~4)
    # the edge source and those on the bad row have partial footprints
    partial = ours["n_pixels"] < BOX[0] * BOX[1]
    assert partial.sum() == 8     # four on the bad row, four at the top edge
    assert np.all(ours["flags"][partial] & PHOTOMETRY_FLAGS["n_pixels_fit_partial"])


def test_isolated_fluxes_match_the_closed_form(psf, isolated):
    x, y, _, (_, data, error, bad) = isolated
    ours = fit_fixed_positions(psf, data, error, bad, x[:1], y[:1], BOX)
    cx, cy = int(np.ceil(x[0] - 0.5)), int(np.ceil(y[0] - 0.5))
    yy, xx = np.mgrid[cy - 7:cy + 8, cx - 7:cx + 8]
    p = psf.evaluate(xx, yy, 1.0, x[0], y[0])
    w = 1.0 / error[yy, xx] ** 2
    assert ours["flux"][0] == pytest.approx(np.sum(w * p * data[yy, xx]) / np.sum(w * p * p),
                                            rel=1e-9)
    assert ours["flux_err"][0] == pytest.approx(1.0 / np.sqrt(np.sum(w * p * p)), rel=1e-9)


def test_blended_pair_is_fitted_jointly(psf):
    x, y = np.array([70.0, 73.2, 110.0]), np.array([80.0, 81.4, 40.0])
    flux = np.array([2500.0, -1800.0, 900.0])
    model, _, error, bad = _image(psf, x, y, flux)
    exact = fit_fixed_positions(psf, model, error, bad, x, y, BOX)
    np.testing.assert_array_equal(exact["group_size"], [2, 2, 1])
    np.testing.assert_allclose(exact["flux"], flux, rtol=1e-6)
    # each fitted alone, the pair's fluxes take in each other's light
    alone = [fit_fixed_positions(psf, model, error, bad, x[i:i + 1], y[i:i + 1], BOX)["flux"][0]
             for i in range(2)]
    assert np.all(np.abs(np.array(alone) - flux[:2]) > 10 * exact["flux_err"][:2])
    # the joint errors are larger than the isolated ones (the pair is degenerate in part)
    isolated_err = fit_fixed_positions(psf, model, error, bad, x[:1], y[:1], BOX)["flux_err"]
    assert exact["flux_err"][0] > 1.03 * isolated_err[0]     # 1.06 here


def test_fitted_one_by_one_as_photutils_fits_without_a_grouper(psf):
    # jointly=False: a blend's sources each on its own footprint, the other's light
    # in its data, as PSFPhotometry (no grouper) fits them; each source's quality
    # columns from its own model.
    x, y = np.array([70.0, 73.2, 110.0, 30.4]), np.array([80.0, 81.4, 40.0, 60.2])
    flux = np.array([2500.0, -1800.0, 900.0, 1500.0])
    _, data, error, bad = _image(psf, x, y, flux, seed=4)     # one on the bad row
    alone = fit_fixed_positions(psf, data, error, bad, x, y, BOX, jointly=False)
    joint = fit_fixed_positions(psf, data, error, bad, x, y, BOX)
    theirs = _photutils(psf, data, error, bad, x, y, flux)
    np.testing.assert_array_equal(alone["group_size"], [1, 1, 1, 1])
    _assert_as_photutils(alone, theirs)
    # the pair's fluxes take in each other's light; the isolated sources are the joint fit's
    assert np.all(np.abs(alone["flux"][:2] - joint["flux"][:2]) > 10 * joint["flux_err"][:2])
    np.testing.assert_allclose(alone["flux"][2:], joint["flux"][2:], rtol=1e-12)


def test_blended_pair_pulls_over_noise_realisations(psf):
    x, y = np.array([70.0, 73.2]), np.array([80.0, 81.4])
    flux = np.array([2500.0, -1800.0])
    model, _, error, bad = _image(psf, x, y, flux)
    rng = np.random.default_rng(7)
    pulls = []
    for _ in range(300):
        data = model + rng.normal(0.0, 1.0, SHAPE) * error
        fit = fit_fixed_positions(psf, data, error, bad, x, y, BOX)
        pulls.append((fit["flux"] - flux) / fit["flux_err"])
    pulls = np.array(pulls)
    assert np.all(np.abs(pulls.mean(axis=0)) < 0.2)       # unbiased (0.06 sigma of the mean)
    assert np.all(np.abs(pulls.std(axis=0) - 1.0) < 0.12)  # errors describe the scatter


def test_differential_photometry_uses_the_joint_fit(psf):
    x, y = np.array([70.0, 73.2, 110.0]), np.array([80.0, 81.4, 40.0])
    flux = np.array([2500.0, -1800.0, 900.0])
    model, _, error, bad = _image(psf, x, y, flux)
    image = CCDData(model, unit="adu", uncertainty=StdDevUncertainty(error), mask=bad,
                    meta={"DIA_P": 2.0, "DIA_PERR": 0.0})
    table = differential_photometry(image, QTable({"x": x, "y": y}), gaussian_psf(3.5),
                                    kernel=[[1.0]], fit_shape=BOX[0])
    np.testing.assert_allclose(table["flux"].value, flux, rtol=1e-6)
    np.testing.assert_allclose(table["flux_ref"].value, flux / 2.0, rtol=1e-6)
    np.testing.assert_allclose(table["reduced_chi2"], 0.0, atol=1e-6)   # noiseless
    assert np.all(table["flags"] == 0)


def test_undetermined_source_is_flagged(psf):
    # two sources at one position: the pair cannot be split
    x, y = np.array([50.0, 50.0]), np.array([50.0, 50.0])
    model, _, error, bad = _image(psf, x, y, [1000.0, 1000.0])
    fit = fit_fixed_positions(psf, model, error, bad, x, y, BOX)
    assert np.all(~np.isfinite(fit["flux"]))
    assert np.all(fit["flags"] & PHOTOMETRY_FLAGS["no_covariance"])


def test_a_chain_is_one_group_and_large_groups_are_solved_sparsely(psf, monkeypatch):
    # five sources 9 px apart in a row: each box overlaps its neighbours' only
    x, y = 40.0 + 9.0 * np.arange(5), np.full(5, 80.0) + 0.3 * np.arange(5)
    flux = np.array([2000.0, -1500.0, 800.0, 3000.0, -600.0])
    model, data, error, bad = _image(psf, x, y, flux, seed=3)
    dense = fit_fixed_positions(psf, data, error, bad, x, y, BOX)
    np.testing.assert_array_equal(dense["group_size"], 5)
    monkeypatch.setattr(_linear, "DENSE_GROUP", 1)
    sparse = fit_fixed_positions(psf, data, error, bad, x, y, BOX)
    np.testing.assert_allclose(sparse["flux"], dense["flux"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sparse["flux_err"], dense["flux_err"], rtol=1e-9)
    exact = fit_fixed_positions(psf, model, error, bad, x, y, BOX)
    np.testing.assert_allclose(exact["flux"], flux, rtol=1e-4)
