"""Outlier rejection in the kernel fit: cosmic rays, hot pixels, other defects (private).

Real targets carry pixels that no kernel explains. As in Bramich (2008)
and pyDANDIA, astro_dia leaves them out of the fit after a first, robust
pass:

1. a *robust pass* fits the kernel with the Huber loss and the variance
   held fixed at the data (`robust_twin`). With a fixed variance the
   influence of a pixel on the fit is bounded whatever its amplitude, and
   a model-dependent variance cannot be inflated to absorb the outliers;
2. pixels whose normalised residual at that model exceeds ``clip`` and
   whose residual is not explained by the local star signal
   (`find_outliers`) are rejected, together with their eight neighbours;
3. the fit proper runs on the remaining pixels; the outliers are then
   judged afresh at its model (a pixel the robust pass rejected comes back
   when the fit explains it) and the fit resumed, until the set is stable
   or ``MAX_CLIP_PASSES`` is reached.

Bright stars are protected: a residual smaller than
``STAR_RESIDUAL_FRACTION`` of the model's star signal ``|(R - r) (x) K|``
at the pixel (``r`` the reference's median) is a kernel mismatch in a star
core, which the kernel must keep fitting, not a defect.
"""

import copy

import torch

from .losses import HuberLoss

__all__ = []

#: A residual below this fraction of the local star signal is never an outlier.
STAR_RESIDUAL_FRACTION = 0.2

#: Most clipping passes after the robust one.
MAX_CLIP_PASSES = 3

#: Most values a median of the outlier search is taken over: on larger
#: frames an evenly spaced subsample of this many (the median's own scatter,
#: about 1.25 / sqrt(n) of the spread, is then below 0.15%); a 1000 x 1000
#: frame is taken whole.
MEDIAN_SAMPLE = 2 ** 20

#: sigma of a normal distribution over the median of its absolute value.
MAD_TO_SIGMA = 1.4826


#: Newton decrement (in standard deviations of the parameters) at which the
#: robust pass stops. It only finds the candidates for rejection at ``clip``
#: sigma per pixel, where a model off by a fraction of the parameters' own
#: errors changes nothing, and the fit proper judges every pixel again; on
#: the 1000 x 1000 speed pair with 300 cosmic rays 0.1 rejected the same 2660
#: pixels as a pass converged to 1e-3, with 58 instead of 91 products, and
#: 0.5 the same 4863 pixels (with their neighbours) as 0.1, with 74 instead
#: of 78 products for the whole fit and P equal to 2e-8. 1.0, with the
#: steps' prediction of convergence, rejects the same 2660 pixels as 0.1
#: (and 2733 at 2000 x 2000), P equal to 1.3e-8 (1.8e-8), one step fewer.
ROBUST_TOLERANCE = 1.0


def robust_twin(problem):
    """
    A copy of ``problem`` with the Huber loss and the variance fixed at the data.

    The copy shares the image tensors; only its noise terms and loss differ.

    Parameters
    ----------
    problem : ``astro_dia._problem.FitProblem``

    Returns
    -------
    twin : ``astro_dia._problem.FitProblem``
    """
    twin = copy.copy(problem)
    with torch.no_grad():
        variance = problem.variance(problem.target)
    twin.constant = variance
    twin.slope = torch.zeros_like(problem.slope)
    twin.minimum = torch.zeros_like(problem.minimum)
    twin.offset = 0.0
    twin.extra_variance = None
    twin.reference_variance_spectrum = None
    twin.loss = HuberLoss()
    twin.newton_tolerance = ROBUST_TOLERANCE
    return twin


def star_signal(problem, kernel, convolved=None):
    """
    ``|(R - r) (x) K|`` on the valid region, with ``r`` the reference's median.

    ``convolved``, when given, is ``problem.convolve(kernel)`` (the model
    without its background), so that no further convolution is made.
    """
    with torch.no_grad():
        median = reference_median(problem)
        if convolved is None:
            convolved = problem.convolve(kernel)
        return torch.abs(convolved - median * problem.scale_factor(kernel))


def sampled_median(image, where=None):
    """
    The (lower) median of ``image`` (at the True pixels of ``where``), over `MEDIAN_SAMPLE` values.

    Frames of more than `MEDIAN_SAMPLE` pixels are subsampled evenly (every
    n-th pixel in row-major order) before the values are gathered.
    """
    flat = image.reshape(-1)
    step = -(-flat.numel() // MEDIAN_SAMPLE)
    values = flat[::step]
    if where is not None:
        values = values[where.reshape(-1)[::step]]
    return float(torch.median(values))


def scatter_scale(z, candidates):
    """
    The robust scatter of the normalised residuals ``z`` of ``candidates``, at least 1.

    ``MAD_TO_SIGMA`` times their median ``|z|``. Where at most half of them
    exceed ``1 / MAD_TO_SIGMA`` that is at most 1, which a count shows
    without a median.
    """
    n = int(torch.count_nonzero(candidates))
    beyond = int(torch.count_nonzero((z > 1.0 / MAD_TO_SIGMA) & candidates))
    if 2 * beyond <= n:
        return 1.0
    return max(1.0, MAD_TO_SIGMA * sampled_median(z, candidates))


def reference_median(problem):
    """The median of the (centred) reference on the valid region, computed once per frame."""
    reference = problem.reference
    cached = getattr(problem, "_reference_median", None)
    if cached is None or cached[0] is not reference:
        with torch.no_grad():
            cached = (reference, sampled_median(reference[0, 0][problem.valid]))
        problem._reference_median = cached
    return cached[1]


def grow(seeds):
    """``seeds`` (a bool image) grown by one pixel in the eight directions."""
    ny, nx = seeds.shape
    padded = torch.nn.functional.pad(seeds, (1, 1, 1, 1))
    grown = seeds.clone()
    for dy in range(3):
        for dx in range(3):
            grown |= padded[dy:dy + ny, dx:dx + nx]
    return grown


def find_outliers(problem, kernel, coefficients, clip, candidates, *, scale_from_residuals=False):
    """
    Pixels of the fit whose residual no kernel can explain, grown by one pixel.

    Parameters
    ----------
    problem : ``astro_dia._problem.FitProblem``
    kernel, coefficients : tensor
        The model to judge the residuals against.
    clip : float
        Threshold on ``|residual| / sigma``.
    candidates : (ny', nx') bool tensor
        The pixels that may be rejected (those of the fit before clipping).
    scale_from_residuals : bool, optional
        Take sigma as the robust standard deviation of the residuals of
        ``candidates`` (the 'uniform' noise model) instead of the problem's
        noise model at the model.

    Returns
    -------
    outliers : (ny', nx') bool tensor
        On the valid region, within ``candidates``.
    """
    with torch.no_grad():
        convolved = problem.convolve(kernel)
        model = convolved + problem.background(coefficients)
        residual = problem.target - model
        if scale_from_residuals:
            centre = sampled_median(residual, candidates)
            sigma = MAD_TO_SIGMA * sampled_median(torch.abs(residual - centre), candidates)
        else:
            sigma = torch.sqrt(problem.variance(model))
        # Where the noise model underestimates the scatter everywhere (a wrong
        # gain, a subtracted sky), clip against the scatter actually seen,
        # so that rejection stays a matter of a few defects; the fit-quality
        # check reports the scatter itself.
        z = torch.abs(residual) / sigma
        threshold = clip * scatter_scale(z, candidates) * sigma
        allowance = STAR_RESIDUAL_FRACTION * star_signal(problem, kernel, convolved)
        seeds = (torch.abs(residual) > threshold) & (torch.abs(residual) > allowance)
        seeds &= candidates
        return grow(seeds) & candidates


def set_fit_mask(problem, mask):
    """Replace the pixels that enter the fit (and their count)."""
    problem.mask = mask
    problem.n_data = int(mask.sum())
