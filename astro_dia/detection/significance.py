"""
The matched-filter significance image of a difference image.

A point source of flux ``f`` at a pixel adds ``f * phi`` to the difference
image D, with ``phi`` the unit-flux target PSF (the reference PSF convolved
with the kernel, normalised by P; paper section 3.2). Its best linear
estimate from pixels of variance ``V`` and its significance are

    f_hat = (phi (*) D/V) / (phi**2 (*) 1/V),    S = (phi (*) D/V) / sqrt(phi**2 (*) 1/V),

with ``(*)`` the cross-correlation. Masked pixels get zero weight, so S
keeps unit variance next to them; positions where they take away more than
half of the PSF's weight are left undefined (NaN). This module owns that
filter, the choice of the target PSF, and the calibration of S to unit
robust scatter.
"""

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.stats import mad_std, sigma_clipped_stats
from astropy.utils.exceptions import AstropyUserWarning
from scipy import fft

from ..photometry.measure import _difference_inputs, _fit_shape, _pixels
from ..photometry.psf import _natural_size, gaussian_psf, render_psf, target_psf

__all__ = ["significance_image"]

#: Least fraction of the PSF's weight on good pixels for a defined significance.
MIN_COVERAGE = 0.5
#: Robust scatter of S outside which the difference's uncertainty is warned about.
SCATTER_RANGE = (0.8, 1.25)
_FWHM_STARS = 30   # bright stars of the model used to measure the FWHM
#: Precision of the Fourier transforms of the matched filters: single. Against double
#: precision it moved S by at most 5e-6 (in sigma) on 1000 x 1000 simulated differences,
#: at half the time; a pixel a million sigma off moves S by 0.05 next to it.
FILTER_DTYPE = np.float32
#: Fewest pixels of a significance image its robust scatter is measured on (`robust_scatter`).
SCATTER_PIXELS = 250_000


@dataclass
class MatchedFilter:
    """The target PSF behind a significance image (private record)."""

    psf: object           # unit-flux photutils model of the target PSF
    image: np.ndarray     # the PSF rendered on the pixel grid, unit sum
    fwhm: float           # FWHM of the target PSF (pixels)
    photometry_psf: object  # the PSF to give differential_photometry ...
    photometry_kernel: object  # ... with this kernel (None: the fit's own)

    @cached_property
    def fit_box(self):
        """The photometry's automatic fit box for ``psf`` (computed once)."""
        return _fit_shape(None, self.psf)

    @property
    def photometry_target(self):
        """``psf`` when it is the target PSF `differential_photometry` makes, else None."""
        return self.psf if self.photometry_kernel is None else None


def _difference_arrays(difference):
    """Data, variance and good-pixel mask of the difference, validated."""
    data, error, bad = _pixels(difference)   # checks the shape and the uncertainty
    mask = (np.zeros(data.shape, bool) if difference.mask is None
            else np.broadcast_to(np.asarray(difference.mask, bool), data.shape))
    unmasked_bad = ~mask & ~np.isfinite(np.asarray(difference.data, dtype=float))
    if unmasked_bad.any():
        raise ValueError(f"the difference image has {int(unmasked_bad.sum())} non-finite "
                         "pixels that its mask does not cover; mask them (difference.mask "
                         "|= ~np.isfinite(difference.data))")
    if bad.all():
        raise ValueError("every pixel of the difference image is masked or has no valid "
                         "uncertainty; nothing can be detected")
    return data, error ** 2, ~bad


def _measured_fwhm(fit):
    """FWHM (pixels) of the target PSF, fitted on bright isolated stars of the model."""
    from photutils.detection import find_peaks
    from photutils.psf import fit_fwhm
    from photutils.utils.exceptions import NoDetectionsWarning

    model = getattr(fit, "model", None)
    if model is None:
        raise ValueError("no reference_psf was given and the result holds no model image to "
                         "measure the PSF on; pass reference_psf= (e.g. "
                         "astro_dia.photometry.gaussian_psf(fwhm))")
    data = np.asarray(model.data, dtype=float)
    bad = ~np.isfinite(data)
    if fit.flags is not None:
        bad |= np.asarray(fit.flags) != 0
    _, median, std = sigma_clipped_stats(data, mask=bad)
    image = np.where(bad, 0.0, data - median)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        peaks = find_peaks(image, 20 * max(std, np.finfo(float).tiny), box_size=11,
                           mask=bad, border_width=8, n_peaks=4 * _FWHM_STARS)
    if peaks is None or len(peaks) < 3:
        raise ValueError("too few bright stars in the model image to measure the PSF "
                         "(fewer than 3); pass reference_psf=")
    peaks.sort("peak_value", reverse=True)
    xy = np.column_stack([peaks["x_peak"], peaks["y_peak"]])[:_FWHM_STARS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        fwhm = fit_fwhm(image, xypos=xy, fit_shape=7, mask=bad)
    fwhm = fwhm[np.isfinite(fwhm) & (fwhm > 0.5)]
    if fwhm.size < 3:
        raise ValueError("the PSF could not be measured on the model's stars; pass "
                         "reference_psf=")
    return float(np.median(fwhm))


def moment_fwhm(image):
    """
    FWHM (pixels) of the Gaussian with the second moment of a centred PSF image.

    Only the positive part counts: an empirical PSF's noisy negative wings,
    weighted by the squared radius, could make the moment negative.
    """
    image = np.clip(np.asarray(image, float), 0.0, None)
    half = image.shape[0] // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    return float(2.3548 * np.sqrt((image * (x ** 2 + y ** 2)).sum() / (2 * image.sum())))


def _filter_for(fit, reference_psf, kernel, shape):
    """The target PSF: ``reference_psf (x) kernel``, or a Gaussian measured on the model."""
    if reference_psf is None:
        fwhm = _measured_fwhm(fit)
        psf = gaussian_psf(fwhm)
        photometry_psf, photometry_kernel = psf, np.ones((1, 1))
    else:
        psf = target_psf(reference_psf, kernel)
        photometry_psf, photometry_kernel = reference_psf, (kernel if fit is None else None)
        fwhm = None
    size = _natural_size(psf)
    if size > min(shape):
        raise ValueError(f"the target PSF ({size} x {size} pixels) is larger than the image "
                         f"{shape}; use a smaller PSF or a larger image")
    image = render_psf(psf, size)
    image = image / image.sum()
    if fwhm is None:
        fwhm = moment_fwhm(image)
    return MatchedFilter(psf=psf, image=image, fwhm=float(fwhm), photometry_psf=photometry_psf,
                         photometry_kernel=photometry_kernel)


class FilterInputs:
    """
    The images a matched filter correlates, Fourier-transformed once (private).

    ``D / V``, ``1 / V`` (zero on bad pixels) and the good-pixel mask,
    transformed on a grid padded for kernels up to ``size`` pixels (enough
    zeros that the circular correlation is the linear one), so that any
    number of filters (the point source's, and the broader one of
    ``find_transients``' EXTENDED test) cost one inverse transform per image
    each. A larger kernel transforms them again on a larger grid. The
    convolutions are those of `scipy.signal.fftconvolve` (``mode='same'``,
    which pads to the same grid), in single precision (`FILTER_DTYPE`).
    """

    def __init__(self, data, variance, good, size, dtype=None):
        self.shape = data.shape
        self._dtype = FILTER_DTYPE if dtype is None else dtype
        weight = np.where(good, 1.0 / variance, 0.0)
        self._images = (np.asarray(data * weight, self._dtype), np.asarray(weight, self._dtype),
                        np.asarray(good, self._dtype))
        self._grid = None
        self._spectra = None
        self._fit(size)

    def _fit(self, size):
        needed = tuple(n + size - 1 for n in self.shape)
        if self._grid is None or any(g < n for g, n in zip(self._grid, needed)):
            self._grid = tuple(fft.next_fast_len(n, real=True) for n in needed)
            self._spectra = [fft.rfft2(image, s=self._grid) for image in self._images]

    def kernel_spectrum(self, kernel):
        """
        ``rfft2(kernel, s=grid)``, the grid enlarged first when the kernel needs it.

        The rows of zeros are left out of the first pass (along x).
        """
        self._fit(max(kernel.shape))
        rows = fft.rfft(np.asarray(kernel, self._dtype), n=self._grid[1], axis=1)
        return fft.fft(rows, n=self._grid[0], axis=0, overwrite_x=True)

    def convolve(self, which, spectrum, kernel_shape):
        """
        The image ``which`` (0: D/V, 1: 1/V, 2: good) convolved ('same') with a kernel.

        ``spectrum`` is the kernel's `kernel_spectrum`, ``kernel_shape`` its
        shape. In the transforms' precision.
        """
        full = fft.irfft2(self._spectra[which] * spectrum, s=self._grid, overwrite_x=True)
        (ny, nx), (ky, kx) = self.shape, kernel_shape
        y0, x0 = (ky - 1) // 2, (kx - 1) // 2
        return full[y0:y0 + ny, x0:x0 + nx]


def matched_filter(data, variance, good, psf_image, inputs=None):
    """Significance S and the good fraction of the PSF weight at every pixel (private).

    S has unit variance for independent Gaussian pixels of the given
    variance; NaN where less than `MIN_COVERAGE` of the weight is on good
    pixels, and on bad pixels. ``inputs`` (`FilterInputs` of the same
    arrays) saves transforming them again.
    """
    if inputs is None:
        inputs = FilterInputs(data, variance, good, max(psf_image.shape))
    flipped = psf_image[::-1, ::-1]
    squared = inputs.kernel_spectrum(flipped ** 2)
    numerator = inputs.convolve(0, inputs.kernel_spectrum(flipped), flipped.shape)
    information = inputs.convolve(1, squared, flipped.shape)
    coverage = inputs.convolve(2, squared, flipped.shape) / (psf_image ** 2).sum()
    defined = good & (coverage >= MIN_COVERAGE) & (information > 0)
    significance = np.full(data.shape, np.nan)
    np.divide(numerator, np.sqrt(information, where=defined, out=np.ones_like(information)),
              out=significance, where=defined)
    return significance


def robust_scatter(image):
    """
    Robust standard deviation (`~astropy.stats.mad_std`) of a significance image (private).

    On a large image, of every ``k``-th pixel along each axis, ``k`` the
    largest stride that leaves `SCATTER_PIXELS` pixels: a significance
    image is correlated over the PSF, so that a stride of a pixel or two
    keeps nearly all its independent values (on 1000 x 1000 simulated
    differences a stride of 2 moved the scatter by 0.01-0.07%, within the
    statistic's own noise), at a quarter of the cost. When fewer than a
    quarter of those are defined, all pixels are used.
    """
    stride = max(1, int(np.sqrt(image.size / SCATTER_PIXELS)))
    values = image[::stride, ::stride]
    values = values[np.isfinite(values)]
    if stride > 1 and values.size < SCATTER_PIXELS // 4:
        values = image[np.isfinite(image)]
    return float(mad_std(values))


def calibrate(significance, calibrate_scatter):
    """Divide S by its robust scatter when asked, and warn when that is far from 1."""
    scatter = robust_scatter(significance)
    if not np.isfinite(scatter) or scatter <= 0:
        raise ValueError("the significance image has no valid pixels")
    low, high = SCATTER_RANGE
    if not low <= scatter <= high:
        action = ("divided by it" if calibrate_scatter else
                  "not corrected (calibrate=False): thresholds are then not in sigma")
        warnings.warn(
            f"the significance image has a robust scatter of {scatter:.3g}, not 1: the "
            "difference's uncertainty misdescribes its noise (a noisy reference fitted "
            f"without reference_noise=True, or a wrong gain); {action}", AstropyUserWarning)
    return (significance / scatter if calibrate_scatter else significance), scatter


class ComputedSignificance(NamedTuple):
    """What `compute_significance` returns (private)."""

    significance: np.ndarray   # calibrated when asked; NaN where undefined
    scatter: float             # robust scatter of the raw significance
    psf_filter: MatchedFilter
    fit: object                # the fit, or None for a plain difference image
    difference: object         # the difference image (NDData)
    arrays: tuple              # data, variance, good of `_difference_arrays`
    inputs: FilterInputs       # their transforms, for more filters


def compute_significance(result, reference_psf=None, *, calibrate_scatter=True):
    """The significance array, the filter, the fit and its difference (private)."""
    fit, difference, _, _, kernel, _ = _difference_inputs(
        result, None, None, None, need_kernel=reference_psf is not None)
    data, variance, good = _difference_arrays(difference)
    psf_filter = _filter_for(fit, reference_psf, kernel, data.shape)
    inputs = FilterInputs(data, variance, good, max(psf_filter.image.shape))
    significance = matched_filter(data, variance, good, psf_filter.image, inputs)
    significance, scatter = calibrate(significance, calibrate_scatter)
    return ComputedSignificance(significance, scatter, psf_filter, fit, difference,
                                (data, variance, good), inputs)


def significance_image(result, reference_psf=None, *, calibrate=True):
    """
    The matched-filter signal-to-noise image of a difference image.

    Each pixel holds the S/N of a point source centred there: the
    difference cross-correlated with the target PSF and weighted by the
    difference's variance (which, with ``reference_noise=True``, includes
    the reference's noise through the kernel). Masked pixels get no
    weight; where they take away more than half of the PSF's weight, and on
    masked pixels, the significance is NaN and masked.

    Parameters
    ----------
    result : `~astro_dia.DifferenceResult` or `~astropy.nddata.CCDData`
        The fit, or a difference image with an uncertainty (and, with
        ``reference_psf``, the kernel in its header, as
        `~astro_dia.subtract_reference` writes it).
    reference_psf : `astropy.modeling.Model`, optional
        The reference PSF (`~astro_dia.photometry.gaussian_psf`,
        `~astro_dia.photometry.build_reference_psf`, ...); the target PSF
        is this convolved with the kernel. By default the target PSF is a
        circular Gaussian whose FWHM is fitted (photutils
        `~photutils.psf.fit_fwhm`) on the 30 brightest stars of
        ``result.model``.
    calibrate : bool, optional
        Divide by the robust standard deviation (`~astropy.stats.mad_std`)
        of the significance (on an image of a million pixels or more, of a
        regular subsample of at least 250,000), so that thresholds are in
        units of its real scatter (default). The factor is in
        ``meta['DIA_SSTD']``; far from 1 it is warned about.

    Returns
    -------
    significance : `~astropy.nddata.CCDData`
        Dimensionless S/N image with the difference's WCS, a mask of the
        undefined pixels, and in ``meta`` the FWHM of the target PSF
        (``DIA_SFWH``) and the scatter (``DIA_SSTD``).

    Raises
    ------
    ValueError
        Without an uncertainty, with every pixel masked, with unmasked
        non-finite pixels, or with a PSF larger than the image.

    Examples
    --------
    >>> from astro_dia import DifferenceImager
    >>> from astro_dia.detection import significance_image
    >>> from astro_dia.photometry import gaussian_psf
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, target, truth = make_image_pair(seed=3)
    >>> result = DifferenceImager(kernel_size=11, flat=1).fit(reference, target)
    >>> snr = significance_image(result, gaussian_psf(2.355 * 1.5))
    >>> snr.shape
    (142, 142)
    """
    computed = compute_significance(result, reference_psf, calibrate_scatter=calibrate)
    significance, scatter, difference = (computed.significance, computed.scatter,
                                         computed.difference)
    psf_filter = computed.psf_filter
    meta = fits.Header()
    meta["DIA_SFWH"] = (psf_filter.fwhm, "FWHM of the target PSF (pixels)")
    meta["DIA_SSTD"] = (scatter, "robust std of the raw significance")
    return CCDData(significance, unit=u.dimensionless_unscaled, mask=~np.isfinite(significance),
                   wcs=difference.wcs, meta=meta)
