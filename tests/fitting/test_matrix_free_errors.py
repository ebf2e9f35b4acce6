"""Matrix-free sigma_P and background errors against the dense Fisher information."""

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import astro_dia.result._assemble as assemble
from astro_dia import DifferenceImager
from astro_dia.fitting._matrix_free_errors import RTOL, dense_is_cheap, use_matrix_free
from astro_dia.simulate import make_image_pair


def _fit_both(reference, target, **settings):
    """The same fit with dense errors, then with the default (matrix-free) route."""
    dense = DifferenceImager(compute_errors="covariance", **settings).fit(reference, target)
    fast = DifferenceImager(compute_errors=True, **settings).fit(reference, target)
    return dense, fast


@pytest.mark.parametrize("settings", [
    dict(background_degree=0),
    dict(background_degree=1),
    dict(background_degree=0, loss="huber", clip=None),
    dict(background_degree=0, noise_model="uniform", flat=None, sky=None),
    dict(background_degree=0, regularization=1.0),
])
def test_matches_dense_fisher(settings):
    reference, target, truth = make_image_pair(shape=(96, 96), seed=3)
    settings = {"flat": 1, "sky": 0, **settings}
    settings = {key: value for key, value in settings.items() if value is not None}
    dense, fast = _fit_both(reference, target, kernel_size=9, **settings)
    # On a small frame the dense covariance waits until it is read.
    assert "_pending_covariance" in fast.__dict__
    assert fast.covariance_valid is True
    assert fast.scale_factor == dense.scale_factor
    # Second-order estimates c^T x + x^T r, of the order of RTOL**2 (2.5e-3):
    # far inside the 1% errors are quoted to.
    np.testing.assert_allclose(fast.scale_factor_error, dense.scale_factor_error,
                               rtol=RTOL ** 2)
    np.testing.assert_allclose(fast.background_error.value, dense.background_error.value,
                               rtol=RTOL ** 2)
    assert fast.background_error.unit == dense.background_error.unit
    # The figures are errors of this fit, not of some other scale.
    assert 0 < fast.scale_factor_error < 0.05
    assert fast.difference.meta["DIA_PERR"] == pytest.approx(fast.scale_factor_error)
    # Read, the deferred covariance is the dense one.
    np.testing.assert_allclose(fast.kernel_error, dense.kernel_error, rtol=1e-9)
    np.testing.assert_allclose(fast.covariance, dense.covariance, rtol=1e-9,
                               atol=1e-12 * np.abs(dense.covariance).max())
    assert "_pending_covariance" not in fast.__dict__


def test_deferred_covariance_survives_pickling_and_explicit_values():
    reference, target, _ = make_image_pair(shape=(64, 64), seed=8)
    result = DifferenceImager(7, flat=1, sky=0).fit(reference, target)
    assert "_pending_covariance" in result.__dict__
    copy = pickle.loads(pickle.dumps(result))
    assert copy.kernel_error.shape == (7, 7) and np.all(copy.kernel_error > 0)
    np.testing.assert_array_equal(copy.covariance, result.covariance)
    # A value set explicitly is kept, and a read does not recompute it.
    other = DifferenceImager(7, flat=1, sky=0).fit(reference, target)
    other.covariance = None
    assert other.covariance is None and other.kernel_error is None


@pytest.mark.parametrize("clip", [None, 5.0])
def test_direct_solver_factor_preconditions_the_error_solves(monkeypatch, clip):
    """
    The direct solver's normal matrix is nearly F: a solve takes a few products.

    With ``clip=None`` the errors are preconditioned by the direct fit's own
    factor; with clipping by the robust pass's, which also preconditioned
    the fit proper.
    """
    from astro_dia.solvers.cg import ConjugateGradientMetric
    counted = {"in_errors": False, "products": 0}
    apply = ConjugateGradientMetric.apply
    errors = assemble.matrix_free_errors

    def counting_apply(self, vector):
        counted["products"] += counted["in_errors"]
        return apply(self, vector)

    def counting_errors(*args, **kwargs):
        counted["in_errors"] = True
        try:
            return errors(*args, **kwargs)
        finally:
            counted["in_errors"] = False

    monkeypatch.setattr(ConjugateGradientMetric, "apply", counting_apply)
    monkeypatch.setattr(assemble, "matrix_free_errors", counting_errors)
    reference, target, _ = make_image_pair(shape=(96, 96), seed=3)
    result = DifferenceImager(9, flat=1, sky=0, solver="direct", clip=clip).fit(reference,
                                                                                 target)
    assert result.scale_factor_error > 0
    n_solves = 2    # P and B0
    # Per solve: the start's residual, at most two iterations and the final check.
    assert 0 < counted["products"] <= n_solves * 4


@pytest.mark.slow
def test_default_on_a_large_frame_is_matrix_free():
    """400 x 400 with a 19 x 19 kernel is the matrix-free solver's size: no covariance."""
    reference, target, _ = make_image_pair(shape=(400, 400), seed=4, density=60)
    fast = DifferenceImager(19, flat=1, sky=0, clip=None).fit(reference, target)
    dense = DifferenceImager(19, flat=1, sky=0, clip=None,
                             compute_errors="covariance").fit(reference, target)
    assert fast.solver == "cg" and fast.covariance is None and dense.covariance is not None
    np.testing.assert_allclose(fast.scale_factor_error, dense.scale_factor_error,
                               rtol=RTOL ** 2)
    np.testing.assert_allclose(fast.background_error.value, dense.background_error.value,
                               rtol=RTOL ** 2)
    assert fast.scale_factor_error_at(10.0, 20.0) == pytest.approx(fast.scale_factor_error)


def test_failed_solve_falls_back_to_dense(monkeypatch):
    reference, target, _ = make_image_pair(shape=(96, 96), seed=5)
    monkeypatch.setattr(assemble, "use_matrix_free", lambda problem, mode: True)
    monkeypatch.setattr(assemble, "matrix_free_errors",
                        lambda *args, **kwargs: (1.0, np.array([1.0]), False, None))
    result = DifferenceImager(9, flat=1, sky=0).fit(reference, target)
    assert result.covariance is not None and result.kernel_error is not None
    assert result.scale_factor_error < 1.0


def _problem(shape, kernel_size=19, kernel_basis=None, n_data=None):
    n_data = shape[0] * shape[1] if n_data is None else n_data
    return SimpleNamespace(shape=shape, kernel_size=kernel_size, kernel_basis=kernel_basis,
                           device=torch.device("cpu"), n_data=n_data)


def test_rule():
    assert use_matrix_free(_problem((2000, 2000)), True)
    assert not use_matrix_free(_problem((2000, 2000)), "covariance")
    assert use_matrix_free(_problem((142, 142)), True)
    assert not use_matrix_free(_problem((2000, 2000), kernel_basis=object()), True)
    assert not use_matrix_free(_problem((142, 142)), False)
    # The dense covariance is offered (on first read) where the direct solver is chosen.
    assert dense_is_cheap(_problem((142, 142)))
    # a fit on few pixels of a large frame (the stars' region) is cheap too
    assert dense_is_cheap(_problem((2000, 2000), n_data=20000))
    assert not dense_is_cheap(_problem((2000, 2000)))


def test_compute_errors_must_be_a_known_value():
    with pytest.raises(ValueError, match="compute_errors must be True, False or 'covariance'"):
        DifferenceImager(9, compute_errors="fast")
    assert DifferenceImager(9, compute_errors="covariance").compute_errors == "covariance"
    assert DifferenceImager(9, compute_errors=0).compute_errors is False
