"""
Detector parameters of one image, from the arguments, the header or the data (private).

This module owns what a noise model must know about the detector and the
image before it can give a variance:

- the data unit, which must be a count (`require_count_unit`);
- the gain, the read noise and the EM gain, given as arguments or read from
  the header keywords of `astro_dia.noise._header` (`resolve_gain`,
  `resolve_read_noise`, `resolve_em_gain`);
- the sky level an earlier pipeline subtracted: an argument, a header
  keyword, or an estimate from the scatter of the sky pixels
  (`resolve_sky`, `estimate_sky`, `sky_statistics`);
- the variance an image's own ``uncertainty`` carries
  (`uncertainty_variance`, re-exported by `astro_dia.noise`), and how it
  compares with a noise model's (`compare_with_uncertainty`).

Each explicit setting has one validator (`validate_gain`,
`validate_read_noise`, `validate_em_gain`, `validate_sky`), called both when
a noise model is constructed and when it is resolved for an image, so that
the checks and their messages exist once. The variance models live in
`astro_dia.noise`, the master flat in `astro_dia.noise._flat`.
"""

import warnings

import numpy as np
from astropy import units as u
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty
from astropy.stats import sigma_clipped_stats

from ._header import (EM_GAIN_KEYWORDS, GAIN_KEYWORDS, READ_NOISE_KEYWORDS, SKY_KEYWORDS,
                      find_keyword, header_float, keyword_list)
from ..exceptions import NoiseModelWarning

__all__ = []

#: Data units the CCD model accepts.
COUNT_UNITS = (u.adu, u.electron)

#: Units the EMCCD model accepts: ``photon`` marks photo-electrons, data from
#: which the EM gain has already been divided out.
EMCCD_COUNT_UNITS = (u.adu, u.electron, u.photon)

#: The unit of the gain.
GAIN_UNIT = u.electron / u.adu

#: A sky-pixel variance this many times above the prediction of the noise
#: model means the data have probably been sky-subtracted.
SKY_EXCESS_THRESHOLD = 1.5

#: A sky level more than this many (observed) standard deviations above zero
#: was not subtracted, however large the scatter of the sky pixels.
SKY_ZERO_SIGMAS = 3.0

#: How `VarianceTerms.settings` records a sky level estimated from the data.
SKY_ESTIMATED = "estimated from the data"

#: The image's uncertainty and the model variance at the data differing by
#: more than this fraction (median ratio) give a warning.
UNCERTAINTY_DISAGREEMENT = 0.2


def require_count_unit(image, model_name, units=COUNT_UNITS):
    """The image's unit, or a `~astropy.units.UnitsError` unless it is one of ``units``."""
    unit = image.unit
    if unit is None or not any(unit == count for count in units):
        names = keyword_list(str(count) for count in units)
        raise u.UnitsError(
            f"noise_model={model_name!r} needs data in counts ({names}), but the "
            f"image unit is {unit}; multiply rate images by the exposure time, or use "
            "noise_model='uncertainty' or 'uniform'")
    return unit


def as_quantity(value, unit, name, *, bare_unit):
    """Accept a Quantity (converted to ``unit``) or a bare number (taken in ``bare_unit``)."""
    if isinstance(value, u.Quantity):
        try:
            return value.to(unit, equivalencies=[])
        except u.UnitConversionError:
            raise u.UnitsError(
                f"{name} must be in units convertible to {unit}, got {value.unit}") from None
    try:
        return float(value) * bare_unit
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a Quantity or a number, got {value!r}") from None


# --------------------------------------------------------------------------
# Validators of explicit settings: one per setting, used at construction and
# at resolution.


def validate_gain(gain, source="argument"):
    """
    The gain in electron / adu as a float, checked positive and finite.

    ``gain`` is a Quantity or a bare number in electron / adu; ``source``
    says where it came from in the error message.
    """
    gain = as_quantity(gain, GAIN_UNIT, "gain", bare_unit=GAIN_UNIT)
    value = gain.value
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"gain must be positive and finite, got {gain} (from {source})")
    return float(gain.to_value(GAIN_UNIT))


def validate_read_noise(read_noise):
    """
    Check an explicit read noise: a Quantity or a number, non-negative and finite.

    The unit of a Quantity is checked where the data unit is known
    (`resolve_read_noise`); the sign and finiteness do not depend on it.
    """
    value = (read_noise.value if isinstance(read_noise, u.Quantity)
             else as_quantity(read_noise, u.electron, "read_noise", bare_unit=u.electron).value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"read_noise must be non-negative and finite, got {read_noise}")
    return read_noise


def validate_em_gain(em_gain, source):
    """The EM gain as a float, checked to be a positive, finite number."""
    try:
        value = float(em_gain)
    except (TypeError, ValueError):
        raise TypeError(f"em_gain must be a number, got {em_gain!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"em_gain must be positive and finite, got {value} (from {source})")
    return value


def validate_sky(sky, unit=None):
    """
    Check an explicit sky level; given the data ``unit``, return it in that unit.

    Without a unit (at construction) a bare number is checked to be finite
    and a Quantity is left for the resolution, where its unit can be checked.
    """
    if unit is None:
        if isinstance(sky, u.Quantity):
            return None
        value = as_quantity(sky, u.dimensionless_unscaled, "sky",
                            bare_unit=u.dimensionless_unscaled).value
    else:
        value = as_quantity(sky, unit, "sky", bare_unit=unit).to_value(unit)
    if not np.isfinite(value):
        raise ValueError(f"sky must be finite, got {sky}")
    return value


# --------------------------------------------------------------------------
# Resolution for one image: the argument if given, else the header.


def resolve_gain(explicit, image, unit, model_name):
    """
    Electrons per data unit, as a float, and where the number came from.

    For data in electrons this is 1 whatever the gain; for data in adu it
    is the gain, explicit or from the header.
    """
    if unit == u.electron:
        return 1.0, "data in electrons"
    if explicit is not None:
        return validate_gain(explicit, "argument gain"), "argument"
    keyword, value = header_float(image.meta, GAIN_KEYWORDS, "gain (e-/ADU)")
    if keyword is None:
        raise ValueError(
            f"noise_model={model_name!r} needs the detector gain for data in adu: none of the "
            f"header keywords {keyword_list(GAIN_KEYWORDS)} is set; pass gain= as a Quantity "
            "in electron / adu (e.g. gain=2.1 * u.electron / u.adu)")
    validate_gain(value * GAIN_UNIT, f"header keyword {keyword}")
    return value, f"header {keyword}"


def resolve_read_noise(explicit, image, electrons_per_unit, *, required, model_name):
    """Read noise in the data unit (float) and where it came from."""
    if explicit is not None:
        if isinstance(explicit, u.Quantity) and explicit.unit == u.adu:
            if electrons_per_unit != 1.0 or image.unit == u.adu:
                value = float(explicit.to_value(u.adu))
            else:
                raise u.UnitsError(
                    "read_noise is in adu but the data are in electrons; give it in electrons")
        else:
            noise = as_quantity(explicit, u.electron, "read_noise", bare_unit=u.electron)
            value = float(noise.to_value(u.electron)) / electrons_per_unit
        validate_read_noise(explicit)
        return value, "argument"
    keyword, value = header_float(image.meta, READ_NOISE_KEYWORDS, "read noise (electrons)")
    if keyword is None:
        if not required:
            return 0.0, "not part of the model"
        raise ValueError(
            f"noise_model={model_name!r} needs the read noise: none of the header keywords "
            f"{keyword_list(READ_NOISE_KEYWORDS)} is set; pass read_noise= as a Quantity "
            "(e.g. read_noise=4.5 * u.electron)")
    if not np.isfinite(value) or value < 0:
        raise ValueError(
            f"read noise must be non-negative and finite, got {value} (header keyword {keyword})")
    # ccdproc's convention: header read noise is in electrons.
    return value / electrons_per_unit, f"header {keyword} (electrons)"


def resolve_em_gain(explicit, image):
    """The EM gain (float) and where it came from."""
    if explicit is not None:
        return validate_em_gain(explicit, "argument"), "argument"
    keyword, value = header_float(image.meta, EM_GAIN_KEYWORDS, "EM gain")
    if keyword is None:
        raise ValueError(
            "noise_model='emccd' needs the EM gain: none of the header keywords "
            f"{keyword_list(EM_GAIN_KEYWORDS)} is set; pass em_gain= (e.g. em_gain=300)")
    return validate_em_gain(value, f"header keyword {keyword}"), f"header {keyword}"


def resolve_sky(explicit, image, unit, terms, mask):
    """
    The subtracted sky level in the data unit (float) and where it came from.

    The argument if given, else the first of the header keywords
    SKYLEVEL, SKY, SKYSUB that is not a boolean, else `estimate_sky`.
    """
    if explicit is not None:
        return validate_sky(explicit, unit), "argument"
    for keyword in SKY_KEYWORDS:
        found, value = find_keyword(image.meta, (keyword,))
        if found is not None and not isinstance(value, (bool, np.bool_)):
            _, sky = header_float(image.meta, (keyword,), "subtracted sky level")
            if not np.isfinite(sky):
                raise ValueError(f"header keyword {keyword} gives a sky level of {sky}; "
                                 "it must be finite (or pass sky= explicitly)")
            return sky, f"header {keyword}"
    return estimate_sky(image, terms, mask)


# --------------------------------------------------------------------------
# The sky from the data.


#: Most pixels (evenly spaced among the usable ones) from which `sky_statistics`
#: measures the sky. The low-side variance then has a relative scatter near 1.2%,
#: far inside the factor `SKY_EXCESS_THRESHOLD` it is compared with; all 10⁶
#: pixels of a 1000² frame took 0.17 s of a 1.4 s fit.
SKY_SAMPLE_PIXELS = 2 ** 16


def sky_statistics(image, mask):
    """
    The sky level and scatter of an image, or None with fewer than 100 pixels.

    Returns the sigma-clipped median and the variance measured on the low
    side of the pixel distribution (median minus the 15.87th percentile,
    squared), which faint stars do not reach. Both from at most
    `SKY_SAMPLE_PIXELS` usable pixels, evenly spaced.
    """
    data = np.asarray(image.data, dtype=float)
    good = np.isfinite(data)
    if mask is not None:
        good &= ~mask
    values = data[good]
    if values.size < 100:
        return None
    values = values[::-(-values.size // SKY_SAMPLE_PIXELS)]
    _, median, _ = sigma_clipped_stats(values, sigma=3.0, maxiters=10)
    low_side = median - np.percentile(values, 15.865)
    return float(median), float(low_side) ** 2


def estimate_sky(image, terms, mask):
    """
    Detect a subtracted sky from the scatter of sky pixels (with a warning).

    The scatter is measured on the low side of the pixel distribution,
    which faint stars do not reach. ``terms`` are the image's variance terms
    without a sky. `astro_dia.DifferenceImager` refines the level from the
    fit's residuals (`astro_dia.noise.refine_sky`).
    """
    stats = sky_statistics(image, mask)
    if stats is None:
        return 0.0, "none (too few pixels to check)"
    median, observed = stats
    slope = float(np.median(terms.slope))
    constant = float(np.median(terms.constant))
    predicted = constant + slope * max(median, 0.0)
    if observed <= SKY_EXCESS_THRESHOLD * predicted or slope <= 0:
        return 0.0, "none"
    if median > SKY_ZERO_SIGMAS * np.sqrt(observed):
        # A sky well above zero was not subtracted, whatever inflates the
        # scatter (faint unresolved stars in a crowded field, a wrong gain).
        return 0.0, "none (the sky level is well above zero)"
    sky = max((observed - constant) / slope - max(median, 0.0), 0.0)
    warnings.warn(
        f"the sky pixels scatter with variance {observed:.4g} where the noise model "
        f"predicts {predicted:.4g} at their level {median:.4g}: the image looks "
        f"sky-subtracted, so a sky of about {sky:.4g} {image.unit} (refined from the fit "
        f"residuals) is added back in the variance; give sky= (or a header keyword "
        f"{keyword_list(SKY_KEYWORDS)}) to set it, or sky=0 if the data are not "
        "sky-subtracted", NoiseModelWarning)
    return float(sky), SKY_ESTIMATED


# --------------------------------------------------------------------------
# The variance an image carries.


def uncertainty_variance(image, *, name="target"):
    """
    The variance carried by an image's ``uncertainty``, in its data unit.

    Parameters
    ----------
    image : `~astropy.nddata.NDData`
        Image with a `~astropy.nddata.StdDevUncertainty`,
        `~astropy.nddata.VarianceUncertainty` or
        `~astropy.nddata.InverseVariance`.
    name : str
        How to call the image in error messages.

    Returns
    -------
    variance : (M, N) ndarray
        Non-finite or non-positive values are returned as NaN.

    Raises
    ------
    ValueError
        If the image has no uncertainty.
    TypeError
        If the uncertainty is of another class.
    """
    uncertainty = image.uncertainty
    if uncertainty is None:
        raise ValueError(
            f"the {name} has no uncertainty; attach one (e.g. with ccdproc.create_deviation) "
            "or choose a noise model such as 'ccd'")
    array = np.asarray(uncertainty.array, dtype=float)
    bad = ~np.isfinite(array) | (array <= 0)
    data_unit = image.unit if image.unit is not None else u.dimensionless_unscaled
    unc_unit = uncertainty.unit
    if isinstance(uncertainty, StdDevUncertainty):
        variance = array ** 2
        factor = 1.0 if unc_unit is None else unc_unit.to(data_unit) ** 2
    elif isinstance(uncertainty, VarianceUncertainty):
        variance = array.copy()
        factor = 1.0 if unc_unit is None else unc_unit.to(data_unit ** 2)
    elif isinstance(uncertainty, InverseVariance):
        with np.errstate(divide="ignore"):
            variance = 1.0 / array
        factor = 1.0 if unc_unit is None else (unc_unit ** -1).to(data_unit ** 2)
    else:
        raise TypeError(
            f"the {name}'s uncertainty must be a StdDevUncertainty, VarianceUncertainty or "
            f"InverseVariance, got {type(uncertainty).__name__}")
    if np.shape(variance) != np.shape(image.data):
        raise ValueError(
            f"the {name}'s uncertainty has shape {np.shape(variance)}, "
            f"its data {np.shape(image.data)}")
    variance = variance * factor
    variance[bad | ~np.isfinite(variance)] = np.nan
    return variance


def compare_with_uncertainty(image, terms, mask, model_name):
    """
    Record that the noise model sets the weights; warn if the attached uncertainty disagrees.

    Adds ``weights`` and ``uncertainty_ratio`` (the median ratio of the
    image's uncertainty variance to the model's ``terms`` at the data) to
    ``terms.settings``, and gives a `~astro_dia.exceptions.NoiseModelWarning`
    if the ratio is further than `UNCERTAINTY_DISAGREEMENT` from one.
    """
    if image.uncertainty is None:
        return
    settings = terms.settings
    settings["weights"] = (f"noise model {model_name!r}; the target's uncertainty is not "
                           "used (noise_model='uncertainty' uses it)")
    try:
        attached = uncertainty_variance(image)
    except (TypeError, ValueError):
        return
    data = np.asarray(image.data, dtype=float)
    model = terms.variance(np.where(np.isfinite(data), data, 0.0))
    good = np.isfinite(attached) & np.isfinite(data) & (model > 0)
    if mask is not None:
        good &= ~mask
    if terms.bad is not None:
        good &= ~terms.bad
    if not good.any():
        return
    ratio = float(np.median(attached[good] / model[good]))
    settings["uncertainty_ratio"] = (
        ratio, "median of the target's uncertainty variance over the model's at the data")
    if abs(ratio - 1) <= UNCERTAINTY_DISAGREEMENT or settings.get("sky") == SKY_ESTIMATED:
        # an estimated sky is only a first guess, refined by the fit
        return
    hint = ""
    implied = settings.get("uncertainty_constant", (None,))[0]
    read_noise = settings.get("read_noise", (0.0,))[0]
    if implied is not None and implied > 1.5 * read_noise ** 2 + 1.0:
        hint = (f" The uncertainty carries a constant variance of {implied:.4g} "
                f"{image.unit}2 where the read noise gives {read_noise ** 2:.4g}: "
                "ccdproc.create_deviation counts a bias level not yet subtracted as "
                "signal (ccd_process without oscan=), so its uncertainty is too large.")
    warnings.warn(
        f"the target's uncertainty gives a variance {ratio:.3g} times that of noise_model="
        f"{model_name!r} at the data (median over the unmasked pixels); the noise model "
        f"sets the weights and the output uncertainty.{hint} Use "
        "noise_model='uncertainty' to weight by the attached uncertainty instead, or "
        "check the detector settings", NoiseModelWarning)
