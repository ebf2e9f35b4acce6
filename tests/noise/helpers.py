"""Small images and arrays shared by the tests of the noise models, detector and flat."""

import numpy as np
from astropy.nddata import CCDData

SHAPE = (12, 10)


def image(unit="adu", meta=None, data=None, **kwargs):
    """A small flat-valued CCDData with the given meta."""
    if data is None:
        data = np.full(SHAPE, 100.0)
    return CCDData(np.asarray(data, dtype=float), unit=unit,
                   meta={} if meta is None else meta, **kwargs)


def random_model(seed=0, shape=SHAPE, low=-20.0, high=5000.0):
    return np.random.default_rng(seed).uniform(low, high, shape)


def random_flat(seed=1, shape=SHAPE):
    """A positive flat with mean far from one (so normalisation matters)."""
    return np.random.default_rng(seed).uniform(2.0, 4.0, shape)
