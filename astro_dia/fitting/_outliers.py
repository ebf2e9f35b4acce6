"""Outlier rejection in the kernel fit: cosmic rays, hot pixels, other defects (private).

Real targets carry pixels that no kernel explains. As in Bramich (2008)
and pyDANDIA, astro_dia leaves them out of the fit after a first, robust
pass:

1. a *robust pass* fits the kernel with the Huber loss and the variance
   held fixed at the data (`robust_twin`). With a fixed variance the
   influence of a pixel on the fit is bounded whatever its amplitude, and
   a model-dependent variance cannot be inflated to absorb the outliers;
2. pixels whose normalised residual at that model exceeds ``clip`` *and*
   whose residual is sharper than any star (`sharp_residuals`) are
   rejected, together with their eight neighbours and every pixel beyond
   ``CONNECTED_CLIP_FACTOR`` times ``clip`` connected to them (`spread`:
   the inside of a cosmic ray a few pixels wide is flat, not sharp);
3. the fit proper runs on the remaining pixels; the outliers are then
   judged afresh at its model (a pixel the robust pass rejected comes back
   when the fit explains it; none is added) and the fit resumed, until the
   set is stable or ``MAX_CLIP_PASSES`` is reached.

Star cores are never taken for defects, however badly a model fits them.
The robust pass itself underfits the cores of bright stars (the Huber loss
down-weights every pixel beyond 1.345 sigma: on a real pair its P was 0.95
where the fit proper's is 1.00), so ``|z|`` against it is no test of a
defect. A kernel mismatch in a star's core has the shape of the star: it is
``R (x) (K_true - K)``, as smooth as the reference's PSF. A cosmic ray or a
hot pixel is sharper than any PSF, and has no counterpart in the image it
is not in. `sharp_residuals` asks both, after L.A.Cosmic (van Dokkum 2001):
the residual's fine structure (what a 3 x 3 median removes) must be
significant and ``SHARPNESS`` times that of the other image (`fine_structure`,
large in a star's core). A residual below ``STAR_RESIDUAL_FRACTION`` of the
model's local star signal is never an outlier either.
"""

import copy

import torch

from ..losses import HuberLoss

__all__ = []

#: A residual below this fraction of the local star signal is never an outlier.
STAR_RESIDUAL_FRACTION = 0.2

#: A defect's fine structure exceeds this many times the target's (stars).
SHARPNESS = 2.0

#: A source whose summed residual exceeds this fraction of its flux has changed.
CHANGED_FRACTION = 0.25

#: A change this fraction of all the stars' signal moves P by about as much: it leaves the fit.
DOMINANT_FRACTION = 0.01

#: Pixels whose star signal is this many sigma count as stars (here and in the guard).
STAR_SIGMA = 3.0

#: Bright boxes needed to take their median share of the residual as P's common error.
MIN_COMMON_STARS = 5

#: Pixels beyond this many times clip that touch an outlier join it.
CONNECTED_CLIP_FACTOR = 2.0

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
    problem : ``astro_dia.fitting._problem.FitProblem``

    Returns
    -------
    twin : ``astro_dia.fitting._problem.FitProblem``
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


def spread(outliers, strong, steps=8):
    """
    ``outliers`` grown, one pixel at a time, over the ``strong`` pixels they touch.

    A cosmic ray two or three pixels wide is flat inside: only its edges are
    sharper than a star, and growing those by one pixel may not reach the
    whole hit (a 2 x 3 hit at the border of the valid region moved P by
    5 sigma_P). Pixels far beyond the threshold connected to an outlier
    join it; a hit longer than ``steps`` pixels from its sharp edges is
    left to the next pass.
    """
    for _ in range(steps):
        grown = outliers | (grow(outliers) & strong)
        if torch.equal(grown, outliers):
            break
        outliers = grown
    return outliers


def find_outliers(problem, kernel, coefficients, clip, candidates, *, scale_from_residuals=False,
                  changed=None, keep=None, added_clip=None):
    """
    Pixels of the fit whose residual no kernel can explain, grown by one pixel.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
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
    changed : (ny', nx') bool tensor, optional
        The boxes of `changed_sources` found before, kept as they are: they
        are judged once, at the robust pass (judged again at each fit, a
        set that grows pass by pass moved P by 19 sigma_P on a crowded real
        pair). None judges them here.
    keep, added_clip : optional
        Outliers judged afresh: of the pixels found at ``clip`` only those
        in ``keep`` (the outliers so far) stay, and pixels found at
        ``added_clip`` join them; from the same model, in one call.

    Returns
    -------
    outliers : (ny', nx') bool tensor
        On the valid region, within ``candidates``.
    changed : (ny', nx') bool tensor
        The boxes of changed sources among them.
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
        threshold = torch.as_tensor(clip * scatter_scale(z, candidates) * sigma,
                                    dtype=residual.dtype, device=residual.device).expand_as(residual)
        stars = star_signal(problem, kernel, convolved)

        def defects(limit):
            significant = (torch.abs(residual) > limit) & candidates
            found = sharp_residuals(residual, problem.target, model, significant, limit)
            if STAR_RESIDUAL_FRACTION:
                found &= torch.abs(residual) > STAR_RESIDUAL_FRACTION * stars
            return found, significant

        seeds, significant = defects(threshold)
        strong = (torch.abs(residual) > CONNECTED_CLIP_FACTOR * threshold) & candidates
        if added_clip is not None:
            grown = (grow(seeds) & candidates & keep) | grow(defects(
                threshold * (added_clip / clip))[0]) & candidates
            return spread(grown, strong) | changed, changed
        if changed is None:
            # The reference's noise reaches a box's sum through the whole
            # kernel, correlated over its width: about P times its own.
            scale = max(1.0, abs(float(problem.scale_factor(kernel))))
            changed = changed_sources(residual, stars, scale * threshold / clip,
                                      significant & ~seeds, clip, problem.half) & candidates
        return spread(grow(seeds) & candidates, strong) | changed, changed


def neighbourhoods(image, ys, xs, radius):
    """``(n, 2 radius + 1, 2 radius + 1)`` patches of ``image`` around ``(ys, xs)``, edges repeated."""
    ny, nx = image.shape
    offsets = torch.arange(-radius, radius + 1, device=image.device)
    rows = (ys[:, None, None] + offsets[None, :, None]).clamp(0, ny - 1)
    cols = (xs[:, None, None] + offsets[None, None, :]).clamp(0, nx - 1)
    return image[rows, cols]


def median_filtered(patches, size):
    """The ``size`` x ``size`` median filter of each patch, on its interior."""
    windows = patches.unfold(1, size, 1).unfold(2, size, 1)
    return torch.median(windows.reshape(*windows.shape[:3], -1), dim=-1).values


def fine_structure(image, ys, xs):
    """
    L.A.Cosmic's fine structure ``med3(image) - med7(med3(image))`` at pixels ``(ys, xs)``.

    Large in a star's core, about nothing at a cosmic ray or a hot pixel
    (which the 3 x 3 median removes) and on smooth backgrounds (van Dokkum
    2001, PASP 113, 1420).
    """
    smooth = median_filtered(neighbourhoods(image, ys, xs, 4), 3)
    return smooth[:, 3, 3] - torch.median(smooth.reshape(len(ys), -1), dim=-1).values


def sharp_residuals(residual, target, model, significant, threshold):
    """
    The ``significant`` residuals that are sharper than any star: defects, not kernel mismatch.

    A residual is a defect when its fine structure ``s = r - med3(r)``
    (what a 3 x 3 median removes) exceeds ``threshold`` and ``SHARPNESS``
    times the `fine_structure` of the image the defect is *not* in: the
    model for a positive residual (a cosmic ray or hot pixel of the
    target), the target for a negative one (a defect of the reference,
    spread by the kernel). A star's core is in both images, so a kernel
    mismatch there, however large, is never taken for a defect.

    Parameters
    ----------
    residual, target, model : (ny', nx') tensor
        On the valid region.
    significant : (ny', nx') bool tensor
        The candidates (``|residual| > threshold``).
    threshold : (ny', nx') tensor

    Returns
    -------
    seeds : (ny', nx') bool tensor
    """
    ys, xs = torch.nonzero(significant, as_tuple=True)
    seeds = torch.zeros_like(significant)
    if ys.numel() == 0:
        return seeds
    r = residual[ys, xs]
    fine = r - median_filtered(neighbourhoods(residual, ys, xs, 1), 3)[:, 0, 0]
    positive = r > 0
    structure = torch.empty_like(r)
    for image, where in ((model, positive), (target, ~positive)):
        if bool(where.any()):
            structure[where] = fine_structure(image, ys[where], xs[where])
    sharp = ((fine * r > 0) & (torch.abs(fine) > threshold[ys, xs])
             & (torch.abs(fine) > SHARPNESS * torch.clamp(structure, min=0.0)))
    seeds[ys[sharp], xs[sharp]] = True
    return seeds


def changed_sources(residual, stars, sigma, significant, clip, half):
    """
    The boxes around sources whose flux changed: variable stars and transients.

    A kernel mismatch in a star's core is a ring or a dipole: over a box
    around the star it sums to the error of P times the star's flux, an
    error common to all stars. A source whose flux changed leaves the
    target's PSF times the change, which does not sum away and is its own.
    Each local maximum of ``|residual|`` among the ``significant`` pixels
    (those not taken for defects) is judged over the ``(2 half + 1)**2``
    box around it: the box's residual less the median share of the stars'
    signal that the boxes show (the common error of P, taken as 0 with
    fewer than `MIN_COMMON_STARS` bright boxes) is a change when it
    exceeds ``clip`` times its noise and ``CHANGED_FRACTION`` of the stars'
    signal in the box (any, for a source that is not in the reference), and
    ``DOMINANT_FRACTION`` of the stars' signal in the whole frame: a change
    that alone moves P by about that much. The whole box leaves the fit.
    Smaller changes stay in it: a crowded field holds many variable stars,
    each of which moves P by less than its error, and leaving out every box
    whose flux differs by a quarter (in a single-epoch reference, often by
    its noise) moved P by 0.4-0.7% on real bulge frames.

    Parameters
    ----------
    residual, stars : (ny', nx') tensor
        On the valid region; ``stars`` is `star_signal`.
    sigma : (ny', nx') tensor or float
        The noise of the residuals (times the robust scatter of D/sigma
        where that exceeds 1, and P where that exceeds 1: the reference's
        noise reaches a box's sum through the whole kernel).
    significant : (ny', nx') bool tensor
    clip : float
    half : int
        Half the kernel size.

    Returns
    -------
    changed : (ny', nx') bool tensor
    """
    changed = torch.zeros_like(significant)
    ys, xs = torch.nonzero(significant, as_tuple=True)
    if ys.numel() == 0:
        return changed
    magnitude = torch.abs(residual)
    peak = magnitude[ys, xs] >= neighbourhoods(magnitude, ys, xs, 1).reshape(len(ys), -1).amax(1)
    ys, xs = ys[peak], xs[peak]
    variance = torch.as_tensor(sigma, dtype=residual.dtype,
                               device=residual.device).expand_as(residual) ** 2
    flux = neighbourhoods(residual, ys, xs, half).sum(dim=(1, 2))
    noise = torch.sqrt(neighbourhoods(variance, ys, xs, half).sum(dim=(1, 2)))
    star = neighbourhoods(stars, ys, xs, half).sum(dim=(1, 2))
    bright = star > clip * noise
    common = (float(torch.median(flux[bright] / star[bright]))
              if int(bright.sum()) >= MIN_COMMON_STARS else 0.0)
    excess = torch.abs(flux - common * star)
    total = float(torch.where(stars > STAR_SIGMA * sigma, stars, 0.0).sum())
    change = ((excess > clip * noise) & (excess > CHANGED_FRACTION * star)
              & (excess > DOMINANT_FRACTION * total))
    for y, x in zip(ys[change].tolist(), xs[change].tolist()):
        changed[max(y - half, 0):y + half + 1, max(x - half, 0):x + half + 1] = True
    return changed


def set_fit_mask(problem, mask):
    """Replace the pixels that enter the fit (and their count)."""
    problem.mask = mask
    problem.n_data = int(mask.sum())
