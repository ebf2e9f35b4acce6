"""The guard: whether a fit's answer may be wrong, said as warnings and header cards (private).

A default that silently gives a wrong answer is the worst failure of a
DIA fit, and real frames find ways to make one that simulations do not.
After every fit, `assess_fit` measures what betrays each known way, and
issues one `~astro_dia.exceptions.FitQualityWarning` per cause found:

``SCATTER``
    The robust standard deviation of D/sigma on the fitted pixels is
    outside `RESIDUAL_SCATTER_RANGE`: the noise model does not describe
    the data (gain, read noise, flat, a subtracted sky).
``TAIL``
    More than `TAIL_FRACTION_WARNING` of the fitted pixels lie beyond
    `TAIL_SIGMA` sigma, where a Gaussian puts 6e-7, while the robust scatter
    is in range: a scatter near 1 can hide a misfit in the star cores (a
    kernel too small, a PSF that changes across the frame, a misregistered
    pair). Real variable stars and transients make a tail too, but rarely
    one of 1% of the pixels.
``CLIPPED``
    Outlier rejection took more than `CLIPPED_FRACTION_WARNING` of the
    pixels.
``STARFLUX``
    The rejected pixels carry more than `REJECTED_STAR_FLUX_WARNING` of the
    stars' flux in the model, not counting the `IGNORED_STARS` stars that
    lost most, and more than `STAR_FLUX_EXCESS` times the share of all
    pixels that rejection took: rejection went for the stars, and took
    cores that the kernel must fit, so that P is biased. (Cosmic rays fall
    on stars too, and rightly take the pixels they hit with them; but they
    fall anywhere, so the share of the stars' flux they take is about their
    share of the frame, and one or two bright stars hit are not a failure
    of rejection.)
``PSHIFT``
    P moved by more than `PASS_SHIFT_SIGMA` sigma_P between the fits made
    on the clipped pixels (the first one, after the robust pass's
    rejection, and those after the outliers were judged afresh at the fit
    proper's model): which pixels are rejected depends on the model, and
    P depends on which pixels are rejected, so the answer is not settled.
    The robust pass's own P is recorded (``DIA_PROB``) but not compared:
    its Huber loss underfits the cores of bright stars, and on real pairs
    its P differs from the fit proper's by tens of sigma_P by design
    (measured: 0.952 against 0.997 on the ProperImage pair).
``ROBUST``
    The robust pass before rejection stopped at its step limit without
    converging: the pixels it rejected are judged at a model short of the
    robust optimum (on crowded real frames such outliers moved P by up to
    2.5 sigma_P), whatever the fit proper does with them.
``REFNOISE``
    Without ``reference_noise=True``, the reference's noise is predicted to
    bias P by more than sigma_P (first order, an attenuation: see
    `astro_dia.fitting._errors_in_variables`): a single-epoch reference as noisy as
    the target makes least squares regress on its noise, and sigma_P
    leaves that out. Only a prediction that is a shrinkage towards zero by
    less than P itself, for a P `SIGNIFICANT_SCALE` sigma_P from zero, is
    judged (one outside that range says that the reference carries less
    noise than its variance claims).
``DECONVOLVES``
    The kernel is no wider than `DECONVOLUTION_WIDTH` pixels (its second
    moment: the target's PSF is no wider than the reference's, since the
    second moments of a convolution add), more than
    `NEGATIVE_KERNEL_WARNING` of its mass beyond its noise is negative (a
    negative mass above 0.75 P), and, smoothed over 3 x 3 pixels (which averages
    the noise of single pixels away), it has a lobe deeper than
    `NEGATIVE_LOBE_WARNING` times its peak: the target is as sharp as the
    reference or sharper, and the kernel deconvolves (it oscillates, and P
    is not the flux ratio). A pair of equal seeing whose kernel is a sharp
    peak with a shallow ring is not warned about.

The measures are returned (`FitQuality`) and written as ``DIA_*`` cards
(`quality_cards`), whether or not a warning fired.
"""

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std
from scipy import ndimage

from ._outliers import STAR_SIGMA
from ..exceptions import FitQualityWarning
from ._kernel_shape import (KERNEL_SIGNAL_SIGMA, kernel_lobe_depth, kernel_negative_fraction,
                            kernel_width)

__all__ = []

#: Robust standard deviation of D/sigma outside which a fit is warned about.
RESIDUAL_SCATTER_RANGE = (0.8, 1.25)

#: Fraction of the fitted pixels above which clipping is warned about.
CLIPPED_FRACTION_WARNING = 0.1

#: |D/sigma| beyond which a fitted pixel is in the tail.
TAIL_SIGMA = 5.0

#: Fraction of fitted pixels in the tail above which a fit is warned about.
TAIL_FRACTION_WARNING = 1e-2

#: Fraction of the stars' model flux in rejected pixels above which a fit is warned about.
REJECTED_STAR_FLUX_WARNING = 0.01

#: Rejected star regions (those that lost most) that ``STARFLUX`` does not count.
IGNORED_STARS = 2

#: How many times the rejected share of all pixels the rejected share of star flux must be.
STAR_FLUX_EXCESS = 3.0

#: Rejected pixels whose star signal is computed at once (bounds the memory).
STAR_PATCH_CHUNK = 256

#: Share of the kernel's mass beyond its noise that is negative, above which it deconvolves
#: (0.3: a negative mass of 0.75 P; a kernel that blurs has about none, the
#: sharp kernel of a pair of equal seeing 0.19 on the ProperImage pair).
NEGATIVE_KERNEL_WARNING = 0.3

#: The predicted bias of P is judged only for a P this many sigma_P from zero
#: (a pure-noise reference has no P to bias: its prediction is -P itself).
SIGNIFICANT_SCALE = 5.0

#: Shift of P between the fits on the clipped pixels, in sigma_P, that is warned about.
PASS_SHIFT_SIGMA = 3.0

#: Depth of the deepest negative lobe of the 3 x 3 smoothed kernel, over its peak.
NEGATIVE_LOBE_WARNING = 0.12

#: Kernel width (rms radius per axis, pixels) below which the target is no blurrier.
DECONVOLUTION_WIDTH = 1.0


@dataclass(frozen=True)
class FitQuality:
    """
    What the guard measured on one fit, and the causes it warned about.

    Attributes
    ----------
    residual_scatter : float
        Robust standard deviation of D/sigma on the fitted pixels.
    tail_fraction : float
        Fraction of the fitted pixels with ``|D/sigma| > TAIL_SIGMA``.
    rejected_star_flux : float
        Fraction of the stars' flux in the model that lies in rejected pixels.
    kernel_negative : float
        The share of the kernel's mass beyond its noise that is negative.
    kernel_lobe : float
        Depth of the deepest negative lobe of the 3 x 3 smoothed kernel,
        over its peak (0 without one).
    kernel_width : float
        The kernel's rms width per axis in pixels (`kernel_width`).
    robust_scale_factor : float or None
        P of the robust pass (None without rejection).
    pass_shift : float
        The largest change of P between the fits on the clipped pixels and
        the final one, in units of sigma_P (0 without rejection or errors).
    predicted_bias : float or None
        The first-order bias of P that the reference's noise gives a fit
        without ``reference_noise`` (None where not predicted).
    causes : tuple of str
        The causes warned about (empty for a fit that passed).
    """

    residual_scatter: float
    tail_fraction: float
    rejected_star_flux: float
    kernel_negative: float
    kernel_lobe: float
    kernel_width: float
    robust_scale_factor: object = None
    pass_shift: float = 0.0
    predicted_bias: object = None
    causes: tuple = ()

    def as_dict(self):
        """The measures and causes as a plain dict (for the result record)."""
        return dict(residual_scatter=self.residual_scatter, tail_fraction=self.tail_fraction,
                    rejected_star_flux=self.rejected_star_flux,
                    kernel_negative=self.kernel_negative, kernel_lobe=self.kernel_lobe,
                    kernel_width=self.kernel_width,
                    robust_scale_factor=self.robust_scale_factor, pass_shift=self.pass_shift,
                    predicted_bias=self.predicted_bias, causes=tuple(self.causes))


def smooth_star_signal(reference, kernel, median, ys, xs):
    """
    ``(med3(R) - median) (x) K`` at valid-region pixels ``(ys, xs)``.

    The 3 x 3 median of the reference removes what is sharper than any
    star (a hot pixel, a cosmic ray of the reference) before the kernel
    spreads it: what is left is the stars' signal in the model.

    Parameters
    ----------
    reference : (M, N) ndarray
        The reference, bad pixels set to 0.
    kernel : (K, K) ndarray
    median : float
        The reference's median (its sky).
    ys, xs : (n,) int ndarray
        Pixels of the valid region (which starts ``K // 2`` from the edge).
    """
    size = kernel.shape[-1]
    flipped = np.asarray(kernel, float)[::-1, ::-1]
    padded = np.pad(np.asarray(reference, float), 1, mode="edge")
    offsets = np.arange(size + 2)
    values = np.empty(len(ys))
    for start in range(0, len(ys), STAR_PATCH_CHUNK):
        y, x = ys[start:start + STAR_PATCH_CHUNK], xs[start:start + STAR_PATCH_CHUNK]
        # full-frame rows y .. y + K - 1 of the valid pixel y, one more each side
        patches = padded[y[:, None, None] + offsets[None, :, None],
                         x[:, None, None] + offsets[None, None, :]]
        windows = np.lib.stride_tricks.sliding_window_view(patches, (3, 3), axis=(1, 2))
        smooth = np.median(windows.reshape(*windows.shape[:3], 9), axis=-1)
        values[start:start + STAR_PATCH_CHUNK] = np.tensordot(smooth - median, flipped,
                                                              axes=([1, 2], [0, 1]))
    return values


def rejected_flux_fraction(star_model, sigma, outliers, reference, kernel, median):
    """
    Fraction of the stars' flux in the model that lies in rejected pixels.

    Parameters
    ----------
    star_model : (M', N') ndarray
        The model's stars on the valid region: ``(R - r) (x) K`` with ``r``
        the reference's median (NaN where undefined).
    sigma : (M', N') ndarray
        The target's noise at the model.
    outliers : (M', N') bool ndarray
        The rejected pixels.
    reference, kernel, median
        See `smooth_star_signal`.

    Returns
    -------
    fraction : float
        The stars' flux in rejected star pixels (``star_model > STAR_SIGMA
        sigma``) over that in all star pixels, without the `IGNORED_STARS`
        connected regions of them that carry most. A rejected pixel's flux
        is `smooth_star_signal`, so that a lone bright pixel of the
        reference (a hot pixel, a cosmic ray) spread by the kernel, which
        rejection rightly takes, is not a star.
    """
    stars = np.isfinite(star_model) & np.isfinite(sigma) & (star_model > STAR_SIGMA * sigma)
    total = float(star_model[stars].sum())
    taken = stars & outliers
    if total <= 0 or not taken.any():
        return 0.0
    ys, xs = np.nonzero(taken)
    flux = np.clip(smooth_star_signal(reference, kernel, median, ys, xs), 0.0, None)
    labels, n_regions = ndimage.label(taken, structure=np.ones((3, 3)))
    per_region = np.bincount(labels[ys, xs], weights=flux, minlength=n_regions + 1)[1:]
    kept = np.sort(per_region)[:max(n_regions - IGNORED_STARS, 0)]
    return float(kept.sum() / total)


def assess_fit(z, kernel, *, n_outliers, star_model, sigma, outliers, reference, median,
               scale_factor_error=None, pass_scale_factors=(), robust_converged=None,
               predicted_bias=None, bias_source=None, refitted_bias=None, trusted=True):
    """
    Measure a fit's quality and warn once for each cause of doubt found.

    Parameters
    ----------
    z : ndarray
        D/sigma on the fitted pixels.
    kernel : (K, K) ndarray
        The fitted kernel (the constant term's, for a varying one).
    n_outliers : int
        Pixels rejected from the fit.
    star_model, sigma, outliers : (M', N') ndarray
        See `rejected_flux_fraction`.
    reference : (M, N) ndarray
        The reference, bad pixels set to 0.
    median : float
        The reference's median on the valid region.
    scale_factor_error : float or None, optional
        sigma_P. A kernel whose sum is not `KERNEL_SIGNAL_SIGMA` times it
        above zero has no shape to judge (no stars, a constant target).
    pass_scale_factors : sequence of float, optional
        P of the robust pass, then of each fit on the clipped pixels (the
        last is the final one's); empty without rejection.
    robust_converged : bool or None, optional
        Whether the robust pass converged (None without rejection).
    predicted_bias : float or None, optional
        The first-order bias of P from the reference's noise (a fit
        without ``reference_noise``).
    bias_source : str or None, optional
        Where the reference's variance for that prediction came from.
    refitted_bias : float or None, optional
        For a fit on the reference's stars that ``fit_region='auto'`` made
        because the fit on every pixel was predicted to be biased by this
        much: REFNOISE is reported with both predictions, since the stars'
        fit lessens the bias without removing it (on the real ProperImage
        pair P 0.9993 against flux ratios of 1.006-1.012).
    trusted : bool, optional
        False for a fit already warned about as a whole (a
        `~astro_dia.exceptions.ConvergenceWarning`, or a
        `~astro_dia.exceptions.KernelFitWarning` for an information matrix
        that cannot be inverted): it is measured, but not warned about
        again.

    Returns
    -------
    quality : FitQuality

    Warns
    -----
    `~astro_dia.exceptions.FitQualityWarning`
        One for each cause found (see the module docstring).
    """
    z = z[np.isfinite(z)]
    scatter = float(mad_std(z)) if z.size else float("nan")
    tail = float(np.count_nonzero(np.abs(z) > TAIL_SIGMA) / z.size) if z.size else 0.0
    star_flux = (rejected_flux_fraction(star_model, sigma, outliers, reference, kernel, median)
                 if n_outliers else 0.0)
    negative, lobe = kernel_negative_fraction(kernel), kernel_lobe_depth(kernel)
    width = kernel_width(kernel)
    final = float(np.sum(kernel))
    shift = 0.0
    if len(pass_scale_factors) > 1 and scale_factor_error:
        shift = max(abs(p - final) for p in pass_scale_factors[1:]) / scale_factor_error
    judged = scale_factor_error is None or (
        float(np.sum(kernel)) > KERNEL_SIGNAL_SIGMA * scale_factor_error)
    low, high = RESIDUAL_SCATTER_RANGE
    fraction = n_outliers / max(n_outliers + z.size, 1)
    found = {}
    if not low <= scatter <= high:
        found["SCATTER"] = (
            f"the normalised residuals D/sigma of the fitted pixels have a robust standard "
            f"deviation of {scatter:.3g}, where the noise model predicts 1 (accepted: "
            f"{low}-{high}): the uncertainties of the difference image are not to be "
            f"trusted. Likely causes: wrong noise-model settings (gain, read noise, flat, "
            f"a subtracted sky, data already in electrons), outliers the fit kept "
            f"(lower clip=), a misregistered pair, or a kernel too small for the seeing "
            f"(raise kernel_size)")
    elif tail > TAIL_FRACTION_WARNING:
        found["TAIL"] = (
            f"{100 * tail:.2g}% of the fitted pixels lie beyond {TAIL_SIGMA:g} sigma, where "
            f"the noise model puts 6e-5%: the fit misses structure that a robust scatter of "
            f"{scatter:.3g} hides, usually in star cores. Likely causes: a kernel too small "
            f"for the seeing (raise kernel_size), a PSF that changes across the frame "
            f"(kernel_degree=1), a misregistered pair, or saturated stars without a "
            f"saturation level (saturation=)")
    if fraction > CLIPPED_FRACTION_WARNING:
        found["CLIPPED"] = (
            f"outlier rejection left {n_outliers} pixels ({100 * fraction:.1f}%) out of "
            f"the fit, more than cosmic rays and hot pixels explain: check the noise-model "
            f"settings and the registration of the pair, or raise clip=")
    if star_flux > max(REJECTED_STAR_FLUX_WARNING, STAR_FLUX_EXCESS * fraction):
        found["STARFLUX"] = (
            f"outlier rejection took pixels that carry {100 * star_flux:.2g}% of the stars' "
            f"flux, though they are {100 * fraction:.2g}% of the pixels: star cores left out "
            f"of the fit bias P. Compare with clip=None, and "
            f"check the saturation level (saturation=) and the registration")
    if shift > PASS_SHIFT_SIGMA:
        found["PSHIFT"] = (
            f"P moved by {shift:.3g} sigma_P between the fits on the clipped pixels "
            f"({', '.join(f'{p:.5g}' for p in pass_scale_factors[1:])}; final {final:.5g}): "
            f"which pixels are rejected depends on the model, and P on which pixels are "
            f"rejected. Compare with clip=None and check the saturation level and the "
            f"registration")
    if robust_converged is False:
        found["ROBUST"] = (
            "the robust pass before outlier rejection stopped at its step limit without "
            "converging: the pixels it rejected are judged at a model short of the robust "
            "optimum, and P may be off by a few sigma_P. Compare with solver='direct' "
            "(where the frame allows it) and with clip=None")
    if attenuates(predicted_bias, final, scale_factor_error):
        found["REFNOISE"] = (
            f"the reference's noise is predicted to bias P by {predicted_bias:+.3g} "
            f"({abs(predicted_bias) / scale_factor_error:.1f} sigma_P; first order, reference "
            f"variance from its {bias_source}): a noisy reference makes the fit regress on "
            f"its noise, and sigma_P leaves it out. Pass reference_noise=True, which corrects "
            f"the fit and sigma_P (give a stacked reference an uncertainty if its header's "
            f"gain and read noise describe a single exposure)")
    elif refitted_bias is not None:
        found["REFNOISE"] = (
            f"the reference is about as noisy as the target: on every pixel its noise was "
            f"predicted to bias P by {refitted_bias:+.3g}, so P was fitted on the "
            f"reference's stars (fit_region='auto'), where {predicted_bias or 0.0:+.3g} is "
            f"predicted (first order, reference variance from its {bias_source}). That "
            f"lessens the bias without removing it: on a real single-exposure pair such a "
            f"fit was 0.7-1.2% below independent flux ratios. For P to better than 1%, use a "
            f"stacked reference, or reference_noise=True with the reference's true variance")
    if (judged and width < DECONVOLUTION_WIDTH and negative > NEGATIVE_KERNEL_WARNING
            and lobe > NEGATIVE_LOBE_WARNING):
        found["DECONVOLVES"] = (
            f"the kernel is {width:.2g} pixels wide (rms), {100 * negative:.2g}% of its mass "
            f"is negative and its deepest lobe is {lobe:.2g} times its peak: the target is "
            f"about as sharp as the reference or sharper, so the kernel deconvolves and "
            f"oscillates, and P is not the flux ratio. Swap the reference and the target, or convolve the target with a "
            f"Gaussian to make its seeing worse than the reference's")
    if not trusted:
        found = {}
    for message in found.values():
        warnings.warn(message, FitQualityWarning, stacklevel=3)
    robust = float(pass_scale_factors[0]) if len(pass_scale_factors) else None
    return FitQuality(scatter, tail, star_flux, negative, lobe, width, robust, shift,
                      predicted_bias, tuple(found))


def attenuates(predicted_bias, scale_factor, scale_factor_error):
    """
    Whether a predicted bias of P is an attenuation beyond sigma_P.

    Towards zero, by more than ``scale_factor_error`` and less than P
    itself, for a P `SIGNIFICANT_SCALE` sigma_P from zero. A prediction
    outside that range says that the reference's pixels carry less noise
    than its variance claims (the first-order formula assumes ``A^T W A``
    holds that noise; measured: +10.9 for a noiseless reference with the
    noise model's variance), not that P is biased.
    """
    if predicted_bias is None or not scale_factor_error:
        return False
    attenuation = -predicted_bias * np.sign(scale_factor)
    return bool(scale_factor_error < attenuation < abs(scale_factor)
                and abs(scale_factor) > SIGNIFICANT_SCALE * scale_factor_error)


def quality_cards(quality):
    """The ``DIA_*`` cards of a `FitQuality` (a measure that is not finite as no value)."""
    cards = [
        ("DIA_ZSTD", quality.residual_scatter, "robust std of D/sigma on the fitted pixels"),
        ("DIA_ZT5", quality.tail_fraction, "fraction of fitted pixels beyond 5 sigma"),
        ("DIA_FREJ", quality.rejected_star_flux, "star flux fraction in rejected pixels"),
        ("DIA_KNEG", quality.kernel_negative, "negative share of kernel mass"),
        ("DIA_KLOB", quality.kernel_lobe, "deepest negative kernel lobe / peak"),
        ("DIA_KWID", quality.kernel_width, "kernel rms width per axis (pixels)"),
        ("DIA_PROB", quality.robust_scale_factor, "P of the robust pass"),
        ("DIA_PSHF", quality.pass_shift, "shift of P between clipped fits/sigma_P"),
        ("DIA_PBIA", quality.predicted_bias, "predicted bias of P from reference noise"),
    ]
    return [(key, _finite(value), comment) for key, value, comment in cards] + [
        ("DIA_QUAL", ",".join(quality.causes) or "OK", "guard causes, or OK")]


def _finite(value):
    """``value`` as a float, or None where it is None or not finite (FITS cards hold no NaN)."""
    return float(value) if value is not None and np.isfinite(value) else None
