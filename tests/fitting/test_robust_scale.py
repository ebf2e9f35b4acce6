"""The robust pass of the 'uniform' noise model: its Huber loss on the data's own scale."""

import numpy as np
import pytest
from astropy.nddata import CCDData

from astro_dia import DifferenceImager
from astro_dia.fitting import _fitting
from astro_dia.simulate import make_image_pair

SIGMA = 7.0     # the target's noise, adu: the same for every pixel


@pytest.fixture(scope="module")
def uniform_pair():
    reference, target, _ = make_image_pair(shape=(96, 96), density=100, seed=5, noise=False,
                                           n_cosmic_rays=0)
    noise = np.random.default_rng(6).normal(0.0, SIGMA, target.shape)
    target = CCDData(target.data + noise, unit=target.unit, meta=target.meta)
    reference = CCDData(reference.data, unit=reference.unit, meta=reference.meta)
    return reference, target


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_the_robust_pass_takes_its_variance_from_the_linear_start(uniform_pair, monkeypatch,
                                                                  solver):
    twins, states = [], []
    make_twin, run_pass = _fitting.robust_twin, _fitting.solve_robust
    monkeypatch.setattr(_fitting, "robust_twin",
                        lambda problem: twins.append(make_twin(problem)) or twins[-1])
    monkeypatch.setattr(_fitting, "solve_robust",
                        lambda *args, **kwargs: states.append(run_pass(*args, **kwargs)) or states[-1])
    DifferenceImager(kernel_size=9, noise_model="uniform", solver=solver).fit(*uniform_pair)
    (twin,), (state,) = twins, states
    # the MAD of the start's residuals: the noise, where the placeholder was 1 adu**2
    assert float(twin.constant.median()) == pytest.approx(SIGMA ** 2, rel=0.1)
    assert state.converged
