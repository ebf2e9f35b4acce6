"""Matrix-free sigma_P and background errors against the dense Fisher information."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import astro_dia._assemble as assemble
from astro_dia import DifferenceImager
from astro_dia._matrix_free_errors import use_matrix_free
from astro_dia.simulate import make_image_pair


def _fit_both(monkeypatch, reference, target, **settings):
    """The same fit with dense errors, then with the matrix-free route forced."""
    dense = DifferenceImager(compute_errors="covariance", **settings).fit(reference, target)
    monkeypatch.setattr(assemble, "use_matrix_free", lambda problem, mode: mode is True)
    fast = DifferenceImager(compute_errors=True, **settings).fit(reference, target)
    return dense, fast


@pytest.mark.parametrize("settings", [
    dict(background_degree=0),
    dict(background_degree=1),
    dict(background_degree=0, loss="huber", clip=None),
    dict(background_degree=0, noise_model="uniform", flat=None, sky=None),
    dict(background_degree=0, regularization=1.0),
])
def test_matches_dense_fisher(monkeypatch, settings):
    reference, target, truth = make_image_pair(shape=(96, 96), seed=3)
    settings = {"flat": 1, "sky": 0, **settings}
    settings = {key: value for key, value in settings.items() if value is not None}
    dense, fast = _fit_both(monkeypatch, reference, target, kernel_size=9, **settings)
    assert dense.covariance is not None and fast.covariance is None
    assert fast.kernel_error is None and fast.covariance_valid is True
    assert fast.scale_factor == dense.scale_factor
    np.testing.assert_allclose(fast.scale_factor_error, dense.scale_factor_error, rtol=0.01)
    np.testing.assert_allclose(fast.background_error.value, dense.background_error.value,
                               rtol=0.01)
    assert fast.background_error.unit == dense.background_error.unit
    # The figures are errors of this fit, not of some other scale.
    assert 0 < fast.scale_factor_error < 0.05
    assert fast.difference.meta["DIA_PERR"] == pytest.approx(fast.scale_factor_error)


@pytest.mark.slow
def test_default_on_a_large_frame_is_matrix_free():
    """400 x 400 with a 19 x 19 kernel is the matrix-free solver's size: no covariance."""
    reference, target, _ = make_image_pair(shape=(400, 400), seed=4, density=60)
    fast = DifferenceImager(19, flat=1, sky=0, clip=None).fit(reference, target)
    dense = DifferenceImager(19, flat=1, sky=0, clip=None,
                             compute_errors="covariance").fit(reference, target)
    assert fast.solver == "cg" and fast.covariance is None and dense.covariance is not None
    np.testing.assert_allclose(fast.scale_factor_error, dense.scale_factor_error, rtol=0.01)
    np.testing.assert_allclose(fast.background_error.value, dense.background_error.value,
                               rtol=0.01)
    assert fast.scale_factor_error_at(10.0, 20.0) == pytest.approx(fast.scale_factor_error)


def test_failed_solve_falls_back_to_dense(monkeypatch):
    reference, target, _ = make_image_pair(shape=(96, 96), seed=5)
    monkeypatch.setattr(assemble, "use_matrix_free", lambda problem, mode: True)
    monkeypatch.setattr(assemble, "matrix_free_errors",
                        lambda *args, **kwargs: (1.0, np.array([1.0]), False))
    result = DifferenceImager(9, flat=1, sky=0).fit(reference, target)
    assert result.covariance is not None and result.kernel_error is not None
    assert result.scale_factor_error < 1.0


def _problem(shape, kernel_size=19, kernel_basis=None):
    return SimpleNamespace(shape=shape, kernel_size=kernel_size, kernel_basis=kernel_basis,
                           device=torch.device("cpu"))


def test_rule():
    assert use_matrix_free(_problem((2000, 2000)), True)
    assert not use_matrix_free(_problem((2000, 2000)), "covariance")
    assert not use_matrix_free(_problem((142, 142)), True)
    assert not use_matrix_free(_problem((2000, 2000), kernel_basis=object()), True)


def test_compute_errors_must_be_a_known_value():
    with pytest.raises(ValueError, match="compute_errors must be True, False or 'covariance'"):
        DifferenceImager(9, compute_errors="fast")
    assert DifferenceImager(9, compute_errors="covariance").compute_errors == "covariance"
    assert DifferenceImager(9, compute_errors=0).compute_errors is False
