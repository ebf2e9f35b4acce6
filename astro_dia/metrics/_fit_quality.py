"""
Fit-quality and photometric metrics of paper section 3.2 (eq. 27-33).

These are the yardsticks of the validation experiments: how well a model
image matches the truth (MSE), whether its residuals are unbiased and of
unit variance in units of the noise (MFB, MFV), and how photometry on the
difference image compares with the theoretical minimum variance (MPB, MPV).
All these functions take plain arrays (or Quantities with matching units)
and return Python floats.

`flux_ratio` is the yardstick of a fitted scale factor on real frames,
where no truth is known: the photometric ratio target / reference measured
by aperture photometry of stars, independently of any kernel fit.
"""

import numpy as np

from ._flux_ratio import FluxRatio, measure_flux_ratio

__all__ = ["signal_to_noise", "mean_squared_error", "mean_fit_bias", "mean_fit_variance",
           "minimum_flux_variance", "mean_photometric_bias", "mean_photometric_variance",
           "flux_ratio", "FluxRatio"]


def _pixels(arrays, mask):
    """The arrays (same shape) at the pixels where ``mask`` is False and all are finite."""
    arrays = [np.asarray(getattr(a, "value", a), dtype=float) for a in arrays]
    shape = arrays[0].shape
    for array in arrays[1:]:
        if array.shape != shape and array.ndim != 0:
            raise ValueError(f"arrays must have the same shape, got {shape} and {array.shape}")
    arrays = [np.broadcast_to(a, shape) for a in arrays]
    keep = np.ones(shape, bool) if mask is None else ~np.broadcast_to(np.asarray(mask, bool),
                                                                       shape)
    for array in arrays:
        keep &= np.isfinite(array)
    if not keep.any():
        raise ValueError("no unmasked finite pixel to evaluate the metric on")
    return [a[keep] for a in arrays]


def signal_to_noise(target_noiseless, sky, sigma, *, mask=None):
    """
    Signal-to-noise ratio of a target image (paper eq. 27).

    .. math:: {\\rm SNR}_I = \\sum (I_{\\rm noiseless} - S_I) / \\sqrt{\\sum \\sigma_I^2}

    Parameters
    ----------
    target_noiseless : (M, N) array_like
        The noiseless target.
    sky : float or (M, N) array_like
        Its sky level.
    sigma : (M, N) array_like
        Pixel standard deviations.
    mask : (M, N) bool array_like, optional
        Pixels to leave out.

    Returns
    -------
    snr : float

    Examples
    --------
    >>> import numpy as np
    >>> signal_to_noise(np.full((2, 2), 110.0), 100.0, np.full((2, 2), 10.0))
    2.0
    """
    clean, sky, sigma = _pixels([target_noiseless, sky, sigma], mask)
    return float(np.sum(clean - sky) / np.sqrt(np.sum(sigma ** 2)))


def mean_squared_error(model, target_noiseless, *, mask=None):
    """
    Mean squared error of a model image against the noiseless target (eq. 28).

    Parameters
    ----------
    model, target_noiseless : (M, N) array_like
    mask : (M, N) bool array_like, optional
        Pixels to leave out (NaN pixels are left out too).

    Returns
    -------
    mse : float

    Examples
    --------
    >>> import numpy as np
    >>> mean_squared_error(np.full((3, 3), 2.0), np.zeros((3, 3)))
    4.0
    """
    model, clean = _pixels([model, target_noiseless], mask)
    return float(np.mean((model - clean) ** 2))


def mean_fit_bias(data, model, sigma, *, mask=None):
    """
    Mean fit bias, the mean normalised residual (eq. 29).

    Parameters
    ----------
    data, model : (M, N) array_like
        The noisy target and the model.
    sigma : (M, N) array_like
        Pixel standard deviations of the target.
    mask : (M, N) bool array_like, optional

    Returns
    -------
    mfb : float
        Zero for an unbiased fit.
    """
    data, model, sigma = _pixels([data, model, sigma], mask)
    return float(np.mean((data - model) / sigma))


def mean_fit_variance(data, model, sigma, *, mask=None):
    """
    Mean fit variance, the variance of the normalised residuals (eq. 30).

    Parameters
    ----------
    data, model : (M, N) array_like
        The noisy target and the model.
    sigma : (M, N) array_like
        Pixel standard deviations of the target.
    mask : (M, N) bool array_like, optional

    Returns
    -------
    mfv : float
        One when the residuals match the noise; below one when the model
        over-fits.
    """
    data, model, sigma = _pixels([data, model, sigma], mask)
    z = (data - model) / sigma
    if z.size < 2:
        raise ValueError("the fit variance needs at least two pixels")
    return float(np.var(z, ddof=1))


def minimum_flux_variance(psf, sigma, *, scale_factor=1.0):
    """
    Theoretical minimum variance of a PSF-fitted flux on the reference scale (eq. 31).

    .. math::

        \\sigma_{\\min}^2 = \\frac{1}{P^2}
        \\left(\\sum_{rs} \\frac{\\mathcal{P}_{rs}^2}{\\sigma_{rs}^2}\\right)^{-1}

    Parameters
    ----------
    psf : (M, N) array_like
        The normalised PSF of the target on the photometry stamp.
    sigma : float or (M, N) array_like
        Pixel standard deviations on the stamp.
    scale_factor : float, optional
        True photometric scale factor P.

    Returns
    -------
    variance : float

    Examples
    --------
    A PSF in a single pixel, with unit noise, measured at P = 2:

    >>> import numpy as np
    >>> psf = np.zeros((3, 3)); psf[1, 1] = 1.0
    >>> minimum_flux_variance(psf, 1.0, scale_factor=2.0)
    0.25
    """
    psf, sigma = _pixels([psf, sigma], None)
    information = np.sum(psf ** 2 / sigma ** 2)
    if not information > 0:
        raise ValueError("the PSF carries no information (all zero on the stamp)")
    return float(1.0 / (scale_factor ** 2 * information))


def _normalised_fluxes(flux, sigma_min):
    flux = np.asarray(getattr(flux, "value", flux), dtype=float)
    sigma_min = np.asarray(getattr(sigma_min, "value", sigma_min), dtype=float)
    ratio = np.broadcast_to(flux / sigma_min, np.broadcast_shapes(flux.shape, sigma_min.shape))
    return ratio[np.isfinite(ratio)].ravel()


def mean_photometric_bias(flux, sigma_min):
    """
    Mean photometric bias over simulations (eq. 32).

    Parameters
    ----------
    flux : array_like
        Measured flux (minus the true flux) of each simulation, on the
        reference scale.
    sigma_min : float or array_like
        The theoretical minimum standard deviation of each (eq. 31).

    Returns
    -------
    mpb : float
        Zero for unbiased photometry.

    Examples
    --------
    >>> mean_photometric_bias([1.0, -1.0, 2.0], 1.0)
    0.6666666666666666
    """
    ratio = _normalised_fluxes(flux, sigma_min)
    if ratio.size == 0:
        raise ValueError("no finite flux to average")
    return float(np.mean(ratio))


def mean_photometric_variance(flux, sigma_min):
    """
    Mean photometric variance over simulations (eq. 33).

    Parameters
    ----------
    flux : array_like
        Measured flux (minus the true flux) of each simulation, on the
        reference scale.
    sigma_min : float or array_like
        The theoretical minimum standard deviation of each (eq. 31).

    Returns
    -------
    mpv : float
        One when the photometry reaches the theoretical minimum variance.

    Examples
    --------
    >>> mean_photometric_variance([1.0, -1.0, 1.0, -1.0], 1.0)  # doctest: +FLOAT_CMP
    1.3333333333333333
    """
    ratio = _normalised_fluxes(flux, sigma_min)
    if ratio.size < 2:
        raise ValueError("the photometric variance needs at least two simulations")
    return float(np.var(ratio, ddof=1))


def flux_ratio(reference, target, *, positions=None, fwhm=None, saturation=None,
               aperture_radius=3.0, annulus_radii=(4.0, 6.0), isolation_radius=None,
               neighbour_fraction=0.25, snr_min=20.0, detection_threshold=5.0, clip=4.0,
               min_stars=5):
    """
    Photometric scale factor P measured by aperture photometry of stars.

    An estimate of the ratio target / reference of stellar fluxes that is
    independent of any kernel fit, to check the scale factor of a
    difference-imaging fit (``result.scale_factor``) on real frames.
    Stars are found in the reference with photutils
    `~photutils.detection.DAOStarFinder`; those that are bright (signal
    to noise at least ``snr_min`` in both frames), isolated (no source with
    ``neighbour_fraction`` of their peak or more within
    ``isolation_radius``), unsaturated (no pixel at or above 90% of the
    saturation level in either frame within ``isolation_radius``), free of
    masked pixels and far enough from the edges are measured in the same
    circular apertures in both frames, each minus the mean of an annulus
    around it times the aperture area (photutils
    `~photutils.aperture.ApertureStats`).

    Parameters
    ----------
    reference, target : `~astropy.nddata.NDData`, `~astropy.units.Quantity` or (M, N) ndarray
        The two frames on the same pixel grid (register them first; a
        sub-pixel offset does not matter). Masks, units and uncertainties
        of NDData (CCDData) inputs are used; the inputs are not changed.
    positions : (N, 2) array_like or `~astropy.table.Table`, optional
        ``(x, y)`` of the stars to measure (0-based pixels), or a table
        with ``x`` and ``y`` columns; by default every source detected in
        the reference. The selection above still applies.
    fwhm : float or (float, float), optional
        FWHM (pixels) of the reference and target PSFs, one value for
        both. By default each is the median of circular Gaussians fitted
        (photutils `~photutils.psf.fit_fwhm`) to the 25 brightest
        unsaturated peaks of the reference.
    saturation : float or `~astropy.units.Quantity`, optional
        Saturation level of both frames (data unit). By default the
        SATURATE or SATLEVEL keyword of each frame's header, and no
        saturation check where there is none.
    aperture_radius : float, optional
        Aperture radius in units of the larger of the two FWHMs.
    annulus_radii : (float, float), optional
        Inner and outer radius of the background annulus, in the same
        units; ``aperture_radius < inner < outer``. Stars whose aperture
        is not wholly in the frame are left out; an annulus may overlap an
        edge.
    isolation_radius : float, optional
        Radius (larger FWHM units) free of comparable neighbours and of
        saturated or masked pixels; default ``aperture_radius + 1.5``.
    neighbour_fraction : float, optional
        A source within ``isolation_radius`` whose peak is at least this
        fraction of the star's disqualifies the star.
    snr_min : float, optional
        Least signal-to-noise ratio of a star's flux in each frame.
    detection_threshold : float, optional
        Detection threshold of the reference's sources, in units of the
        frame's sigma-clipped standard deviation.
    clip : float, optional
        Per-star ratios further than ``clip`` times their error (with the
        extra scatter added) from the mean are rejected (variable stars,
        unseen blends, cosmic rays).
    min_stars : int, optional
        Fewest stars to combine.

    Returns
    -------
    result : `FluxRatio`
        ``ratio`` (P), ``ratio_err``, ``n_stars``, ``fwhm`` (reference,
        target), ``aperture_radius`` (pixels), ``scatter`` and the
        per-star table ``stars``.

    Raises
    ------
    TypeError
        If an image is not NDData, a Quantity or an array.
    ValueError
        For images of different shapes, a bad setting, or fewer than
        ``min_stars`` usable stars (the message says what to relax).
    astropy.units.UnitsError
        If the two images have units that cannot be converted into each
        other, or ``saturation`` is in another unit.

    Notes
    -----
    The background is the annulus mean, not a clipped median: a linear
    estimate treats the light of faint neighbours alike in the two frames,
    whatever their noise and seeing (a clipped median of the annulus
    biased P by 2% on simulated pairs with a noisier target).

    Each star's ratio :math:`r_i = F_{I,i} / F_{R,i}` has an error
    :math:`e_i` from the pixel noise (the images' uncertainties, or the
    scatter of the annulus pixels when there are none) and from the
    background. The ratios are combined by the DerSimonian-Laird
    random-effects weighted mean, weights :math:`1 / (e_i^2 + \\tau^2)`,
    with :math:`\\tau^2` the scatter not explained by the :math:`e_i`
    (flat-field errors, faint blends, the stars' own photon noise when no
    uncertainty was given). The error is
    :math:`\\sigma_P^2 = \\max(1, q) / \\sum w_i` with :math:`q` the reduced
    :math:`\\chi^2` of the ratios about the mean (Knapp-Hartung), so that it
    is never smaller than their observed scatter allows.

    Apertures of the same radius in both frames lose a different
    fraction of the light of PSFs of different width. Three times the
    larger FWHM keeps the loss below a few tenths of a percent for
    Gaussian-like PSFs; on broad-winged (Moffat) PSFs with very
    different seeing, check that the ratio does not change with
    ``aperture_radius``.

    Examples
    --------
    >>> from astro_dia.metrics import flux_ratio
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, target, truth = make_image_pair(shape=(400, 400), scale_factor=1.1,
    ...                                            target_sky=100.0, seed=4)
    >>> measured = flux_ratio(reference, target)
    >>> print(f"P = {measured.ratio:.3f} +- {measured.ratio_err:.3f}")
    P = 1.106 +- 0.003
    >>> abs(measured.ratio - truth.scale_factor) < 3 * measured.ratio_err, measured.n_stars >= 5
    (True, True)
    """
    return measure_flux_ratio(
        reference, target, positions=positions, fwhm=fwhm, saturation=saturation,
        aperture_radius=aperture_radius, annulus_radii=annulus_radii,
        isolation_radius=isolation_radius, neighbour_fraction=neighbour_fraction,
        snr_min=snr_min, detection_threshold=detection_threshold, clip=clip,
        min_stars=min_stars)
