"""
`astro_dia.registration.ReferenceStars`: the reference's stars found once.

The transforms found with it must be the very ones found without it (the
reference's half of the work is the same, only not repeated), the
reference's centroids must be fitted once however many images are
registered, and a `ReferenceStars` of another image must be refused.
"""

import numpy as np
import pytest
from skimage.transform import EuclideanTransform, SimilarityTransform

from astro_dia.registration import (ReferenceStars, RegistrationError, find_transform,
                                    register)
from astro_dia.registration import _reference, _register

from .simulated import star_pair


@pytest.fixture(scope="module")
def pairs():
    """A reference and an image of it shifted (and the same image again, with other noise)."""
    image, reference, _ = star_pair(EuclideanTransform(translation=(7.37, -4.62)),
                                    n_stars=320, seed=1)
    again = image.copy()
    again.data = image.data + np.random.default_rng(5).normal(0.0, 5.0, image.shape)
    return reference, [image, again]


@pytest.mark.parametrize("transform", [
    EuclideanTransform(translation=(-3.2, 5.9)),
    SimilarityTransform(scale=1.01, rotation=np.radians(1.5), translation=(3, 4))])
def test_same_transforms_as_without(pairs, transform):
    image, reference, _ = star_pair(transform, n_stars=320, seed=4)
    known = ReferenceStars(reference)
    for image in (image, image):
        alone = find_transform(image, reference, method="stars")
        shared = find_transform(image, reference, method="stars", reference_stars=known)
        assert shared.model == alone.model
        assert shared.n_stars == alone.n_stars
        assert np.array_equal(shared.matrix, alone.matrix)
        assert shared.reference_fwhm == alone.reference_fwhm == known.fwhm


def test_register_with_reference_stars(pairs):
    reference, images = pairs
    known = ReferenceStars(reference)
    alone = register(images[0], reference, resample=False)
    shared = register(images[0], reference, resample=False, reference_stars=known)
    assert np.array_equal(shared.data, alone.data, equal_nan=True)
    assert np.array_equal(shared.mask, alone.mask)
    for key in ("REGSHIFX", "REGSHIFY", "REGFRACX", "REGFRACY", "REGNSTAR", "REGRMS"):
        assert shared.header[key] == alone.header[key]


def test_reference_centroids_fitted_once(pairs, monkeypatch):
    """
    With no seeing to match, the reference's centroids are fitted once.

    (Where the image's seeing is the broader, the reference's cutouts are
    convolved to it for each image and fitted anew; that the transforms
    are still those found without `ReferenceStars` is checked above.)
    """
    monkeypatch.setattr(_register, "MATCH_SIGMA", np.inf)
    reference, images = pairs
    fitted = []
    original = _reference.gaussian_centroids

    def counting(data, mask, x, y, **kwargs):
        fitted.append(len(x))
        return original(data, mask, x, y, **kwargs)

    monkeypatch.setattr(_reference, "gaussian_centroids", counting)
    known = ReferenceStars(reference)
    find_transform(images[0], reference, method="stars", reference_stars=known)
    first = sum(fitted)
    assert first >= 20
    find_transform(images[0], reference, method="stars", reference_stars=known)
    assert sum(fitted) == first        # the same pairs: nothing fitted again


def test_given_fwhm_is_used(pairs):
    reference, images = pairs
    known = ReferenceStars(reference, fwhm=2.5)
    assert known.fwhm == 2.5
    alignment = find_transform(images[0], reference, method="stars", reference_stars=known)
    assert alignment.reference_fwhm == 2.5
    assert alignment.model == "translation"
    assert len(known) >= alignment.n_stars > 20
    assert "ReferenceStars" in repr(known)


def test_another_reference_is_refused(pairs):
    reference, images = pairs
    known = ReferenceStars(reference)
    other = reference.copy()
    other.data = other.data.copy()
    other.data[10, 10] += 1.0
    with pytest.raises(RegistrationError, match="another image"):
        find_transform(images[0], other, reference_stars=known)
    with pytest.raises(RegistrationError, match="another image"):
        register(images[0], reference.data[:-1], reference_stars=known)


@pytest.mark.parametrize("value, error", [("stars", TypeError), (object(), TypeError)])
def test_wrong_type_is_refused(pairs, value, error):
    reference, images = pairs
    with pytest.raises(error, match="ReferenceStars"):
        register(images[0], reference, reference_stars=value)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"fwhm": 0}, ValueError, "fwhm must be a positive number"),
    ({"fwhm": np.nan}, ValueError, "fwhm must be a positive number"),
    ({"fwhm": "wide"}, TypeError, "fwhm must be a number, got 'wide'"),
    ({"threshold": -1}, ValueError, "threshold must be a positive number"),
    ({"threshold": True}, TypeError, "threshold must be a number, got True")])
def test_bad_arguments(pairs, kwargs, error, message):
    with pytest.raises(error, match=message):
        ReferenceStars(pairs[0], **kwargs)
