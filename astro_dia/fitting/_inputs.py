"""Preparation of a pair for the fit (private; functional core of `DifferenceImager.fit`).

Owns everything between the user's two images and the fit problem: reading
and checking the pair (`as_image`, `check_pair`), the saturation level of
each image and the pixels at or above it, the noise model's variance terms
for the target, the reference variance of ``reference_noise=True``, the
valid region where the convolution is defined, the fit mask (target masks,
footprints of bad reference pixels, ``exclude``), the per-flag pixel masks
of the output, and the checks that enough pixels are left to fit.
"""

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy import units as u
from astropy.stats import mad_std

from ..noise._header import SATURATION_KEYWORDS, header_float, keyword_list
from ..noise._saturation import warn_if_saturated
from ._validation import as_image, check_exclude, check_pair, footprint_touches
from ..background import polynomial_terms
from ..exceptions import DIAError, NoiseModelWarning
from ..kernels import check_kernel_size
from ..noise import uncertainty_variance

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
    # (variance, source) of the reference for the predicted bias of P, or None
    reference_variance_check: Any = None


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


#: Most pixels (in evenly spaced rows) from which the reference's pixel
#: noise and its variance at the sky are measured: the medians' own
#: scatter is then below 0.5%, and the default fit at 1000 x 1000 pays a
#: few milliseconds for them.
NOISE_SAMPLE_PIXELS = 2 ** 16


def sample_rows(shape):
    """Evenly spaced rows holding at most `NOISE_SAMPLE_PIXELS` pixels."""
    return slice(None, None, max(1, -(-shape[0] * shape[1] // NOISE_SAMPLE_PIXELS)))

#: The uncertainty's (or noise model's) sky variance is scaled down to the
#: measured pixel noise when it exceeds it by more than this factor.
VARIANCE_AGREEMENT = 2.0


def measured_pixel_variance(reference_image):
    """
    The reference's pixel noise: robust variance of neighbour differences over 2.

    From evenly spaced rows (`sample_rows`); stars and bad pixels barely
    move the median absolute deviation. White noise only: a resampled
    reference's correlated noise is underestimated.
    """
    data, bad = reference_image.data, reference_image.bad
    rows = sample_rows(data.shape)
    differences = np.diff(data[rows], axis=1)
    usable = ~(bad[rows][:, 1:] | bad[rows][:, :-1]) & np.isfinite(differences)
    if not usable.any():
        return 0.0
    return float(mad_std(differences[usable])) ** 2 / 2.0


def reference_variance_estimate(noise_model, reference_image):
    """
    The reference's variance for the predicted bias of P without ``reference_noise``.

    Its uncertainty, else the noise model applied to the reference and its
    header; scaled down to the measured pixel noise
    (`measured_pixel_variance`) where its variance at the sky (the pixels
    below the median) exceeds that by more than `VARIANCE_AGREEMENT` (a
    stack whose header describes one exposure, an inconsistent
    uncertainty); the measured pixel noise, the same everywhere, when
    neither is available (without the stars' photon noise). Never above
    what the data show: the warning it feeds must not send a stacked
    reference to ``reference_noise=True``. (The measured noise itself is
    overestimated in a crowded field, where star gradients enter the
    differences, hence only an upper bound.)

    Returns
    -------
    variance : (M, N) ndarray
        Zero at bad pixels.
    source : str
        'uncertainty', 'noise model' or 'measured pixel noise', with
        ' (scaled to the measured pixel noise)' when scaled.
    """
    bad = reference_image.bad
    measured = measured_pixel_variance(reference_image)
    try:
        variance = reference_variance(noise_model, reference_image)
        source = "uncertainty" if reference_image.uncertainty is not None else "noise model"
    except (ValueError, u.UnitsError):
        variance, source = np.full(bad.shape, measured), "measured pixel noise"
    usable = ~bad & np.isfinite(variance)
    if source != "measured pixel noise":
        level = sky_variance(variance, reference_image)
        if level > VARIANCE_AGREEMENT * measured:
            variance = variance * (measured / level)
            source += " (scaled to the measured pixel noise)"
    variance[~usable] = 0.0         # our own array: the reference's is never touched
    return variance, source


def sky_variance(variance, reference_image):
    """
    The median of ``variance`` over the reference's sky (usable pixels below the median).

    From evenly spaced rows (`sample_rows`).
    """
    rows = sample_rows(reference_image.data.shape)
    data, variance = reference_image.data[rows], variance[rows]
    usable = ~reference_image.bad[rows] & np.isfinite(variance)
    if not usable.any():
        return 0.0
    sky = usable & (data <= np.median(data[usable]))
    return float(np.median(variance[sky]))


def check_reference_variance(variance, reference_image):
    """
    Warn when ``reference_noise=True``'s variance exceeds the reference's measured pixel noise.

    More than `VARIANCE_AGREEMENT` times at the sky: the errors-in-variables
    correction would then over-correct P (measured: +13% to +60% for a
    stack whose header describes a single exposure).
    """
    measured = measured_pixel_variance(reference_image)
    level = sky_variance(variance, reference_image)
    if measured > 0 and level > VARIANCE_AGREEMENT * measured:
        source = "uncertainty" if reference_image.uncertainty is not None else (
            "noise model and header")
        warnings.warn(
            f"reference_noise=True: the reference's variance from its {source} is "
            f"{level / measured:.3g} times the noise its pixels show at the sky; the "
            f"correction of P for the reference's noise would over-correct. A stacked "
            f"reference whose header gives the gain and read noise of one exposure? Give it "
            f"an uncertainty, or correct GAIN and RDNOISE (a resampled reference's "
            f"correlated noise also shows less pixel noise)", NoiseModelWarning)


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
    if variance is not None:
        check_reference_variance(variance, reference_image)
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
