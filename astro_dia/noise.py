"""
Noise models: the per-pixel variance of the target as a function of the model.

Every model here reduces to the affine form

.. math::

    \\sigma^2 = \\max\\left(a + b\\,\\max(M + S, 0),\\ \\sigma^2_{\\rm min}\\right)

where ``a`` is the constant (read-noise) term, ``b`` the photon-noise slope,
``S`` the sky level subtracted from the data by an earlier pipeline and
:math:`\\sigma^2_{\\rm min}` a floor that keeps the weights finite. The CCD
model (paper eq. 6) has :math:`a = \\sigma_0^2/F^2` and :math:`b = 1/(G F)`; the
EMCCD model (eq. 7) has :math:`b = E/(G_{\\rm total} F)`.
"""

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.nddata import (CCDData, InverseVariance, NDData, StdDevUncertainty,
                            VarianceUncertainty)
from astropy.stats import sigma_clipped_stats

from ._header import (EM_GAIN_KEYWORDS, FLAT_KEYWORDS, GAIN_KEYWORDS, READ_NOISE_KEYWORDS,
                      SKY_KEYWORDS, find_keyword, header_float, keyword_list)
from .exceptions import NoiseModelWarning

__all__ = ["VarianceTerms", "NoiseModel", "CCDNoiseModel", "EMCCDNoiseModel",
           "UniformNoiseModel", "UncertaintyNoiseModel", "make_noise_model",
           "uncertainty_variance", "flat_from_uncertainty", "refine_sky"]

_COUNT_UNITS = (u.adu, u.electron)

#: Units the EMCCD model accepts: ``photon`` marks photo-electrons, data from
#: which the EM gain has already been divided out.
_EMCCD_COUNT_UNITS = (u.adu, u.electron, u.photon)

#: Sky pixels of EMCCD data in electrons scattering with less than this
#: fraction of the predicted variance are taken for photo-electrons.
SCATTER_DEFICIT_THRESHOLD = 0.1

#: A sky-pixel variance this many times above the prediction of the noise
#: model means the data have probably been sky-subtracted.
SKY_EXCESS_THRESHOLD = 1.5

#: A sky level more than this many (observed) standard deviations above zero
#: was not subtracted, however large the scatter of the sky pixels.
SKY_ZERO_SIGMAS = 3.0

#: The target's uncertainty and the model variance at the data differing by
#: more than this fraction (median ratio) give a warning.
UNCERTAINTY_DISAGREEMENT = 0.2

#: Header keys of ccdproc's log of `ccdproc.flat_correct`.
CCDPROC_FLAT_KEYS = ("flat_correct", "flatcor")

#: How `VarianceTerms.settings` records a sky level estimated from the data.
SKY_ESTIMATED = "estimated from the data"


@dataclass
class VarianceTerms:
    """
    The noise model of one image, resolved to numbers in its data unit.

    The variance of a pixel with model value ``M`` is
    ``max(constant + slope * max(M + offset, 0), minimum)``.

    Parameters
    ----------
    constant : float or (M, N) ndarray
        Constant variance term (read noise), in the data unit squared.
    slope : float or (M, N) ndarray
        Photon-noise slope, in the data unit.
    offset : float
        Sky level added back to the model before the photon term (the data
        unit); zero unless the data were sky-subtracted.
    minimum : float or (M, N) ndarray
        Floor of the variance, so that weights stay finite.
    bad : (M, N) bool ndarray or None
        Pixels the model cannot describe (e.g. a flat of zero), to be masked.
    estimate_scale : bool
        If true the variance is known only up to a constant factor, which is
        estimated from the residuals after the fit (the uniform model).
    settings : dict
        The resolved scalar settings, with where each came from, for the
        provenance keywords.
    """

    constant: object = 0.0
    slope: object = 0.0
    offset: float = 0.0
    minimum: object = 0.0
    bad: object = None
    estimate_scale: bool = False
    settings: dict = field(default_factory=dict)

    def variance(self, model):
        """
        Evaluate the variance at ``model``.

        Parameters
        ----------
        model : ndarray
            Model image in the data unit, broadcastable with the terms.

        Returns
        -------
        variance : ndarray
        """
        variance = self.constant + self.slope * np.maximum(model + self.offset, 0.0)
        return np.maximum(variance, self.minimum)

    def cropped(self, region):
        """Return the terms restricted to ``region`` (a tuple of slices)."""

        def crop(value):
            return value[region] if np.ndim(value) == 2 else value

        return VarianceTerms(constant=crop(self.constant), slope=crop(self.slope),
                             offset=self.offset, minimum=crop(self.minimum),
                             bad=None if self.bad is None else self.bad[region],
                             estimate_scale=self.estimate_scale,
                             settings=dict(self.settings))


class NoiseModel:
    """
    Base class of noise models.

    A noise model is configured once with any explicit detector settings and
    then resolved, image by image, into `VarianceTerms` with
    :meth:`variance_terms`, reading whatever it was not told from the
    image's header.
    """

    #: Short name used in provenance keywords.
    name = "custom"

    def variance_terms(self, image, *, mask=None):
        """
        Resolve the model for one image.

        Parameters
        ----------
        image : `~astropy.nddata.CCDData` or `~astropy.nddata.NDData`
            The image whose noise is described; its ``meta`` supplies any
            keyword not given explicitly.
        mask : (M, N) bool ndarray, optional
            Pixels to ignore when statistics of the image are needed.

        Returns
        -------
        terms : `VarianceTerms`
        """
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


def _require_count_unit(image, model_name, units=_COUNT_UNITS):
    unit = image.unit
    if unit is None or not any(unit == count for count in units):
        names = keyword_list(str(count) for count in units)
        raise u.UnitsError(
            f"noise_model={model_name!r} needs data in counts ({names}), but the "
            f"image unit is {unit}; multiply rate images by the exposure time, or use "
            "noise_model='uncertainty' or 'uniform'")
    return unit


def _as_quantity(value, unit, name, *, bare_unit):
    """Accept a Quantity or a bare number (taken in ``bare_unit``)."""
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


def _positive_finite(quantity, name, source):
    value = quantity.value
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {quantity} (from {source})")
    return quantity


def _resolve_gain(explicit, image, unit, model_name):
    """
    Electrons per data unit, as a float, and where the number came from.

    For data in electrons this is 1 whatever the gain; for data in adu it
    is the gain, explicit or from the header.
    """
    if unit == u.electron:
        return 1.0, "data in electrons"
    if explicit is not None:
        gain = _as_quantity(explicit, u.electron / u.adu, "gain", bare_unit=u.electron / u.adu)
        _positive_finite(gain, "gain", "argument gain")
        return float(gain.to_value(u.electron / u.adu)), "argument"
    keyword, value = header_float(image.meta, GAIN_KEYWORDS, "gain (e-/ADU)")
    if keyword is None:
        raise ValueError(
            f"noise_model={model_name!r} needs the detector gain for data in adu: none of the "
            f"header keywords {keyword_list(GAIN_KEYWORDS)} is set; pass gain= as a Quantity "
            "in electron / adu (e.g. gain=2.1 * u.electron / u.adu)")
    _positive_finite(value * u.electron / u.adu, "gain", f"header keyword {keyword}")
    return value, f"header {keyword}"


def _resolve_read_noise(explicit, image, electrons_per_unit, *, required, model_name):
    """Read noise in the data unit (float) and where it came from."""
    if explicit is not None:
        if isinstance(explicit, u.Quantity) and explicit.unit == u.adu:
            if electrons_per_unit != 1.0 or image.unit == u.adu:
                value = float(explicit.to_value(u.adu))
            else:
                raise u.UnitsError(
                    "read_noise is in adu but the data are in electrons; give it in electrons")
        else:
            noise = _as_quantity(explicit, u.electron, "read_noise", bare_unit=u.electron)
            value = float(noise.to_value(u.electron)) / electrons_per_unit
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"read_noise must be non-negative and finite, got {explicit}")
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


def _load_flat(explicit, image, shape, model_name):
    """The master flat as (normalised array or 1.0, bad-pixel mask, source)."""
    source = "argument"
    flat = explicit
    if flat is None:
        keyword, value = find_keyword(image.meta, FLAT_KEYWORDS)
        if keyword is None or not isinstance(value, str):
            raise ValueError(
                f"noise_model={model_name!r} needs the master flat F of eq. 6/7: pass flat= "
                "as a CCDData or array (flat=1 for a flat-fielded image with uniform "
                f"response), or name its FITS file in one of the header keywords "
                f"{keyword_list(FLAT_KEYWORDS)}")
        if not os.path.isfile(value):
            raise ValueError(
                f"header keyword {keyword} names the master flat {value!r}, but no such file "
                "exists; pass flat= explicitly")
        flat = CCDData.read(value, unit=u.dimensionless_unscaled)
        source = f"header {keyword}"
    if isinstance(flat, NDData):
        flat = np.asarray(flat.data, dtype=float)
    if np.ndim(flat) == 0:
        value = float(flat)
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"flat must be positive and finite, got {flat}")
        return 1.0, None, "uniform (flat=1)" if source == "argument" else source
    flat = np.asarray(flat, dtype=float)
    if flat.shape != shape:
        raise ValueError(f"flat must have the image shape {shape}, got {flat.shape}")
    bad = ~np.isfinite(flat) | (flat <= 0)
    if bad.all():
        raise ValueError("flat has no positive finite pixel")
    # Normalise by the mean, as ccdproc.flat_correct does.
    flat = np.where(bad, 1.0, flat) / np.mean(flat[~bad])
    return flat, (bad if bad.any() else None), source


def _flat_recoverable(image):
    """True for an image ccdproc flat-corrected, with an uncertainty and no flat named."""
    if getattr(image, "uncertainty", None) is None:
        return False
    keyword, value = find_keyword(image.meta, FLAT_KEYWORDS)
    if keyword is not None and isinstance(value, str):
        return False
    found, _ = find_keyword(image.meta, tuple(key.upper() for key in CCDPROC_FLAT_KEYS))
    return found is not None


def _fill_from_neighbours(values):
    """Replace NaNs by the median of their finite 3 x 3 neighbours, growing inwards."""
    values = values.copy()
    ny, nx = values.shape
    for _ in range(max(ny, nx)):
        missing = np.isnan(values)
        if not missing.any() or missing.all():
            break
        padded = np.pad(values, 1, constant_values=np.nan)
        rows, cols = np.nonzero(missing)
        neighbours = np.stack([padded[rows + dy, cols + dx]
                               for dy in range(3) for dx in range(3)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
            values[rows, cols] = np.nanmedian(neighbours, axis=0)
    return values


def flat_from_uncertainty(image, electrons_per_unit, *, mask=None):
    """
    Recover the master flat that ccdproc divided out, from the uncertainty it propagated.

    `ccdproc.create_deviation` gives a raw pixel of ``R`` counts the
    variance ``(g R + rn**2) / g**2``; `ccdproc.flat_correct` divides data
    and deviation by the normalised flat ``F``. With the flat-fielded value
    ``I = R' / F`` (``R'`` the counts after bias subtraction) the
    propagated variance obeys, pixel by pixel,

    .. math::

        \\sigma^2 F^2 - \\frac{I}{g} F - A = 0,

    where ``A`` (the data unit squared) is the constant part: the read
    noise, plus the bias level when the deviation was created before the
    bias was subtracted. Each pixel gives ``F`` for a given ``A``; ``A``
    is the one value that makes the mean of ``F`` one, as ccdproc
    normalises the flat.

    Parameters
    ----------
    image : `~astropy.nddata.CCDData`
        The flat-fielded image with its propagated ``uncertainty``.
    electrons_per_unit : float
        ``g``: electrons per data unit (1 for data in electrons).
    mask : (M, N) bool ndarray, optional
        Pixels to leave out.

    Returns
    -------
    flat : (M, N) ndarray
        The response, mean one. Where the master flat's own noise enters
        the propagated variance noticeably (the pixels of stars, more than
        three sigma above the sky) and where the uncertainty is not
        finite, it is the median of the neighbouring sky pixels.
    constant : float
        ``A``, in the data unit squared.

    Raises
    ------
    ValueError
        If too few pixels have a finite uncertainty, or the uncertainty is
        smaller than the photon noise of the data (it then did not come
        from ccdproc's propagation).
    """
    variance = uncertainty_variance(image)
    data = np.asarray(image.data, dtype=float)
    good = np.isfinite(variance) & np.isfinite(data)
    if mask is not None:
        good &= ~mask
    if good.sum() < 100:
        raise ValueError(
            "cannot recover the master flat from the target's uncertainty: fewer than 100 "
            "unmasked pixels have a finite uncertainty; pass flat= explicitly")
    _, sky, _ = sigma_clipped_stats(data[good], sigma=3.0, maxiters=10)
    sky_sigma = float(np.sqrt(np.median(variance[good])))
    faint = good & (data < sky + 3 * sky_sigma)
    counts = data[good] / electrons_per_unit
    var = variance[good]

    def flat_at(constant):
        # all good pixels, as ccdproc normalises the flat by its mean over the image
        return (counts + np.sqrt(np.maximum(counts ** 2 + 4 * var * constant, 0.0))) / (2 * var)

    if np.mean(flat_at(0.0)) > 1.02:
        raise ValueError(
            "cannot recover the master flat from the target's uncertainty: it is smaller than "
            "the photon noise of the data, so it is not the one ccdproc propagated "
            "(create_deviation, then flat_correct); pass flat= explicitly")
    low, high = 0.0, float(np.median(var))
    for _ in range(200):
        if np.mean(flat_at(high)) >= 1.0:
            break
        low, high = high, 2 * high
    for _ in range(100):
        middle = 0.5 * (low + high)
        if np.mean(flat_at(middle)) < 1.0:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(high, 1.0):
            break
    constant = 0.5 * (low + high)
    flat = np.full(data.shape, np.nan)
    flat[good] = flat_at(constant)
    flat[~faint] = np.nan
    flat = _fill_from_neighbours(flat)
    flat = np.where(np.isfinite(flat), flat, 1.0)
    return flat / np.mean(flat), float(constant)


class _PhotonNoiseModel(NoiseModel):
    """Shared resolution of gain, flat and sky for the CCD and EMCCD models."""

    def __init__(self, *, gain=None, read_noise=None, flat=None, sky=None):
        self.gain = gain
        self.read_noise = read_noise
        self.flat = flat
        self.sky = sky
        # Validate what can be checked without an image, here rather than at the fit.
        if gain is not None:
            _positive_finite(_as_quantity(gain, u.electron / u.adu, "gain",
                                          bare_unit=u.electron / u.adu), "gain", "argument")
        if read_noise is not None:
            value = (read_noise.value if isinstance(read_noise, u.Quantity)
                     else _as_quantity(read_noise, u.electron, "read_noise",
                                       bare_unit=u.electron).value)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"read_noise must be non-negative and finite, got {read_noise}")
        if sky is not None and not isinstance(sky, u.Quantity):
            try:
                sky_value = float(sky)
            except (TypeError, ValueError):
                raise TypeError(f"sky must be a Quantity or a number, got {sky!r}") from None
            if not np.isfinite(sky_value):
                raise ValueError(f"sky must be finite, got {sky}")
        if flat is not None and not isinstance(flat, NDData) and np.ndim(flat) == 0:
            _load_flat(flat, None, None, self.name)

    def _photon_terms(self, image, mask):
        """Subclasses: return (constant, slope, minimum, settings) before sky handling."""
        raise NotImplementedError

    #: Data units the model accepts.
    count_units = _COUNT_UNITS

    def variance_terms(self, image, *, mask=None):
        unit = _require_count_unit(image, self.name, self.count_units)
        shape = np.shape(image.data)
        recovered = None
        if self.flat is None and _flat_recoverable(image):
            recovered = self._recover_flat(image, unit, mask)
        if recovered is not None:
            flat, bad, flat_source, implied_constant = recovered
        else:
            flat, bad, flat_source = _load_flat(self.flat, image, shape, self.name)
        constant, slope, minimum, settings = self._photon_terms(image, unit, flat)
        settings["flat"] = flat_source
        if recovered is not None:
            settings["uncertainty_constant"] = (
                implied_constant, "data unit squared: the constant variance (read noise, and "
                "any bias level counted as signal) of the propagated uncertainty")
        terms = VarianceTerms(constant=constant, slope=slope, minimum=minimum, bad=bad,
                              settings=settings)
        terms.offset, settings["sky"] = self._resolve_sky(image, unit, terms, mask)
        self._compare_with_uncertainty(image, terms, mask)
        return terms

    def _recover_flat(self, image, unit, mask):
        """Subclasses: (flat, bad, source, constant) from the image's uncertainty, or None."""
        return None

    def _compare_with_uncertainty(self, image, terms, mask):
        """Record that the model sets the weights; warn if the attached uncertainty disagrees."""
        if image.uncertainty is None:
            return
        settings = terms.settings
        settings["weights"] = (f"noise model {self.name!r}; the target's uncertainty is not "
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
            f"{self.name!r} at the data (median over the unmasked pixels); the noise model "
            f"sets the weights and the output uncertainty.{hint} Use "
            "noise_model='uncertainty' to weight by the attached uncertainty instead, or "
            "check the detector settings", NoiseModelWarning)

    def _resolve_sky(self, image, unit, terms, mask):
        if self.sky is not None:
            sky = _as_quantity(self.sky, unit, "sky", bare_unit=unit).to_value(unit)
            if not np.isfinite(sky):
                raise ValueError(f"sky must be finite, got {self.sky}")
            return sky, "argument"
        for keyword in SKY_KEYWORDS:
            found, value = find_keyword(image.meta, (keyword,))
            if found is not None and not isinstance(value, (bool, np.bool_)):
                _, sky = header_float(image.meta, (keyword,), "subtracted sky level")
                if not np.isfinite(sky):
                    raise ValueError(f"header keyword {keyword} gives a sky level of {sky}; "
                                     "it must be finite (or pass sky= explicitly)")
                return sky, f"header {keyword}"
        return self._estimate_sky(image, terms, mask)

    def _estimate_sky(self, image, terms, mask):
        """
        Detect a subtracted sky from the scatter of sky pixels (with a warning).

        The scatter is measured on the low side of the pixel distribution,
        which faint stars do not reach. `DifferenceImager` refines the level
        from the fit's residuals (`refine_sky`).
        """
        stats = _sky_statistics(image, mask)
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


def _sky_statistics(image, mask):
    """
    The sky level and scatter of an image, or None with fewer than 100 pixels.

    Returns the sigma-clipped median and the variance measured on the low
    side of the pixel distribution (median minus the 15.87th percentile,
    squared), which faint stars do not reach.
    """
    data = np.asarray(image.data, dtype=float)
    good = np.isfinite(data)
    if mask is not None:
        good &= ~mask
    if good.sum() < 100:
        return None
    _, median, _ = sigma_clipped_stats(data[good], sigma=3.0, maxiters=10)
    low_side = median - np.percentile(data[good], 15.865)
    return float(median), float(low_side) ** 2


def refine_sky(terms, model, residual, mask):
    """
    Re-estimate a subtracted sky level from the residuals of a fit.

    Solves ``sum(D**2) = sum(constant + slope * (M + S))`` for ``S`` over
    the fitted pixels whose residual is within five sigma.

    Parameters
    ----------
    terms : `VarianceTerms`
        Terms (on the same pixels as ``model``) whose ``offset`` is the
        current estimate.
    model, residual : ndarray
        Model and ``target - model``.
    mask : bool ndarray
        The fitted pixels.

    Returns
    -------
    sky : float
    """
    variance = terms.variance(model)
    keep = mask & (np.abs(residual) < 5 * np.sqrt(variance))
    constant = np.broadcast_to(terms.constant, model.shape)[keep]
    slope = np.broadcast_to(terms.slope, model.shape)[keep]
    excess = residual[keep] ** 2 - constant - slope * model[keep]
    return max(float(np.sum(excess) / np.sum(slope)), 0.0)


class CCDNoiseModel(_PhotonNoiseModel):
    """
    CCD noise model (paper eq. 6): read noise plus photon noise.

    .. math::

        \\sigma^2 = \\frac{\\sigma_0^2}{F^2} + \\frac{M + S}{G\\,F}

    Parameters
    ----------
    gain : `~astropy.units.Quantity` or float, optional
        Detector gain in electron / adu (a bare number is taken in that
        unit). Default: header keyword GAIN, EGAIN or CCDGAIN; not needed
        for data in electrons.
    read_noise : `~astropy.units.Quantity` or float, optional
        Read noise, in electrons or adu (a bare number is taken in
        electrons). Default: header keyword RDNOISE, READNOIS, RON or
        READNOISE, read in electrons as ccdproc writes it.
    flat : `~astropy.nddata.CCDData`, (M, N) ndarray or float, optional
        Master flat F, normalised to mean 1 here. ``flat=1`` states that
        the response is uniform. Default: a FITS file named in header
        keyword FLATFILE, FLATNAME or FLAT.
    sky : `~astropy.units.Quantity` or float, optional
        Sky level an earlier pipeline subtracted, in the data unit. Default:
        header keyword SKYLEVEL, SKY or SKYSUB; if none, the sky pixels'
        scatter is compared with the model and, when it is clearly larger,
        the sky is estimated from it with a `~astro_dia.exceptions.NoiseModelWarning`. ``sky=0``
        states that the data are not sky-subtracted.

    Raises
    ------
    ValueError
        At resolution, if a value is neither given nor in the header (the
        message lists the keywords tried), or is not positive and finite.
    astropy.units.UnitsError
        If the data are not in adu or electrons.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy import units as u
    >>> from astropy.nddata import CCDData
    >>> image = CCDData(np.full((4, 4), 100.0), unit="adu",
    ...                 meta={"GAIN": 2.0, "RDNOISE": 10.0})
    >>> terms = CCDNoiseModel(flat=1, sky=0).variance_terms(image)
    >>> float(terms.variance(np.array(100.0)))  # (10/2)**2 + 100/2
    75.0
    """

    name = "ccd"

    def _recover_flat(self, image, unit, mask):
        g, _ = _resolve_gain(self.gain, image, unit, self.name)
        flat, constant = flat_from_uncertainty(image, g, mask=mask)
        bad = ~np.isfinite(flat) | (flat <= 0)
        source = ("recovered from the ccdproc-propagated uncertainty (flat_correct in the "
                  "header log, no flat file named)")
        return np.where(bad, 1.0, flat), (bad if bad.any() else None), source, constant

    def _photon_terms(self, image, unit, flat):
        g, gain_source = _resolve_gain(self.gain, image, unit, self.name)
        read_noise, rn_source = _resolve_read_noise(
            self.read_noise, image, g, required=True, model_name=self.name)
        constant = read_noise ** 2 / flat ** 2
        slope = 1.0 / (g * flat)
        # One electron's variance keeps weights finite if the read noise is zero.
        minimum = np.maximum(constant, slope / g) if read_noise == 0 else constant
        settings = {"gain": (g, gain_source), "read_noise": (read_noise, rn_source)}
        return constant, slope, minimum, settings


class EMCCDNoiseModel(_PhotonNoiseModel):
    """
    EMCCD noise model (paper eq. 7): photon noise doubled by the EM cascade.

    .. math::

        \\sigma^2 = E\\,\\frac{M + S}{G_{\\rm total}\\,F}
        + \\frac{\\sigma_0^2}{G^2 F^2}, \\qquad
        G_{\\rm total} = G / G_{\\rm EM}

    The first term is eq. 7; the second is the read noise of the output
    amplifier, which the EM cascade does not amplify (in photo-electrons it
    is :math:`\\sigma_0 / G_{\\rm EM}`, negligible at high EM gain).

    Parameters
    ----------
    gain : `~astropy.units.Quantity` or float, optional
        CCD (output amplifier) gain in electron / adu. Default: header
        keyword GAIN, EGAIN or CCDGAIN; not needed for data in electrons
        or photons.
    em_gain : float, optional
        Electron-multiplying gain. Default: header keyword EMGAIN, EM_GAIN,
        EMREALGN, EMCCDGN, EMCCDGAI, GAINEM, EMCCDGAIN or EM GAIN.
    excess_noise_factor : float, optional
        Excess noise factor E, 2 by default (high EM gain).
    read_noise : `~astropy.units.Quantity` or float, optional
        Read noise of the output amplifier :math:`\\sigma_0`, in electrons
        after multiplication (the electrons of ``gain``; a bare number is
        taken in electrons). Default: header keyword RDNOISE, READNOIS,
        RON or READNOISE, read in those electrons; none if no keyword is
        set (eq. 7 has no read-noise term).
    flat, sky
        As for `CCDNoiseModel`.

    Raises
    ------
    ValueError
        At resolution, as for `CCDNoiseModel`; and for data in electrons
        whose sky pixels scatter far less than the model predicts (by a
        factor of 10 in variance), which means they are photo-electrons
        (give them the unit ``photon``).
    astropy.units.UnitsError
        If the data are not in adu, electron or photon.

    Notes
    -----
    The data unit says what a count is. ``adu``: read-out counts, converted
    with ``gain`` and ``em_gain`` (:math:`G_{\\rm total} = G/G_{\\rm EM}`
    photo-electrons per adu). ``electron``: electrons at the output
    amplifier, i.e. adu times the CCD gain, as `ccdproc.gain_correct` with
    the amplifier gain gives them (:math:`G = 1`,
    :math:`G_{\\rm total} = 1/G_{\\rm EM}`). ``photon``: photo-electrons,
    data from which the EM gain has been divided out (:math:`G = G_{\\rm
    EM}`, :math:`G_{\\rm total} = 1`); the EM gain then only converts the
    read noise.

    Where ``M + S`` falls to zero, the variance is floored at that of a
    single photo-electron, so that weights stay finite.
    """

    name = "emccd"
    count_units = _EMCCD_COUNT_UNITS

    def __init__(self, *, gain=None, em_gain=None, excess_noise_factor=2.0, read_noise=None,
                 flat=None, sky=None):
        super().__init__(gain=gain, read_noise=read_noise, flat=flat, sky=sky)
        self.em_gain = em_gain
        self.excess_noise_factor = float(excess_noise_factor)
        if not np.isfinite(self.excess_noise_factor) or self.excess_noise_factor < 1:
            raise ValueError(
                f"excess_noise_factor must be finite and at least 1, got {excess_noise_factor}")
        if em_gain is not None:
            self._check_em_gain(em_gain, "argument em_gain")

    @staticmethod
    def _check_em_gain(value, source):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"em_gain must be a number, got {value!r}") from None
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"em_gain must be positive and finite, got {value} (from {source})")
        return value

    def _resolve_em_gain(self, image):
        if self.em_gain is not None:
            return self._check_em_gain(self.em_gain, "argument"), "argument"
        keyword, value = header_float(image.meta, EM_GAIN_KEYWORDS, "EM gain")
        if keyword is None:
            raise ValueError(
                "noise_model='emccd' needs the EM gain: none of the header keywords "
                f"{keyword_list(EM_GAIN_KEYWORDS)} is set; pass em_gain= (e.g. em_gain=300)")
        return self._check_em_gain(value, f"header keyword {keyword}"), f"header {keyword}"

    def _photon_terms(self, image, unit, flat):
        em_gain, em_source = self._resolve_em_gain(image)
        if unit == u.photon:
            # output electrons per photo-electron
            g, gain_source = em_gain, "data in photo-electrons (photon): the EM gain"
            if isinstance(self.read_noise, u.Quantity) and self.read_noise.unit == u.adu:
                raise u.UnitsError(
                    "read_noise is in adu but the data are in photo-electrons (photon); give "
                    "it in electrons of the output amplifier")
        else:
            g, gain_source = _resolve_gain(self.gain, image, unit, self.name)
        read_noise, rn_source = _resolve_read_noise(
            self.read_noise, image, g, required=False, model_name=self.name)
        if rn_source == "not part of the model":
            rn_source = "none (no header keyword; eq. 7 has no read-noise term)"
        total_gain = g / em_gain  # photo-electrons per data unit
        constant = read_noise ** 2 / flat ** 2
        slope = self.excess_noise_factor / (total_gain * flat)
        minimum = np.maximum(constant, slope / total_gain)
        settings = {"gain": (g, gain_source), "em_gain": (em_gain, em_source),
                    "total_gain": (total_gain, "photo-electrons per data unit"),
                    "read_noise": (read_noise, rn_source),
                    "excess_noise_factor": (self.excess_noise_factor, "argument")}
        return constant, slope, minimum, settings

    def variance_terms(self, image, *, mask=None):
        terms = super().variance_terms(image, mask=mask)
        if image.unit == u.electron:
            self._check_not_photo_electrons(image, terms, mask)
        return terms

    def _check_not_photo_electrons(self, image, terms, mask):
        """Data in electrons that scatter like photo-electrons are an error, not a bad sigma."""
        stats = _sky_statistics(image, mask)
        if stats is None:
            return
        median, observed = stats
        predicted = float(np.median(terms.variance(np.full(np.shape(image.data), median))))
        if observed <= 0 or observed >= SCATTER_DEFICIT_THRESHOLD * predicted:
            return
        em_gain = terms.settings["em_gain"][0]
        raise ValueError(
            f"noise_model='emccd': the sky pixels scatter with variance {observed:.4g} "
            f"electron2, {predicted / observed:.3g} times less than eq. 7 predicts for "
            f"electrons at the output amplifier (EM gain {em_gain:.4g}): the data look like "
            "photo-electrons, with the EM gain already divided out. Give such data the unit "
            "photon (e.g. CCDData(data, unit='photon')), for which the EM gain is not applied "
            "again; if they are output electrons, check em_gain")


class UniformNoiseModel(NoiseModel):
    """
    The same, unknown variance for every pixel.

    The fit is then unweighted least squares (or its robust analogue); the
    constant standard deviation is estimated afterwards from the residuals
    of the fitted pixels (`~astropy.stats.mad_std`), so that the difference
    image still carries an honest uncertainty.
    """

    name = "uniform"

    def variance_terms(self, image, *, mask=None):
        return VarianceTerms(constant=1.0, slope=0.0, minimum=0.0, estimate_scale=True,
                             settings={})


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


class UncertaintyNoiseModel(NoiseModel):
    """
    Fixed per-pixel variances from the image's own ``uncertainty``.

    Pixels whose uncertainty is zero, negative or not finite are masked.
    """

    name = "uncertainty"

    def variance_terms(self, image, *, mask=None):
        variance = uncertainty_variance(image)
        bad = ~np.isfinite(variance)
        return VarianceTerms(constant=np.where(bad, 1.0, variance), slope=0.0, minimum=0.0,
                             bad=bad if bad.any() else None,
                             settings={"uncertainty": (type(image.uncertainty).__name__,
                                                       "image")})


_MODELS = {"ccd": CCDNoiseModel, "emccd": EMCCDNoiseModel, "uniform": UniformNoiseModel,
           "uncertainty": UncertaintyNoiseModel}


def make_noise_model(noise_model, **settings):
    """
    Build a noise model from its name and detector settings.

    Parameters
    ----------
    noise_model : {'ccd', 'emccd', 'uniform', 'uncertainty'} or `NoiseModel`
        The model; an instance is returned unchanged.
    **settings
        Detector settings for the named model (``gain``, ``read_noise``,
        ``flat``, ``sky``, and for ``'emccd'`` also ``em_gain`` and
        ``excess_noise_factor``). Settings that are None are ignored.

    Returns
    -------
    model : `NoiseModel`

    Raises
    ------
    ValueError
        For an unknown name, or settings the model does not take.

    Examples
    --------
    >>> make_noise_model("ccd", gain=2.0, flat=1)
    CCDNoiseModel()
    """
    given = {key: value for key, value in settings.items() if value is not None}
    if isinstance(noise_model, NoiseModel):
        if given:
            raise ValueError(
                f"detector settings {sorted(given)} were given together with a "
                f"{type(noise_model).__name__} instance; set them on the instance instead")
        return noise_model
    if not isinstance(noise_model, str) or noise_model.lower() not in _MODELS:
        raise ValueError(
            f"noise_model must be one of {sorted(_MODELS)} or a NoiseModel instance, "
            f"got {noise_model!r}")
    cls = _MODELS[noise_model.lower()]
    allowed = {"ccd": {"gain", "read_noise", "flat", "sky"},
               "emccd": {"gain", "read_noise", "flat", "sky", "em_gain", "excess_noise_factor"},
               "uniform": set(), "uncertainty": set()}[noise_model.lower()]
    extra = sorted(set(given) - allowed)
    if extra:
        raise ValueError(
            f"noise_model={noise_model!r} does not take {', '.join(extra)}; "
            f"it takes {sorted(allowed) or 'no detector settings'}")
    return cls(**given)
