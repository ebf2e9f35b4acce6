"""Preparation of a pair for the fit (private; functional core of `DifferenceImager.fit`).

Owns everything between the user's two images and the fit problem: reading
and checking the pair (`as_image`, `check_pair`), the saturation level of
each image and the pixels at or above it, the noise model's variance terms
for the target, the reference variance of ``reference_noise=True``, the
valid region where the convolution is defined, the fit mask (target masks,
footprints of bad reference pixels, ``exclude``), the per-flag pixel masks
of the output, and the checks that enough pixels are left to fit.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy import units as u

from ._header import SATURATION_KEYWORDS, header_float, keyword_list
from ._saturation import warn_if_saturated
from ._validation import as_image, check_exclude, check_pair, footprint_touches
from .background import polynomial_terms
from .exceptions import DIAError
from .kernels import check_kernel_size
from .noise import uncertainty_variance

__all__ = []


@dataclass
class FitInputs:
    """A prepared pair: the images, their masks and variance terms, the regions."""

    target_image: Any
    reference_image: Any
    terms: Any                  # the noise model's VarianceTerms for the target
    reference_variance: Any     # (M, N) ndarray or None
    reference_bad: np.ndarray   # (M, N) bool: reference pixels not to convolve
    target_bad: np.ndarray      # (M, N) bool: target pixels not to fit
    valid: tuple                # slices of the region where R (x) K is defined
    model_undefined: np.ndarray  # valid-region bool: kernel footprint on a bad pixel
    fit_mask: np.ndarray        # valid-region bool: pixels in the fit
    saturation_levels: dict     # image name -> (level or None, source)
    pixel_masks: dict           # flag name -> (M, N) bool or None, for flag_image


def saturation_level(saturation, image, unit, name):
    """
    Saturation level of one image in ``unit`` (its data's unit) and its source.

    ``saturation`` is the imager's setting (a Quantity, a float in ``unit``
    or None to read the first of the header's SATURATE, SATLEVEL, SATURATN,
    SATURATA or MAXLIN).
    """
    if saturation is not None:
        if isinstance(saturation, u.Quantity):
            if not saturation.unit.is_equivalent(unit):
                raise u.UnitsError(
                    f"saturation is in {saturation.unit}, which cannot be converted "
                    f"to the data unit {unit}")
            return float(saturation.to_value(unit)), "argument"
        return float(saturation), "argument"
    keyword, value = header_float(image.meta, SATURATION_KEYWORDS,
                                  f"{name} saturation level")
    if keyword is None:
        return None, f"none (no {keyword_list(SATURATION_KEYWORDS)} keyword)"
    if value <= 0:
        raise ValueError(f"header keyword {keyword} of the {name} should give a positive "
                         f"saturation level, got {value!r}")
    source_unit = image.source.unit
    factor = source_unit.to(unit) if source_unit is not None else 1.0
    return value * factor, f"header {keyword}"


def reference_variance(noise_model, reference_image):
    """The reference's variance: its uncertainty, else the noise model at its data."""
    if reference_image.uncertainty is not None:
        return uncertainty_variance(reference_image.source, name="reference") * (
            reference_image.source.unit.to(reference_image.unit) ** 2
            if reference_image.source.unit is not None else 1.0)
    terms = noise_model.variance_terms(reference_image.source, mask=reference_image.bad)
    if terms.estimate_scale:
        raise ValueError(
            "reference_noise=True needs the reference's variance: give the reference an "
            "uncertainty, or use a noise model with detector settings ('ccd', 'emccd')")
    variance = terms.variance(np.where(reference_image.bad, 0.0, reference_image.data))
    if terms.bad is not None:
        variance = np.where(terms.bad, np.nan, variance)
    return variance


def check_enough_pixels(fit_mask, kernel_size, kernel_degree, background_degree,
                        reference_image=None):
    """Raise `DIAError` if too few pixels are left to fit (or the reference is constant)."""
    n_unknowns = (kernel_size ** 2 * len(polynomial_terms(kernel_degree))
                  + len(polynomial_terms(background_degree)))
    n_data = int(fit_mask.sum())
    if n_data == 0:
        raise DIAError(
            "no pixel is left to fit: every pixel of the valid region is masked in the "
            "target or lies within half a kernel of a masked reference pixel")
    if n_data < 2 * n_unknowns:
        raise DIAError(
            f"only {n_data} usable pixels for {n_unknowns} unknowns; use a smaller "
            "kernel_size, a lower background_degree or kernel_degree, or larger images")
    if reference_image is None:
        return
    reference = reference_image.data[~reference_image.bad]
    if np.ptp(reference) == 0:
        raise DIAError("the reference is constant, so no kernel shape can be fitted; "
                       "check that the right frame was given as the reference")


def prepare_inputs(reference, target, *, kernel_size, noise_model, saturation=None,
                   reference_noise=False, kernel_degree=0, background_degree=0,
                   exclude=None):
    """
    Check and prepare a pair for the fit; neither input is modified.

    Returns
    -------
    inputs : `FitInputs`
    """
    target_image = as_image(target, "target")
    reference_image = check_pair(as_image(reference, "reference"), target_image)
    check_kernel_size(kernel_size, target_image.data.shape)
    saturation_levels, saturated = {}, {}
    masked = target_image.bad.copy()
    for name, image in (("reference", reference_image), ("target", target_image)):
        level, source = saturation_level(saturation, image, target_image.unit, name)
        saturation_levels[name] = (level, source)
        saturated[name] = np.zeros(image.bad.shape, bool)
        if level is None:
            warn_if_saturated(image, name, target_image.unit)
        else:
            saturated[name] = np.nan_to_num(image.data, nan=-np.inf) >= level
            # a new array: the Image's mask is our own copy, never the input's
            image.bad = image.bad | saturated[name]

    terms = noise_model.variance_terms(target_image.source, mask=target_image.bad)
    variance = reference_variance(noise_model, reference_image) if reference_noise else None
    reference_bad = reference_image.bad.copy()
    if variance is not None:
        reference_bad |= ~np.isfinite(variance)
    target_bad = target_image.bad | (terms.bad if terms.bad is not None else False)

    shape = target_image.data.shape
    h = kernel_size // 2
    valid = (slice(h, shape[0] - h), slice(h, shape[1] - h))
    model_undefined = footprint_touches(reference_bad, kernel_size)
    fit_mask = ~(target_bad[valid] | model_undefined)
    excluded = None
    if exclude is not None:
        excluded = check_exclude(exclude, shape)
        fit_mask &= ~excluded[valid]
    check_enough_pixels(fit_mask, kernel_size, kernel_degree, background_degree,
                        reference_image)
    saturated_footprint = np.zeros(shape, bool)
    saturated_footprint[valid] = footprint_touches(saturated["reference"], kernel_size)
    pixel_masks = dict(masked=masked, saturated=saturated["target"] | saturated_footprint,
                       bad_noise=terms.bad, excluded=excluded)
    return FitInputs(target_image=target_image, reference_image=reference_image, terms=terms,
                     reference_variance=variance, reference_bad=reference_bad,
                     target_bad=target_bad, valid=valid, model_undefined=model_undefined,
                     fit_mask=fit_mask, saturation_levels=saturation_levels,
                     pixel_masks=pixel_masks)
