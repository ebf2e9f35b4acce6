"""The noisy reference as errors in the variables: the fit's correction and its errors (private).

With ``reference_noise=True`` the reference ``R = R0 + N`` carries white
noise ``N`` of known variance ``s = sigma_R**2`` (per pixel). The design
matrix ``A`` of the fit (an im2col of ``R``) is then noisy too, and least
squares regresses on that noise: ``E[A^T W A] = A0^T W A0 + D`` with ``D``
diagonal on the kernel block,

.. math::

    D_{uu} = \\sum_p w_p\\, s(p + u),

one correlation of the weights with the reference variance. The solution
of ``A^T W A theta = A^T W I`` is shrunk by ``(A0^T W A0 + D)^{-1} A0^T W A0``
(attenuation bias: P low by 7-13% in a sparse field with a reference as
noisy as the target). The corrected estimator of the errors-in-variables
literature solves ``(A^T W A - D) theta = A^T W I`` instead, i.e. adds
``-theta_K^T D theta_K / 2`` to the objective.

The full correction is unusable for a pixel kernel: in a sparse field only
a few tens of the ``K**2`` kernel directions carry more reference signal
than noise. In the others ``A^T W A`` is ``D`` up to the sampling noise of
a Gram matrix (a Marchenko-Pastur bulk of relative half-width
``r = sqrt(K**2 / n_eff)``), so ``A^T W A - D`` is indefinite there, and
the measured scatter of P grew to 0.5. The correction applied
(`correction_matrix`) is therefore *spectral*: in the coordinates that
whiten ``D``, with eigenvalues ``mu`` of the kernel block of ``A^T W A``
(given the background), the correction is ``d(mu) D`` with ``d = 0``
up to the bulk's edge ``1 + 2 r``, rising linearly to 1 at ``1 + 6 r``:
directions with signal are fully corrected, the noise bulk is left as it
is (a kernel component there is attenuated to near zero, as by least
squares). ``H - D_eff`` stays positive definite.

The covariance of the corrected estimator is a sandwich,
``H_c^{-1} V H_c^{-1}`` with ``H_c = A^T W A - D_eff``. The variance of its
estimating equation is, to the order that matters,
``V = A^T W A + A^T W (C_R - diag C_R) W A + X``: the weights' own
variance ``diag(v)`` (target noise plus ``s (x) K**2``), the reference
noise ``N (x) K`` being *correlated* over the kernel's width (covariance
``C_R``, which the diagonal weights leave out: for a smooth star image it
projects about ``1 / sum(K**2)`` times more than its diagonal), and ``X``
the noise-times-noise term ``sum_p w_p**2 s_p**2 sum_d Y(d) Y(-d)``, ``Y``
the cross-correlation of the direction's kernel part with ``K``.
`sandwich_terms` evaluates ``x^T V x - x^T A^T W A x`` for one solution
``x = H_c^{-1} c``: with ``x^T A^T W A x = c^T x + x^T D_eff x``,
``sigma_P**2 = c^T x + x^T D_eff x`` plus those terms.
"""

import math

import numpy as np
import torch

from ._normal import assemble_normal_equations

__all__ = []

#: The correction starts at the Marchenko-Pastur edge ``1 + BULK_EDGE r`` of
#: the whitened noise Gram matrix's eigenvalues ...
BULK_EDGE = 2.0

#: ... and is complete at ``1 + FULL_CORRECTION r``. Measured with a
#: prototype (fixed true weights) on 16 sparse 400 x 400 fields, reference
#: as noisy as the target: the ramp 2-6 left P at +0.004 +- 0.006, the ramp
#: 3-10 at +0.005 +- 0.005, a hard step at 1 + 20 r at +0.020 +- 0.007; the
#: full correction (no ramp) scattered P by 0.5.
FULL_CORRECTION = 6.0


def reference_variance_image(problem):
    """The reference variance on the full frame (float64), from its spectrum."""
    ny, nx = problem.shape
    full = torch.fft.irfft2(problem.reference_variance_spectrum.to(
        torch.complex128), s=problem.fft_shape)
    return full[:ny, :nx]


def noise_diagonal(problem, weights):
    """
    ``D_uu = sum_p w_p s(p + u)`` in kernel order, (K, K) float64.

    The expected contribution of the reference noise to the diagonal of
    ``A^T W A``: one correlation of ``weights`` (the valid region) with
    the reference variance ``s``.
    """
    with torch.no_grad():
        return problem.correlate(weights.to(problem.dtype),
                                 spectrum=problem.reference_variance_spectrum).to(torch.float64)


def bulk_width(problem, weights):
    """
    ``r = sqrt(K**2 / n_eff)``: the relative half-width of the noise bulk.

    ``n_eff = (sum w s)**2 / sum (w s)**2`` over the fitted pixels (``s`` the
    reference variance at each pixel), the number of independent samples
    of the noise Gram matrix.
    """
    h = problem.half
    ny, nx = problem.shape
    with torch.no_grad():
        s = reference_variance_image(problem)[h:ny - h, h:nx - h]
        ws = weights.to(torch.float64) * s
        total, squares = float(ws.sum()), float((ws ** 2).sum())
    if total <= 0 or squares <= 0:
        return math.inf
    return math.sqrt(problem.kernel_size ** 2 * squares) / total


def correction_fraction(mu, width):
    """``d(mu)``: 0 up to ``1 + BULK_EDGE r``, 1 from ``1 + FULL_CORRECTION r``, linear between."""
    start = 1.0 + BULK_EDGE * width
    stop = 1.0 + FULL_CORRECTION * width
    return torch.clamp((mu - start) / (stop - start), 0.0, 1.0)


def kernel_information(problem, weights):
    """
    The kernel block of ``A^T W A`` given the background (its Schur complement), float64.

    Assembled exactly (``astro_dia.fitting._normal``): a Toeplitz approximation
    (the ``cg`` preconditioner's) misjudges the signal of kernel directions
    when a bright star lies within half a kernel of the edge (measured:
    diagonal 3.3e5 against 6.2e5), and a noise direction taken for a
    signal one makes ``H - D_eff`` indefinite.
    """
    normal, _ = assemble_normal_equations(problem, weights)
    n_kernel = problem.n_kernel
    kernel_block = normal[:n_kernel, :n_kernel]
    coupling = normal[:n_kernel, n_kernel:]
    background = normal[n_kernel:, n_kernel:]
    information = kernel_block - coupling @ torch.linalg.solve(background, coupling.T)
    return 0.5 * (information + information.T)


#: The whitened correction (``V diag(d) V^T``) is kept while the weights
#: move by less than this fraction (``sum |w - w0| / sum w0``) from those it
#: was decomposed at: the reference passes after the first change P by
#: parts in 1e3, and an assembly of ``A^T W A`` costs more than the fit's
#: other products (0.3 s at 400 x 400).
REUSE_CHANGE = 0.05


class Correction:
    """
    The errors-in-variables correction ``D_eff`` and what it was made from.

    ``matrix`` (K**2, K**2) float64, kernel order; ``fraction`` the
    whitened ``V diag(d(mu)) V^T``, reused for nearby ``weights``.
    """

    def __init__(self, matrix, fraction, weights, mask):
        self.matrix, self.fraction, self.weights, self.mask = matrix, fraction, weights, mask

    def reusable(self, weights, mask):
        """
        Whether ``fraction`` still applies to ``weights`` on the fit mask ``mask``.

        Never after the mask changed: the pixels outlier rejection takes
        out are near stars, where they carry the signal of the directions
        ``d = 1`` corrects (measured: P diverged when they were kept).
        """
        if mask is not self.mask:
            return False
        with torch.no_grad():
            moved = float(torch.sum(torch.abs(weights - self.weights))
                          / torch.sum(self.weights))
        return moved <= REUSE_CHANGE


def correction_matrix(problem, weights, previous=None):
    """
    The errors-in-variables correction ``D_eff`` (a `Correction`), or None.

    ``D^{1/2} V diag(d(mu)) V^T D^{1/2}`` with ``mu, V`` the eigenvalues and
    vectors of ``D^{-1/2} T D^{-1/2}``, ``T`` the `kernel_information`
    and ``d`` the `correction_fraction`. ``H - D_eff`` is then positive
    definite: ``d = 0`` where ``mu`` is below ``1 + 2 r``. The objective
    gets ``-theta_K^T D_eff theta_K / 2``.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
        With a reference variance.
    weights : (ny', nx') tensor
        The fit's weights on the valid region (zero off the fit mask).
    previous : `Correction`, optional
        The last correction of this problem: its whitened part is reused
        (only ``D`` is recomputed, one correlation) when the weights moved
        by less than `REUSE_CHANGE` on the same fit mask.
    """
    diagonal = noise_diagonal(problem, weights).reshape(-1)
    if not bool(torch.all(diagonal > 0)):
        return None
    root = torch.sqrt(diagonal)
    if previous is not None and previous.reusable(weights, problem.mask):
        fraction, weights = previous.fraction, previous.weights
    else:
        block = kernel_information(problem, weights)
        whitened = block / root[:, None] / root[None, :]
        mu, vectors = torch.linalg.eigh(0.5 * (whitened + whitened.T))
        fraction = (vectors * correction_fraction(mu, bulk_width(problem, weights))) @ vectors.T
    matrix = fraction * root[:, None] * root[None, :]
    return Correction(0.5 * (matrix + matrix.T), fraction, weights, problem.mask)


def adjoint_through_kernel(problem, images, kernel):
    """
    ``g(m) = sum_p image_p K(p + K - 1 - m)``: how ``image . (N (x) K)`` depends on ``N(m)``.

    The adjoint of the valid-region convolution with ``kernel`` (the model's
    valid pixel ``p`` sums ``N(p + K - 1 - t) K(t)``), on the full frame, in
    float64: one FFT correlation per image of ``images`` (..., ny', nx').
    """
    size = problem.kernel_size
    ny, nx = problem.shape
    shape = problem.fft_shape
    with torch.no_grad():
        padded = images.new_zeros(images.shape[:-2] + (ny, nx), dtype=torch.float64)
        padded[..., size - 1:ny, size - 1:nx] = images.to(torch.float64)
        spectrum = torch.fft.rfft2(padded, s=shape)
        kernel_spectrum = torch.fft.rfft2(kernel.to(torch.float64), s=shape)
        return torch.fft.irfft2(spectrum * kernel_spectrum.conj(), s=shape)[..., :ny, :nx]


def pair_matrix(problem, kernel):
    """
    ``Q`` with ``x_K^T Q x_K = sum_p w_p**2 s_p**2 sum_d Y(d) Y(-d)`` over its weights' factor.

    ``sum_d Y(d) Y(-d) = sum_{t, t'} x(t) x(t') (K * K)(t + t')``: a Hankel
    matrix of the kernel's self-convolution, (K**2, K**2) float64.
    """
    size = problem.kernel_size
    kernel64 = kernel.detach().to(torch.float64)
    self_convolution = torch.nn.functional.conv2d(
        torch.nn.functional.pad(kernel64[None, None], (size - 1,) * 4),
        kernel64.flip(0, 1)[None, None])[0, 0]          # (2K - 1, 2K - 1), index t + t'
    index = torch.arange(size, device=kernel.device)
    i, j = index.repeat_interleave(size), index.repeat(size)
    return self_convolution[i[:, None] + i[None, :], j[:, None] + j[None, :]]


def pair_weight(problem, weights):
    """``sum_p w_p**2 s_p**2`` over the valid region (``s`` at each pixel's kernel centre)."""
    h = problem.half
    ny, nx = problem.shape
    s = reference_variance_image(problem)[h:ny - h, h:nx - h]
    return float(torch.sum(weights.to(torch.float64) ** 2 * s ** 2))


def reference_noise_information(problem, weights, kernel, *, chunk=32):
    """
    ``V - A^T W A`` of the noisy reference for all parameters (n, n) float64, centred order.

    ``G^T diag(s) G - A^T diag(w**2 s (x) K**2) A + Q + D_eff`` with ``G`` the
    columns of ``A`` weighted and taken through `adjoint_through_kernel`
    (exact, ``chunk`` columns at a time: one FFT correlation each), so that
    the dense covariance ``H_c^{-1} (H_c + this) H_c^{-1}`` has the
    matrix-free sigma_P's terms (`reference_noise_variance`).
    """
    size, n_kernel = problem.kernel_size, problem.n_kernel
    ny, nx = problem.shape
    my, mx = problem.target.shape
    w64 = weights.to(torch.float64)
    s = reference_variance_image(problem)
    reference = problem.reference[0, 0].to(torch.float64)
    n = n_kernel + problem.basis.shape[0]

    def column_images(indices):
        images = []
        for index in indices:
            if index < n_kernel:
                a, b = divmod(index, size)
                y, x = size - 1 - a, size - 1 - b
                images.append(reference[y:y + my, x:x + mx])
            else:
                images.append(problem.basis[index - n_kernel].to(torch.float64).expand(my, mx))
        return torch.stack(images)

    with torch.no_grad():
        # sqrt(s) G, stored in float32 (n x frame: 30 MB at 142 x 142) and
        # multiplied in float32 strips summed in float64.
        root = torch.sqrt(s).reshape(1, -1)
        columns = torch.empty((n, ny * nx), dtype=torch.float32, device=problem.device)
        for start in range(0, n, chunk):
            indices = range(start, min(start + chunk, n))
            g = adjoint_through_kernel(problem, w64 * column_images(indices), kernel)
            columns[start:start + len(indices)] = (g.reshape(len(indices), -1) * root)
        correlated = torch.zeros((n, n), dtype=torch.float64, device=problem.device)
        step = 2 ** 16
        for start in range(0, ny * nx, step):
            part = columns[:, start:start + step]
            correlated += (part @ part.T).to(torch.float64)
        del columns
        diagonal, _ = assemble_normal_equations(
            problem, w64 ** 2 * problem.extra_variance.to(torch.float64), dtype=torch.float64)
        extra = correlated - diagonal
        extra[:n_kernel, :n_kernel] += pair_weight(problem, weights) * pair_matrix(problem, kernel)
        if problem.correction is not None:
            extra[:n_kernel, :n_kernel] += problem.correction
    return 0.5 * (extra + extra.T)


def sandwich_covariance(covariance, extra, reference_mean, n_kernel, n_scale):
    """
    ``J H_c^{-1} (H_c + extra) H_c^{-1} J^T`` from ``J H_c^{-1} J^T`` (un-centred).

    ``J`` maps the centred parameters to the un-centred ones
    (``B0 = c0' - r P``); its inverse adds ``r P`` back.
    """
    n = covariance.shape[0]
    inverse = np.eye(n)
    if n > n_kernel:
        inverse[n_kernel, :n_scale] = reference_mean
    left = covariance @ inverse.T              # J H_c^{-1}
    extra = extra.cpu().numpy() if hasattr(extra, "cpu") else np.asarray(extra)
    result = covariance + left @ extra @ left.T
    return 0.5 * (result + result.T)


def sandwich_terms(problem, weights, kernel, solution):
    """
    ``x^T (V - A^T W A) x`` for one solution ``x``: the reference noise the weights miss.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
        With a reference variance (its ``extra_variance`` is ``s (x) K**2``).
    weights : (ny', nx') tensor
        The information weights (zero off the fit mask).
    kernel : (K, K) tensor
        The fitted kernel.
    solution : float64 tensor
        ``x``, packed (kernel pixels, then background coefficients).

    Returns
    -------
    extra : float
        ``u^T (C_R - diag C_R) u + X`` with ``u = W A x`` (see the module).
    """
    s = reference_variance_image(problem)
    u, correlated, second = through_kernel_terms(problem, weights, kernel, solution, s)
    diagonal = float(torch.sum(u ** 2 * problem.extra_variance.to(torch.float64)))
    return correlated - diagonal + second


def through_kernel_terms(problem, weights, kernel, solution, s):
    """
    ``u = W A x``, ``sum_m s(m) g(m)**2`` and the noise-times-noise term, for a reference variance ``s``.

    ``g`` is the adjoint through ``kernel`` of ``u`` (`adjoint_through_kernel`);
    the last term is ``sum_p w_p**2 s_p**2 sum_d Y(d) Y(-d)`` with
    ``Y(d) = sum_t x(t) K(t + d)``. Shared by `sandwich_terms` and
    `unweighted_reference_variance`.
    """
    n_kernel = problem.n_kernel
    size = problem.kernel_size
    h = problem.half
    ny, nx = problem.shape
    with torch.no_grad():
        direction = solution[:n_kernel].reshape(problem.kernel_shape)
        coefficients = solution[n_kernel:]
        w64 = weights.to(torch.float64)
        model = problem.model(direction.to(problem.dtype), coefficients.to(problem.dtype))
        u = w64 * model.to(torch.float64)
        kernel64 = kernel.detach().to(torch.float64)
        g = adjoint_through_kernel(problem, u, kernel64)
        correlated = float(torch.sum(s * g ** 2))
        # Y(d) = sum_t x(t) K(t + d): the 2K-1 lags by one small convolution.
        y = torch.nn.functional.conv2d(
            torch.nn.functional.pad(direction.to(torch.float64)[None, None],
                                    (size - 1,) * 4), kernel64[None, None])[0, 0]
        pairs = float(torch.sum(y * y.flip(0, 1)))
        second = float(torch.sum(w64 ** 2 * s[h:ny - h, h:nx - h] ** 2)) * pairs
    return u, correlated, second


def unweighted_reference_variance(problem, weights, kernel, solution, variance):
    """
    What a noisy reference adds to ``var(c^T theta)`` of a fit that leaves it out of its weights.

    An uncorrected fit (``reference_noise=False``) of a reference with
    noise ``N`` of variance ``s`` moves by ``x^T A^T W (N (x) K)`` to first
    order (``x = H^{-1} c``, ``H = A^T W A``): ``sum_m s(m) g(m)**2`` with
    ``g`` the adjoint through the kernel of ``u = W A x``, the noise being
    correlated over the kernel's width; the noise-times-noise term of the
    design adds ``sum_p w_p**2 s_p**2 sum_d Y(d) Y(-d)`` (`sandwich_terms`).
    Not in ``x^T H x``, which holds the target's noise alone.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
    weights : (ny', nx') tensor
        The information weights (zero off the fit mask).
    kernel : (K, K) tensor
    solution : float64 tensor
        ``x``, packed.
    variance : (ny, nx) ndarray
        The reference's variance (an estimate), zero at bad pixels.

    Returns
    -------
    float
    """
    s = torch.as_tensor(variance, dtype=torch.float64, device=problem.device)
    _, correlated, second = through_kernel_terms(problem, weights, kernel, solution, s)
    return correlated + second


def has_reference_noise(problem):
    """Whether the fit carries a reference variance through ``K**2`` (``reference_noise=True``)."""
    return (problem.reference_variance_spectrum is not None
            and problem.extra_variance is not None and problem.kernel_degree == 0)


def reference_noise_variance(problem, weights, kernel, solution):
    """
    What the noisy reference adds to ``c^T x`` in ``sigma**2 = x^T V x`` (``x = H_c^{-1} c``).

    ``x_K^T D_eff x_K`` (so that ``c^T x`` plus it is ``x^T A^T W A x``) and
    the `sandwich_terms`.
    """
    extra = sandwich_terms(problem, weights, kernel, solution)
    correction = problem.correction
    if correction is not None:
        part = solution[:problem.n_kernel].to(correction.dtype)
        extra += float(part @ (correction @ part))
    return extra


#: Most rows of the valid region over which ``sum_p w_p s_p`` of
#: `predicted_scale_bias` is taken (evenly spaced; scaled to all rows).
BIAS_SAMPLE_ROWS = 64


def predicted_scale_bias(problem, weights, kernel, solution, variance):
    """
    First-order bias of P that a reference of ``variance`` gives an uncorrected fit.

    Least squares on a noisy design converges to ``(H0 + D)^{-1} H0 theta``:
    the bias of ``c^T theta`` is ``-x_K^T D K`` with ``x = H^{-1} c`` (the
    solution for P of the errors) and ``D = sum_p w_p s(p + u)``
    (`noise_diagonal`), evaluated at the fitted (already attenuated) kernel,
    so an underestimate by the attenuation itself. ``D`` is taken the same
    for every kernel pixel, ``sum_p w_p s_p`` (its value at the central
    pixel, up to the frame's edges), from `BIAS_SAMPLE_ROWS` evenly spaced
    rows: the default fit pays well under a millisecond for it at
    1000 x 1000, where the exact correlation cost two frame FFTs (within
    1% of it on the benchmark's pairs).

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
    weights : (ny', nx') tensor
        The information weights.
    kernel : (K, K) tensor
    solution : float64 tensor
        ``x``, packed.
    variance : (ny, nx) ndarray
        The reference's variance (an estimate), zero at bad pixels.

    Returns
    -------
    bias : float
    """
    h = problem.half
    ny, nx = problem.shape
    n_rows = ny - 2 * h
    step = max(1, n_rows // BIAS_SAMPLE_ROWS)
    with torch.no_grad():
        sampled = torch.as_tensor(variance[h:ny - h:step, h:nx - h], device=problem.device)
        total = float(torch.sum(weights[::step].to(torch.float64) * sampled))
        total *= n_rows / weights[::step].shape[0]
        part = solution[:problem.n_kernel].reshape(kernel.shape).to(torch.float64)
        return -total * float(torch.sum(part * kernel.detach().to(torch.float64)))


def centred_solution(covariance, reference_mean, n_kernel, n_scale):
    """``H^{-1} c`` of P (centred, packed) from the un-centred covariance ``J H^{-1} J^T``."""
    n = covariance.shape[0]
    inverse = np.eye(n)
    if n > n_kernel:
        inverse[n_kernel, :n_scale] = reference_mean
    direction = np.zeros(n)
    direction[:n_scale] = 1.0
    return torch.as_tensor(inverse @ (covariance @ (inverse.T @ direction)))
