"""
Candidates sharper than the target PSF: the SHARP flag of `find_transients` (private).

A real change, a transient or a variable star, has the shape of the target
PSF on the difference image (the reference PSF convolved with the kernel).
A cosmic ray or a hot pixel of the target is sharper: nearly all of its
flux sits in one to three pixels, so the brightest pixel of its stamp holds
far more than a PSF of the same fitted flux would put there.

`peak_excess` measures that for each candidate. The target PSF ``phi`` is
fitted at the candidate's position (linear weighted least squares over the
PSF-photometry fit box, masked pixels left out), which gives the flux
``f``; then, over the 3 x 3 pixels round the position, the excess of the
data over the fit, ``e_i = sign * (D_i - f phi_i)``, is divided by the
pixel's standard deviation ``sqrt(V_i)`` (and by the scatter of the
significance image when that is calibrated, so it is in the same sigma as
``snr``). The pixel with the largest ratio gives

- ``peak_excess_snr``: that ratio, about the largest of nine normal
  deviates (1.5 on average, beyond 5 once in 10^5 candidates) for a real
  point source, and, for a single hot pixel detected at significance S,
  about ``S (1 - rho**2) / rho`` with ``rho = phi_max / sqrt(sum phi**2)``
  (16 at S = 5 for a Gaussian PSF of FWHM 4.5 pixels, 9 for 3 pixels and 5
  for 2 pixels);
- ``peak_excess``: the same excess over ``f phi_max``, the PSF fit's own
  brightest pixel: near 0 for a point source, ``sum(phi**2) / phi_max**2 - 1``
  for a hot pixel (11, 4.4 and 1.5 for those PSFs), somewhat less for a
  cosmic ray of two or three pixels.

A candidate is SHARP when both exceed their thresholds: ``SHARP_SIGMA``
makes the flag a matter of significance, so that noise does not mark faint
real sources, and ``SHARP_RELATIVE`` a matter of shape, so that a PSF model
slightly too broad in the core does not mark bright ones (a Gaussian fitted
to a Moffat star of beta 1.5, FWHM 2 pixels, leaves 0.18).

`star_flux` measures the flux of the star the model (``R (x) K + B``)
holds at each candidate's position, in an aperture of twice the FWHM less
the sky of an annulus. A candidate is a STAR_RESIDUAL when it sits on a star of the
model more than ``1 / STAR_RESIDUAL_FRACTION`` times brighter than itself
and its peak is sharper than the PSF (``peak_excess > SHARP_RELATIVE``,
``peak_excess_snr > STAR_RESIDUAL_SIGMA``): the core of a bright star that
the kernel matched imperfectly (a PSF that varies over the field, a core
undersampled or mismatched), not a change of its flux, which would have
the PSF's shape.
"""

import numpy as np

__all__ = []

#: Least significance (sigma) of the peak pixel's excess over the PSF fit for a SHARP candidate.
SHARP_SIGMA = 5.0
#: ... and least excess in units of the PSF fit's brightest pixel.
SHARP_RELATIVE = 0.5
#: Largest |candidate flux| / model star flux of a STAR_RESIDUAL.
STAR_RESIDUAL_FRACTION = 0.2
#: Least significance (sigma) of the peak excess of a STAR_RESIDUAL (a real source: 1.2% beyond).
STAR_RESIDUAL_SIGMA = 3.0


def _one_candidate(data, variance, good, psf, x, y, sign, half):
    """``(peak_excess, peak_excess_snr)`` of one candidate (NaN without good central pixels)."""
    ny, nx = data.shape
    xc, yc = int(np.rint(x)), int(np.rint(y))
    y0, y1 = max(yc - half, 0), min(yc + half + 1, ny)
    x0, x1 = max(xc - half, 0), min(xc + half + 1, nx)
    if y0 >= y1 or x0 >= x1:
        return np.nan, np.nan
    rows, cols = np.mgrid[y0:y1, x0:x1]
    usable = good[y0:y1, x0:x1]
    phi = np.asarray(psf(cols - x, rows - y), dtype=float)   # unit flux, centred at 0
    d = data[y0:y1, x0:x1]
    v = variance[y0:y1, x0:x1]
    weight = np.where(usable, 1.0 / np.where(usable, v, 1.0), 0.0)
    information = float((weight * phi ** 2).sum())
    if information <= 0:
        return np.nan, np.nan
    flux = float((weight * phi * np.where(usable, d, 0.0)).sum()) / information
    flux = max(sign * flux, 0.0)          # a PSF of the candidate's sign, or none
    central = usable & (np.abs(rows - yc) <= 1) & (np.abs(cols - xc) <= 1)
    if not central.any():
        return np.nan, np.nan
    excess = sign * d[central] - flux * phi[central]
    snr = excess / np.sqrt(v[central])
    best = int(np.argmax(snr))
    peak_model = flux * float(phi.max())
    ratio = excess[best] / peak_model if peak_model > 0 else np.inf
    return float(ratio), float(snr[best])


def peak_excess(arrays, psf, x, y, signs, half, scatter=1.0):
    """
    Excess of each candidate's brightest pixel over a PSF fit at its position.

    Parameters
    ----------
    arrays : tuple of (M, N) ndarray
        Data, variance and good-pixel mask of the difference image.
    psf : `astropy.modeling.Model`
        The unit-flux target PSF, centred at ``(0, 0)``, pixel-integrated.
    x, y : (n,) ndarray
        0-based pixel positions of the candidates.
    signs : (n,) ndarray
        +1 for a brightening, -1 for a fading candidate.
    half : int
        Half-side of the fit box (pixels).
    scatter : float, optional
        Robust scatter of the significance image that ``snr`` was divided
        by; the excess's significance is divided by it too.

    Returns
    -------
    excess : (n,) ndarray
        The excess of the most significant of the 3 x 3 central pixels
        over the fit, in units of the fit's brightest pixel (``inf`` when
        the fit has no flux of the candidate's sign, NaN when no central
        pixel is good).
    excess_snr : (n,) ndarray
        That pixel's excess over its standard deviation.
    """
    data, variance, good = arrays
    out = np.full((2, len(x)), np.nan)
    for i, (xi, yi, sign) in enumerate(zip(x, y, signs)):
        if np.isfinite(xi) and np.isfinite(yi):
            out[:, i] = _one_candidate(data, variance, good, psf, float(xi), float(yi),
                                       float(sign), int(half))
    return out[0], out[1] / scatter


def is_sharp(excess, excess_snr):
    """Whether a candidate's peak excess makes it SHARP (NaN never does)."""
    with np.errstate(invalid="ignore"):
        return (excess_snr > SHARP_SIGMA) & (excess > SHARP_RELATIVE)


def star_flux(model, good, x, y, fwhm):
    """
    Flux of the model's star at each candidate's position.

    Parameters
    ----------
    model : (M, N) ndarray
        The model ``R (x) K + B`` (NaN where undefined).
    good : (M, N) bool ndarray
        Pixels to use.
    x, y : (n,) ndarray
        0-based pixel positions of the candidates.
    fwhm : float
        FWHM of the target PSF (pixels).

    Returns
    -------
    flux : (n,) ndarray
        The model's sum in a circle of radius ``2 fwhm`` less the median
        of an annulus of radii 3 and 4 ``fwhm`` (photutils apertures), in
        the model's unit; NaN where undefined.
    """
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture

    model = np.asarray(model, dtype=float)
    bad = ~good | ~np.isfinite(model)
    flux = np.full(len(x), np.nan)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return flux
    positions = np.column_stack([x[ok], y[ok]])
    inner = ApertureStats(model, CircularAperture(positions, 2.0 * fwhm), mask=bad)
    sky = ApertureStats(model, CircularAnnulus(positions, 3.0 * fwhm, 4.0 * fwhm), mask=bad)
    flux[ok] = np.atleast_1d(inner.sum - sky.median * inner.sum_aper_area.value)
    return flux


def is_star_residual(excess, excess_snr, flux, model_flux):
    """Whether a candidate is the sharp residual of a much brighter star (NaN never is)."""
    with np.errstate(invalid="ignore"):
        return ((excess > SHARP_RELATIVE) & (excess_snr > STAR_RESIDUAL_SIGMA)
                & (np.abs(flux) < STAR_RESIDUAL_FRACTION * model_flux))
