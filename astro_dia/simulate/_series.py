"""
Simulated time series with variable stars (private).

This module owns `make_variable_series` and its truth `VariableSeriesTruth`
(both re-exported by `astro_dia.simulate`): one star field, as in
`astro_dia.simulate.make_image_pair`, observed at many epochs with changing
seeing, transparency, sky and pointing, and variable stars added.
"""

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.table import QTable

from ._star_field import make_star_field, render_stars

__all__ = []


@dataclass
class VariableSeriesTruth:
    """
    What a simulated time series (`make_variable_series`) was made from.

    Attributes
    ----------
    variables : `~astropy.table.QTable`
        The variable stars: ``id``, ``x``, ``y`` (0-based pixels),
        ``flux`` (mean flux in the reference, adu), ``amplitude`` (adu,
        reference scale), ``phase`` (radians) and ``period`` (days).
    times : `~astropy.time.Time`
        Observation time of each epoch (also in the DATE-OBS and MJD-OBS
        keywords).
    flux_change : (n_epochs, n_variables) ndarray
        True flux of each variable minus its reference flux, on the
        reference's photometric scale: ``amplitude * sin(2 pi (t - t0) /
        period + phase)``, ``t0`` the first epoch.
    scale_factor, kernel_sigma, background : (n_epochs,) ndarray
        True P, kernel width (pixels) and B0 of each epoch.
    shift : (n_epochs, 2) ndarray
        Sub-pixel shift ``(dy, dx)`` of each epoch.
    target_variance : list of ndarray
        The variance each target's noise was drawn with.
    stars : `~astropy.table.QTable`
        The constant stars.
    settings : dict
        The scalar settings.
    """

    variables: QTable
    times: object
    flux_change: np.ndarray
    scale_factor: np.ndarray
    kernel_sigma: np.ndarray
    background: np.ndarray
    shift: np.ndarray
    target_variance: list
    stars: QTable
    settings: dict = field(default_factory=dict)


def _per_epoch(value, n, rng, name):
    """A fixed value, or a uniform draw per epoch from a (low, high) range."""
    value = np.asarray(value, dtype=float)
    if value.ndim == 0:
        return np.full(n, float(value))
    if value.shape != (2,) or not value[0] <= value[1]:
        raise ValueError(f"{name} must be a number or a (low, high) range, got {value}")
    return rng.uniform(value[0], value[1], n)


def make_variable_series(n_epochs=20, *, shape=(64, 64), n_variables=1, variable_flux=3000.0,
                         amplitude=2000.0, period=10.0, start_mjd=60000.0, cadence=1.0,
                         psf_sigma=1.5, kernel_sigma=(0.5, 1.5), scale_factor=(0.8, 1.2),
                         shift=0.3, density=30.0, reference_sky=100.0, target_sky=(200.0, 400.0),
                         gain=1.0, read_noise=5.0, reference_variance_ratio=0.1, margin=12,
                         min_separation=12.0, seed=None):
    """
    Simulate a reference and a time series of targets with variable stars.

    One star field (as in `make_image_pair`) is observed at ``n_epochs``
    times with a changing seeing (kernel width), transparency (scale
    factor), sky and pointing (sub-pixel shift); ``n_variables`` extra
    stars vary sinusoidally, each with its own phase. The reference is
    a stack (``reference_variance_ratio`` times the variance of one
    exposure) in which the variables have their mean flux.

    Parameters
    ----------
    n_epochs : int, optional
        Number of targets.
    shape : tuple of int, optional
        ``(ny, nx)``.
    n_variables : int, optional
        Number of variable stars, placed at random at least ``margin``
        pixels from the edges and ``min_separation`` pixels from each
        other (so that their PSFs do not blend).
    variable_flux : float, optional
        Mean (reference) flux of the variables (adu).
    amplitude : float or array_like, optional
        Semi-amplitude of the flux change (adu, reference scale), one
        value or one per variable.
    period : float, optional
        Period (days).
    start_mjd, cadence : float, optional
        MJD of the first epoch and days between epochs.
    psf_sigma : float, optional
        Reference PSF standard deviation (pixels).
    kernel_sigma, scale_factor, target_sky : float or (float, float), optional
        Kernel width (pixels), P and sky (adu) of the targets: a fixed value
        or a range drawn uniformly per epoch.
    shift : float, optional
        The per-epoch shifts are uniform in ``[-shift, shift]`` pixels.
    density : float, optional
        Constant stars per 100 x 100 pixels.
    reference_sky : float, optional
        Reference sky (adu).
    gain, read_noise : float, optional
        e-/adu and adu, written to GAIN and RDNOISE (in e-).
    reference_variance_ratio : float, optional
        Reference variance over that of one exposure.
    margin : float, optional
        Smallest distance (pixels) of a variable from the edges.
    min_separation : float, optional
        Smallest distance (pixels) between two variables.
    seed : int or `numpy.random.Generator`, optional

    Returns
    -------
    reference : `~astropy.nddata.CCDData`
    targets : list of `~astropy.nddata.CCDData`
        In adu, with uncertainties and DATE-OBS/MJD-OBS keywords.
    truth : `VariableSeriesTruth`

    Examples
    --------
    >>> reference, targets, truth = make_variable_series(3, n_variables=2, seed=0)
    >>> len(targets), targets[0].header["MJD-OBS"], truth.flux_change.shape
    (3, 60000.0, (3, 2))
    """
    from astropy.time import Time

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    n_epochs, n_variables = int(n_epochs), int(n_variables)
    if n_epochs < 1 or n_variables < 0:
        raise ValueError(f"n_epochs must be >= 1 and n_variables >= 0, got {n_epochs} and "
                         f"{n_variables}")
    if min(shape) <= 2 * margin:
        raise ValueError(f"margin {margin} leaves no room for the variables in shape {shape}")
    amplitude = np.broadcast_to(np.asarray(amplitude, dtype=float), (n_variables,)).copy()
    if (np.abs(amplitude) > variable_flux).any():
        raise ValueError("amplitude must not exceed variable_flux (the flux would be negative)")
    stars = make_star_field(shape, density=density, seed=rng, bright_star_center=False)
    xy = np.empty((0, 2))
    for _ in range(1000 * max(n_variables, 1)):
        if len(xy) == n_variables:
            break
        candidate = rng.uniform(margin, np.array(shape[::-1]) - 1 - margin)
        if len(xy) == 0 or np.hypot(*(xy - candidate).T).min() >= min_separation:
            xy = np.vstack([xy, candidate])
    if len(xy) < n_variables:
        raise ValueError(f"cannot place {n_variables} variables {min_separation} pixels apart "
                         f"in shape {shape} with margin {margin}; ask for fewer")
    variables = QTable({
        "id": np.arange(1, n_variables + 1),
        "x": xy[:, 0],
        "y": xy[:, 1],
        "flux": np.full(n_variables, float(variable_flux)),
        "amplitude": amplitude,
        "phase": rng.uniform(0, 2 * np.pi, n_variables),
        "period": np.full(n_variables, float(period)),
    })
    mjd = start_mjd + cadence * np.arange(n_epochs)
    flux_change = amplitude * np.sin(2 * np.pi * (mjd[:, None] - mjd[0]) / period
                                     + np.asarray(variables["phase"])[None, :])
    kernel_sigmas = _per_epoch(kernel_sigma, n_epochs, rng, "kernel_sigma")
    scale_factors = _per_epoch(scale_factor, n_epochs, rng, "scale_factor")
    skies = _per_epoch(target_sky, n_epochs, rng, "target_sky")
    shifts = rng.uniform(-shift, shift, (n_epochs, 2))
    constant = QTable({"x": np.concatenate([stars["x"], variables["x"]]),
                       "y": np.concatenate([stars["y"], variables["y"]]),
                       "flux": np.concatenate([stars["flux"], variables["flux"]])})

    reference_clean = render_stars(shape, constant, psf_sigma) + reference_sky
    reference_var = reference_variance_ratio * (read_noise ** 2 + reference_clean / gain)
    reference = reference_clean + rng.standard_normal(shape) * np.sqrt(reference_var)
    header = fits.Header()
    header["GAIN"] = (gain / reference_variance_ratio, "e-/adu (effective, for a stack)")
    header["RDNOISE"] = (float(np.sqrt(reference_variance_ratio) * read_noise * gain
                               / reference_variance_ratio), "read noise (e-)")
    reference = CCDData(reference, unit="adu", meta=header,
                        uncertainty=StdDevUncertainty(np.sqrt(reference_var)))

    times = Time(mjd, format="mjd", scale="utc")
    targets, variances = [], []
    for k in range(n_epochs):
        sigma = float(np.hypot(psf_sigma, kernel_sigmas[k]))
        dy, dx = shifts[k]
        changed = QTable({"x": variables["x"], "y": variables["y"], "flux": flux_change[k]})
        clean = (render_stars(shape, constant, sigma, dx=dx, dy=dy, flux_scale=scale_factors[k])
                 + render_stars(shape, changed, sigma, dx=dx, dy=dy, flux_scale=scale_factors[k])
                 + skies[k])
        variance = read_noise ** 2 + clean / gain
        data = clean + rng.standard_normal(shape) * np.sqrt(variance)
        header = fits.Header()
        header["GAIN"] = (gain, "e-/adu")
        header["RDNOISE"] = (read_noise * gain, "read noise (e-)")
        header["DATE-OBS"] = (times[k].isot, "observation time (UTC)")
        header["MJD-OBS"] = (float(mjd[k]), "observation time (MJD, UTC)")
        targets.append(CCDData(data, unit="adu", meta=header,
                               uncertainty=StdDevUncertainty(np.sqrt(variance))))
        variances.append(variance)
    truth = VariableSeriesTruth(
        variables=variables, times=times, flux_change=flux_change, scale_factor=scale_factors,
        kernel_sigma=kernel_sigmas, background=skies - scale_factors * reference_sky,
        shift=shifts, target_variance=variances, stars=stars,
        settings=dict(psf_sigma=psf_sigma, gain=gain, read_noise=read_noise,
                      reference_variance_ratio=reference_variance_ratio, period=period))
    return reference, targets, truth
