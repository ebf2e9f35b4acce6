"""
Fit-quality and photometric metrics of paper section 3.2 (eq. 27-33).

These are the yardsticks of the validation experiments: how well a model
image matches the truth (MSE), whether its residuals are unbiased and of
unit variance in units of the noise (MFB, MFV), and how photometry on the
difference image compares with the theoretical minimum variance (MPB, MPV).
All functions take plain arrays (or Quantities with matching units) and
return Python floats.
"""

import numpy as np

__all__ = ["signal_to_noise", "mean_squared_error", "mean_fit_bias", "mean_fit_variance",
           "minimum_flux_variance", "mean_photometric_bias", "mean_photometric_variance"]


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
