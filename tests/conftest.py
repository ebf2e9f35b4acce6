"""Shared fixtures: synthetic image pairs and device parametrisation."""

import numpy as np
import pytest
import torch
from astropy.wcs import WCS

from astro_dia.simulate import make_bias_test, make_image_pair

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.fixture
def ccd_pair():
    """Factory of simulated reference/target pairs (small, seeded, fast)."""

    def make(**kwargs):
        kwargs.setdefault("shape", (64, 64))
        kwargs.setdefault("seed", 0)
        return make_image_pair(**kwargs)

    return make


@pytest.fixture
def bias_pair():
    """Factory of the noiseless section 3.4 pairs."""

    def make(kind, **kwargs):
        kwargs.setdefault("seed", 1)
        return make_bias_test(kind, **kwargs)

    return make


def snapshot(image):
    """Copies of everything an NDData carries, to prove it was not modified."""
    return dict(
        data=np.array(image.data, copy=True),
        mask=None if image.mask is None else np.array(image.mask, copy=True),
        uncertainty=None if image.uncertainty is None else np.array(image.uncertainty.array,
                                                                    copy=True),
        meta=dict(image.meta),
        unit=image.unit,
    )


def assert_unchanged(image, before):
    np.testing.assert_array_equal(image.data, before["data"])
    if before["mask"] is None:
        assert image.mask is None
    else:
        np.testing.assert_array_equal(image.mask, before["mask"])
    if before["uncertainty"] is None:
        assert image.uncertainty is None
    else:
        np.testing.assert_array_equal(image.uncertainty.array, before["uncertainty"])
    assert dict(image.meta) == before["meta"]
    assert image.unit == before["unit"]


def simple_wcs(crpix=(32.0, 32.0)):
    """A small celestial TAN WCS with its reference pixel at ``crpix`` (FITS, 1-based)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = list(crpix)
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    return wcs
