"""What a fit does for a GPU, checked on the CPU: no per-iteration reads, TF32, memory, device."""

import pickle

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

import astro_dia.core
from astro_dia import DifferenceImager
from astro_dia.fitting._problem import FitProblem
from astro_dia.background import background_basis
from astro_dia.exceptions import DIAError
from astro_dia.losses import GaussianLoss
from astro_dia.noise import make_noise_model
from astro_dia.simulate import make_image_pair
from astro_dia.solvers import cg
from astro_dia.solvers.cg import ConjugateGradientMetric


@pytest.fixture(scope="module")
def pair():
    return make_image_pair(shape=(64, 64), seed=5, density=60)


def _problem(pair):
    reference, target, _ = pair
    size, h = 7, 3
    shape = target.shape
    valid = (slice(h, shape[0] - h), slice(h, shape[1] - h))
    terms = make_noise_model("ccd", flat=1, sky=0).variance_terms(target)
    return FitProblem(reference.data, target.data,
                      np.ones((shape[0] - 2 * h, shape[1] - 2 * h), bool),
                      background_basis(shape, 0, region=valid), terms.cropped(valid), size,
                      GaussianLoss(), 0.0, None, device=torch.device("cpu"),
                      dtype=torch.float64)


def test_cg_checks_every_iteration_on_the_cpu():
    assert cg.check_interval(torch.device("cpu")) == 1
    assert cg.check_interval(torch.device("cuda")) == cg.CHECK_EVERY_ON_GPU > 1


def test_cg_with_sparse_checks_reaches_the_same_solution(pair, monkeypatch):
    problem = _problem(pair)
    weights = problem.weights(problem.target)
    rhs = torch.cat([c.reshape(-1) for c in problem.transpose(weights * problem.target)])
    rhs = rhs.to(torch.float64)

    def solve(every):
        monkeypatch.setattr(cg, "check_interval", lambda device: every)
        metric = ConjugateGradientMetric(problem, weights, rtol=1e-6)
        products = metric.n_products
        x = metric.solve(rhs)
        residual = rhs - metric.apply(x)
        return x, metric.n_products - products - 1, float(residual.norm() / rhs.norm())

    x1, n1, r1 = solve(1)
    x5, n5, r5 = solve(5)
    assert n1 > 5                       # a solve that needs several iterations
    assert n1 <= n5 <= n1 + 4           # at most a check interval of extra products
    assert r5 <= 1.5 * r1 + 1e-12       # iterations past the stop do not spoil it
    assert_allclose(x5.numpy(), x1.numpy(), rtol=0, atol=1e-4 * float(x1.abs().max()))


def test_fit_pins_full_float32_and_restores_the_callers_settings(pair, monkeypatch):
    seen = {}
    run_fit = astro_dia.core.run_fit

    def spy(*args, **kwargs):
        seen["matmul"] = torch.get_float32_matmul_precision()
        seen["cudnn"] = torch.backends.cudnn.allow_tf32
        return run_fit(*args, **kwargs)

    monkeypatch.setattr(astro_dia.core, "run_fit", spy)
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    try:
        DifferenceImager(7, flat=1, sky=0, compute_errors=False).fit(*pair[:2])
        assert seen == {"matmul": "highest", "cudnn": False}
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"),
    MemoryError("Unable to allocate 3.0 GiB for an array"),
])
def test_out_of_memory_is_a_clear_error(pair, monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(astro_dia.core, "run_fit", fail)
    with pytest.raises(DIAError, match=r"64 x 64 frame with a 7 x 7 kernel ran out of "
                                       r"memory on 'cpu'; use solver='cg'") as info:
        DifferenceImager(7, flat=1, sky=0).fit(*pair[:2])
    assert info.value.__cause__ is error


def test_other_runtime_errors_pass_through(pair, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(astro_dia.core, "run_fit", fail)
    with pytest.raises(RuntimeError, match="something else"):
        DifferenceImager(7, flat=1, sky=0).fit(*pair[:2])


def test_auto_device_is_chosen_where_the_imager_is_unpickled(monkeypatch):
    auto = DifferenceImager(7, flat=1, sky=0)
    cpu = DifferenceImager(7, flat=1, sky=0, device="cpu")
    assert auto.device == cpu.device == "cpu"
    payload_auto, payload_cpu = pickle.dumps(auto), pickle.dumps(cpu)
    # a dask worker with a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pickle.loads(payload_auto).device == "cuda"
    assert pickle.loads(payload_cpu).device == "cpu"      # an explicit choice is kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pickle.loads(payload_auto).device == "cpu"
