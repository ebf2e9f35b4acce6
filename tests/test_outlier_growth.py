"""Growing rejected pixels by one pixel, and the cached reference median."""

import numpy as np
import torch
from scipy import ndimage

from astro_dia._outliers import grow, reference_median


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
