"""Growing rejected pixels by one pixel, the medians of the outlier search."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from astro_dia.fitting import _outliers
from astro_dia.fitting._outliers import grow, reference_median, sampled_median, scatter_scale


def test_grow_is_a_binary_dilation_with_the_3x3_square():
    rng = np.random.default_rng(2)
    seeds = rng.random((40, 37)) < 0.02
    seeds[0, 0] = seeds[-1, -1] = seeds[0, -1] = True     # corners and edges
    truth = ndimage.binary_dilation(seeds, structure=np.ones((3, 3), bool))
    grown = grow(torch.as_tensor(seeds))
    np.testing.assert_array_equal(grown.numpy(), truth)
    assert grown.dtype == torch.bool


class _Problem:
    def __init__(self, reference):
        self.reference = torch.as_tensor(reference)[None, None]
        self.valid = (slice(1, -1), slice(1, -1))


def test_reference_median_is_computed_once_per_reference():
    problem = _Problem(np.arange(25.0).reshape(5, 5))
    assert reference_median(problem) == 12.0
    problem.reference[0, 0, 2, 2] = 100.0    # same tensor: the cached value stays
    assert reference_median(problem) == 12.0
    problem.reference = torch.zeros((1, 1, 5, 5))   # a new reference: computed again
    assert reference_median(problem) == 0.0


@pytest.mark.parametrize("noise", [0.7, 1.0, 1.3])
def test_scatter_scale_is_the_robust_scatter_at_least_one(noise):
    rng = np.random.default_rng(5)
    z = torch.as_tensor(np.abs(rng.standard_normal((300, 200)) * noise))
    candidates = torch.as_tensor(rng.random((300, 200)) < 0.9)
    expected = 1.4826 * float(torch.median(z[candidates]))     # the whole frame: exact
    assert scatter_scale(z, candidates) == max(1.0, expected)
    if noise < 1:
        assert scatter_scale(z, candidates) == 1.0


def test_large_frames_take_the_median_of_an_even_subsample(monkeypatch):
    rng = np.random.default_rng(6)
    image = torch.as_tensor(rng.standard_normal((400, 500)) * 3.0 + 10.0)
    where = torch.as_tensor(rng.random((400, 500)) < 0.8)
    exact = float(torch.median(image[where]))
    assert sampled_median(image, where) == exact          # 200 000 values: all of them
    monkeypatch.setattr(_outliers, "MEDIAN_SAMPLE", 20_000)
    sampled = sampled_median(image, where)
    assert sampled != exact
    # the median's own scatter with 16 000 values: 1.25 * 3 / sqrt(16 000) = 0.03
    assert abs(sampled - exact) < 0.1
