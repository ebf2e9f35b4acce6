"""The robust pass's product budget: the direct solver takes over a slow matrix-free pass."""

import logging

import numpy as np
import pytest
import torch

from astro_dia import DifferenceImager
from astro_dia.fitting import _fitting
from astro_dia.fitting.solvers import choose_solver
from astro_dia.exceptions import FitQualityWarning
from astro_dia.fitting.solvers.cg import ProductBudgetExceeded
from astro_dia.simulate import make_image_pair

TAKES_OVER = "the direct solver takes over"
UNCONVERGED = "robust pass before outlier rejection stopped at its step limit"


@pytest.fixture(scope="module")
def pair():
    # 25 x 25 kernel on 240 x 240: solver='auto' picks the matrix-free solver for the
    # 216 x 216 pixels of the valid region
    reference, target, _ = make_image_pair(shape=(240, 240), density=100, seed=21,
                                           scale_factor=0.9, n_cosmic_rays=5)
    assert choose_solver((240, 240), 25, torch.device("cpu"), n_pixels=216 ** 2) == "cg"
    return reference, target


def _fit(pair, **options):
    return DifferenceImager(kernel_size=25, flat=1, sky=0, **options).fit(*pair)


def test_over_budget_robust_pass_is_refitted_by_the_direct_solver(pair, monkeypatch, caplog):
    direct = _fit(pair, solver="direct")
    monkeypatch.setattr(_fitting, "ROBUST_PRODUCT_BUDGET", 3)
    with caplog.at_level(logging.INFO, logger=_fitting.__name__):
        auto = _fit(pair)
    assert TAKES_OVER in caplog.text
    # the same optimum as the direct solver's fit, far inside sigma_P
    assert auto.scale_factor == pytest.approx(direct.scale_factor,
                                              abs=0.01 * direct.scale_factor_error)
    assert auto.n_outliers == direct.n_outliers > 0
    np.testing.assert_array_equal(auto.flags, direct.flags)


def test_budget_is_not_reached_on_a_simulated_pair(pair, caplog):
    with caplog.at_level(logging.INFO, logger=_fitting.__name__):
        _fit(pair)
    assert TAKES_OVER not in caplog.text


def test_an_explicit_solver_is_never_replaced(pair, monkeypatch, caplog):
    monkeypatch.setattr(_fitting, "ROBUST_PRODUCT_BUDGET", 3)
    with caplog.at_level(logging.INFO, logger=_fitting.__name__):
        _fit(pair, solver="cg")
    assert TAKES_OVER not in caplog.text


def test_solve_cg_raises_beyond_its_budget(pair, monkeypatch):
    import astro_dia.core as core
    from astro_dia.fitting.solvers import solve_cg

    captured = {}

    def capture(problem, *args, **kwargs):
        captured["problem"] = problem
        raise RuntimeError("captured")

    monkeypatch.setattr(core, "run_fit", capture)
    with pytest.raises(RuntimeError, match="captured"):
        _fit(pair, solver="cg")
    problem = captured["problem"]
    with pytest.raises(ProductBudgetExceeded, match="exceed the budget of 2"):
        solve_cg(problem, product_budget=2)
    state = solve_cg(problem, product_budget=10_000)
    assert 2 < state.n_products <= 10_000 and state.metric.budget is None


def test_unconverged_robust_pass_is_refitted_by_the_direct_solver(pair, monkeypatch, caplog):
    # one Gauss-Newton step (and one L-BFGS iteration): the matrix-free pass stops short
    monkeypatch.setattr(_fitting, "MAX_ROBUST_STEPS", 1)
    # the direct solver's pass, one step long too, stops short as well: both warn
    with caplog.at_level(logging.INFO, logger=_fitting.__name__), \
            pytest.warns(FitQualityWarning, match=UNCONVERGED):
        auto = _fit(pair)
    assert "maximum number of iterations" in caplog.text and TAKES_OVER in caplog.text
    with pytest.warns(FitQualityWarning, match=UNCONVERGED):
        direct = _fit(pair, solver="direct")
    assert auto.scale_factor == pytest.approx(direct.scale_factor,
                                              abs=0.01 * direct.scale_factor_error)


@pytest.mark.parametrize("solver", ["cg", "direct"])
def test_an_unconverged_robust_pass_is_a_guard_cause_whatever_the_solver(pair, monkeypatch, solver):
    # an explicit solver is kept, so nothing takes over: the pass's own state is judged
    monkeypatch.setattr(_fitting, "MAX_ROBUST_STEPS", 1)
    with pytest.warns(FitQualityWarning, match=UNCONVERGED) as caught:
        result = _fit(pair, solver=solver)
    assert sum("robust pass" in str(w.message) for w in caught) == 1
    assert "ROBUST" in result.quality["causes"]
    assert "ROBUST" in result.difference.header["DIA_QUAL"]


def test_the_robust_pass_converges_within_its_steps_on_a_simulated_pair(pair, monkeypatch):
    states = []
    original = _fitting.solve_robust
    monkeypatch.setattr(_fitting, "solve_robust",
                        lambda *args, **kwargs: states.append(original(*args, **kwargs)) or states[-1])
    result = _fit(pair)      # no warning: the suite turns warnings into errors
    assert states[0].converged and states[0].n_iterations < _fitting.MAX_ROBUST_STEPS
    assert "ROBUST" not in result.quality["causes"]
