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

This module owns the noise models (`NoiseModel` and its subclasses), their
resolution into `VarianceTerms`, their refinement during a fit
(`NoiseModel.refine`: the 'uniform' constant, the refit of a subtracted sky
from the residuals) and the choice of a model by name (`make_noise_model`).
`VarianceTerms` itself and the sky refit `refine_sky` are defined in
`astro_dia.noise._variance_terms`. The detector parameters the models need (data
unit, gain, read noise, EM gain, subtracted sky, the image's own
uncertainty) are validated and resolved in `astro_dia.noise._detector`, the
master flat is loaded or recovered in `astro_dia.noise._flat`. `VarianceTerms`,
`refine_sky`, `uncertainty_variance` and `flat_from_uncertainty` are
importable from here.
"""

from dataclasses import replace

import numpy as np
from astropy import units as u
from astropy.nddata import NDData
from astropy.stats import mad_std

from ._detector import (COUNT_UNITS, EMCCD_COUNT_UNITS, compare_with_uncertainty,
                        require_count_unit, resolve_em_gain, resolve_gain, resolve_read_noise,
                        resolve_sky, sky_statistics, uncertainty_variance, validate_em_gain,
                        validate_gain, validate_read_noise, validate_sky)
from ._flat import flat_from_uncertainty, flat_recoverable, load_flat
from ._variance_terms import VarianceTerms, refine_sky

# Settings of the checks, defined where they are applied and importable from here as before.
from ._detector import SKY_ESTIMATED, SKY_EXCESS_THRESHOLD, SKY_ZERO_SIGMAS  # noqa: F401, E402
from ._detector import UNCERTAINTY_DISAGREEMENT  # noqa: F401, E402
from ._flat import CCDPROC_FLAT_KEYS  # noqa: F401, E402

__all__ = ["VarianceTerms", "NoiseModel", "CCDNoiseModel", "EMCCDNoiseModel",
           "UniformNoiseModel", "UncertaintyNoiseModel", "make_noise_model",
           "uncertainty_variance", "flat_from_uncertainty", "refine_sky"]

#: Sky pixels of EMCCD data in electrons scattering with less than this
#: fraction of the predicted variance are taken for photo-electrons.
SCATTER_DEFICIT_THRESHOLD = 0.1


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

    def refines(self, terms, stage):
        """
        Whether :meth:`refine` changes ``terms`` at ``stage`` of a fit.

        The imager asks first, so that a model without a refinement costs
        the fit nothing. False here; a subclass that refines overrides both
        methods.

        Parameters
        ----------
        terms : `VarianceTerms`
            The terms this model resolved for the target (whole image).
        stage : {'start', 'fit'}
            ``'start'``: the linear starting solution, before the exact
            objective is minimised. ``'fit'``: the converged fit; the
            imager resumes the fit with the refined terms.

        Returns
        -------
        refines : bool
        """
        return False

    def refine(self, terms, model, residual, mask, *, region, stage):
        """
        Refine the target's terms from a fit's model (unchanged here).

        The 'uniform' model sets its constant from the residuals of the
        start, the CCD and EMCCD models refit a sky they had to estimate
        from the residuals of the fit.

        Parameters
        ----------
        terms : `VarianceTerms`
            The current terms of the whole image; not modified.
        model, residual : ndarray
            The model and ``target - model`` on ``region``.
        mask : bool ndarray
            The fitted pixels of ``region``.
        region : tuple of slice
            Where the convolution is defined, the fit's pixels.
        stage : {'start', 'fit'}
            As for :meth:`refines`.

        Returns
        -------
        terms : `VarianceTerms`
            The refined terms of the whole image.
        """
        return terms

    def __repr__(self):
        return f"{type(self).__name__}()"


class _PhotonNoiseModel(NoiseModel):
    """Shared resolution of gain, flat and sky for the CCD and EMCCD models."""

    def __init__(self, *, gain=None, read_noise=None, flat=None, sky=None):
        self.gain = gain
        self.read_noise = read_noise
        self.flat = flat
        self.sky = sky
        # Validate what can be checked without an image, here rather than at the fit;
        # the same validators check the values again where the image is resolved.
        if gain is not None:
            validate_gain(gain)
        if read_noise is not None:
            validate_read_noise(read_noise)
        if sky is not None:
            validate_sky(sky)
        if flat is not None and not isinstance(flat, NDData) and np.ndim(flat) == 0:
            load_flat(flat, None, None, self.name)

    def _photon_terms(self, image, mask):
        """Subclasses: return (constant, slope, minimum, settings) before sky handling."""
        raise NotImplementedError

    #: Data units the model accepts.
    count_units = COUNT_UNITS

    def variance_terms(self, image, *, mask=None):
        unit = require_count_unit(image, self.name, self.count_units)
        shape = np.shape(image.data)
        recovered = None
        if self.flat is None and flat_recoverable(image):
            recovered = self._recover_flat(image, unit, mask)
        if recovered is not None:
            flat, bad, flat_source, implied_constant = recovered
        else:
            flat, bad, flat_source = load_flat(self.flat, image, shape, self.name)
        constant, slope, minimum, settings = self._photon_terms(image, unit, flat)
        settings["flat"] = flat_source
        if recovered is not None:
            settings["uncertainty_constant"] = (
                implied_constant, "data unit squared: the constant variance (read noise, and "
                "any bias level counted as signal) of the propagated uncertainty")
        terms = VarianceTerms(constant=constant, slope=slope, minimum=minimum, bad=bad,
                              settings=settings)
        terms.offset, settings["sky"] = resolve_sky(self.sky, image, unit, terms, mask)
        compare_with_uncertainty(image, terms, mask, self.name)
        return terms

    def _recover_flat(self, image, unit, mask):
        """Subclasses: (flat, bad, source, constant) from the image's uncertainty, or None."""
        return None

    def refines(self, terms, stage):
        # A sky estimated from the image's scatter is refitted from the fit's residuals.
        return stage == "fit" and terms.settings.get("sky") == SKY_ESTIMATED

    def refine(self, terms, model, residual, mask, *, region, stage):
        if not self.refines(terms, stage):
            return terms
        return replace(terms, offset=refine_sky(terms.cropped(region), model, residual, mask))


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
        g, _ = resolve_gain(self.gain, image, unit, self.name)
        flat, constant = flat_from_uncertainty(image, g, mask=mask)
        bad = ~np.isfinite(flat) | (flat <= 0)
        source = ("recovered from the ccdproc-propagated uncertainty (flat_correct in the "
                  "header log, no flat file named)")
        return np.where(bad, 1.0, flat), (bad if bad.any() else None), source, constant

    def _photon_terms(self, image, unit, flat):
        g, gain_source = resolve_gain(self.gain, image, unit, self.name)
        read_noise, rn_source = resolve_read_noise(
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
    count_units = EMCCD_COUNT_UNITS

    def __init__(self, *, gain=None, em_gain=None, excess_noise_factor=2.0, read_noise=None,
                 flat=None, sky=None):
        super().__init__(gain=gain, read_noise=read_noise, flat=flat, sky=sky)
        self.em_gain = em_gain
        self.excess_noise_factor = float(excess_noise_factor)
        if not np.isfinite(self.excess_noise_factor) or self.excess_noise_factor < 1:
            raise ValueError(
                f"excess_noise_factor must be finite and at least 1, got {excess_noise_factor}")
        if em_gain is not None:
            validate_em_gain(em_gain, "argument em_gain")

    def _photon_terms(self, image, unit, flat):
        em_gain, em_source = resolve_em_gain(self.em_gain, image)
        if unit == u.photon:
            # output electrons per photo-electron
            g, gain_source = em_gain, "data in photo-electrons (photon): the EM gain"
            if isinstance(self.read_noise, u.Quantity) and self.read_noise.unit == u.adu:
                raise u.UnitsError(
                    "read_noise is in adu but the data are in photo-electrons (photon); give "
                    "it in electrons of the output amplifier")
        else:
            g, gain_source = resolve_gain(self.gain, image, unit, self.name)
        read_noise, rn_source = resolve_read_noise(
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
        stats = sky_statistics(image, mask)
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

    def refines(self, terms, stage):
        # The constant is set from the residuals of the start.
        return stage == "start" and terms.estimate_scale

    def refine(self, terms, model, residual, mask, *, region, stage):
        if not self.refines(terms, stage):
            return terms
        sigma = float(mad_std(residual[mask]))
        return replace(terms, constant=max(sigma, 1e-30) ** 2)


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
