"""Solver objects (`astro_dia.solvers.settings`): names and objects agree, bad mixes raise."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from astro_dia import DifferenceImager
from astro_dia.solvers import (AutoSolver, ConjugateGradientSolver, DirectSolver,
                               IterativeSolver, Solver, get_solver)

SETTINGS = dict(flat=1, sky=0, compute_errors=False, dtype="float64")


@pytest.fixture(scope="module")
def pair():
    from astro_dia.simulate import make_image_pair
    reference, target, _ = make_image_pair(shape=(48, 48), density=80, seed=3)
    return reference, target


@pytest.mark.parametrize("name, solver, shortcuts", [
    ("auto", AutoSolver(max_iter=300), dict(max_iter=300)),
    ("direct", DirectSolver(max_iter=300, max_memory="1GB"),
     dict(max_iter=300, max_memory="1GB")),
    ("cg", ConjugateGradientSolver(max_iter=300), dict(max_iter=300)),
    ("iterative", IterativeSolver(max_iter=300, preconditioner="normal"),
     dict(max_iter=300, preconditioner="normal")),
])
def test_name_and_object_give_identical_results(pair, name, solver, shortcuts):
    by_name = DifferenceImager(7, solver=name, **shortcuts, **SETTINGS).fit(*pair)
    by_object = DifferenceImager(7, solver=solver, **SETTINGS).fit(*pair)
    assert by_object.solver == by_name.solver
    assert by_object.n_iterations == by_name.n_iterations
    assert_array_equal(by_object.kernel, by_name.kernel)
    assert_array_equal(by_object.difference.data, by_name.difference.data)


def test_imager_shows_the_object_settings():
    imager = DifferenceImager(7, solver=IterativeSolver(max_iter=50, max_adam_iter=5))
    assert imager.solver == "iterative"
    assert (imager.max_iter, imager.max_adam_iter) == (50, 5)
    assert "solver='iterative'" in repr(imager)
    assert DifferenceImager(7).solver_settings.max_iter == 2000


def test_shortcuts_set_the_named_solver():
    imager = DifferenceImager(7, solver="direct", max_iter=40, max_memory="2GB")
    assert isinstance(imager.solver_settings, DirectSolver)
    assert (imager.max_iter, imager.max_memory) == (40, 2_000_000_000)


@pytest.mark.parametrize("shortcut", [dict(max_iter=10), dict(max_memory="1GB"),
                                      dict(preconditioner="diagonal"), dict(adam_tol=1e-3),
                                      dict(max_adam_iter=3), dict(kernel_init="delta")])
def test_object_with_a_shortcut_raises(shortcut):
    with pytest.raises(ValueError, match="given together with a DirectSolver instance"):
        DifferenceImager(7, solver=DirectSolver(), **shortcut)


@pytest.mark.parametrize("solver", ["newton", 3, None, DirectSolver])
def test_bad_solver_raises(solver):
    with pytest.raises(ValueError, match="solver must be one of .*; a Solver instance"):
        DifferenceImager(7, solver=solver)


@pytest.mark.parametrize("make, match", [
    (lambda: DirectSolver(max_iter=0), "max_iter must be at least 1"),
    (lambda: ConjugateGradientSolver(max_iter=-1), "max_iter must be a non-negative"),
    (lambda: IterativeSolver(max_adam_iter=1.5), "max_adam_iter must be a non-negative"),
    (lambda: IterativeSolver(preconditioner="full"), "preconditioner must be 'normal'"),
    (lambda: IterativeSolver(kernel_init="box"), "kernel_init must be 'flat'"),
    (lambda: DirectSolver(max_memory=-5), "max_memory must be positive"),
])
def test_bad_settings_raise_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_kernel_init_array_must_match_the_kernel_size():
    solver = IterativeSolver(preconditioner="diagonal", kernel_init=np.full((5, 5), 0.04))
    with pytest.raises(ValueError, match=r"shape \(7, 7\)"):
        DifferenceImager(7, solver=solver)


def test_settings_a_solver_does_not_take_are_rejected():
    with pytest.raises(TypeError):
        DirectSolver(max_adam_iter=3)
    with pytest.raises(TypeError):
        ConjugateGradientSolver(max_memory="1GB")


def test_repr():
    assert repr(DirectSolver(max_memory=1000)) == "DirectSolver(max_iter=2000, max_memory=1000)"
    assert repr(ConjugateGradientSolver()) == "ConjugateGradientSolver(max_iter=2000)"
    assert repr(IterativeSolver(adam_tol=1e-3)) == (
        "IterativeSolver(max_iter=2000, max_adam_iter=0, adam_tol=0.001, "
        "preconditioner='normal', kernel_init='flat')")
    assert repr(get_solver("auto")).startswith("AutoSolver(max_iter=2000")
    assert isinstance(get_solver("cg"), Solver)
