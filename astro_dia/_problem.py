"""The kernel-fitting problem as tensors on one device (private).

Solvers see only a `FitProblem`: the reference (bad pixels zero-filled),
the target on the valid region, the mask of pixels that enter the fit, the
background basis, the resolved noise terms and the loss. They return a
`FitState`. Nothing here knows about CCDData.
"""

from dataclasses import dataclass

import numpy as np
import torch
from scipy.fft import next_fast_len

from ._torch import to_tensor
from .losses import laplacian_penalty

__all__ = []


@dataclass
class FitState:
    """What a solver returns: the fitted parameters and how it got there."""

    kernel: torch.Tensor
    coefficients: torch.Tensor
    n_iterations: int
    converged: bool
    loss_value: float
    message: str = ""


class FitProblem:
    """
    Tensors and operators of one fit of ``M = R (x) K + B`` on the valid region.

    Parameters
    ----------
    reference : (ny, nx) ndarray
        Reference image, finite everywhere (bad pixels already zero-filled).
    target : (ny, nx) ndarray
        Target image, finite everywhere (bad pixels already zero-filled).
    fit_mask : (ny - 2h, nx - 2h) bool ndarray
        Pixels of the valid region that enter the fit.
    basis : (n_terms, ny - 2h, nx - 2h) ndarray
        Background basis images on the valid region.
    terms : `~astro_dia.noise.VarianceTerms`
        Noise terms cropped to the valid region.
    kernel_size : int
    loss : callable
        Per-pixel ``rho(z)``.
    regularization : float
        Laplacian penalty strength lambda (paper eq. 20).
    reference_variance : (ny, nx) ndarray or None
        Variance of the reference, propagated through ``K**2`` when given.
    device, dtype
        Where and in what precision to compute.
    """

    def __init__(self, reference, target, fit_mask, basis, terms, kernel_size, loss,
                 regularization, reference_variance, *, device, dtype):
        self.device, self.dtype = device, dtype
        self.kernel_size = kernel_size
        self.half = kernel_size // 2
        h = self.half
        ny, nx = reference.shape
        self.valid = (slice(h, ny - h), slice(h, nx - h))
        # Centre the reference on its mean: M = (R - r)(x)K + (B + r P) is the
        # same model, but P and B0 are no longer nearly degenerate.
        self.reference_mean = float(np.mean(reference[self.valid]))
        tensor = dict(device=device, dtype=dtype)
        self.reference = to_tensor(reference - self.reference_mean, **tensor)[None, None]
        # Convolutions are products of spectra: their cost does not grow with
        # the kernel size. Padding to a fast length leaves the valid region
        # free of wrap-around.
        self.fft_shape = (next_fast_len(ny, real=True), next_fast_len(nx, real=True))
        self.shape = (ny, nx)
        self.reference_spectrum = torch.fft.rfft2(self.reference[0, 0], s=self.fft_shape)
        self.target = to_tensor(target[self.valid], **tensor)
        self.mask = torch.as_tensor(fit_mask, device=device)
        self.n_data = int(fit_mask.sum())
        self.basis = to_tensor(basis, **tensor)
        self.constant = to_tensor(terms.constant, **tensor)
        self.slope = to_tensor(terms.slope, **tensor)
        self.minimum = to_tensor(terms.minimum, **tensor)
        self.offset = float(terms.offset)
        self.loss = loss
        self.regularization = float(regularization)
        self.reference_variance_spectrum = (
            None if reference_variance is None
            else torch.fft.rfft2(to_tensor(reference_variance, **tensor), s=self.fft_shape))
        self.extra_variance = None  # reference noise through K**2, held fixed per pass

    # -- model -------------------------------------------------------------
    def convolve(self, kernel):
        """Valid-region convolution of the centred reference with ``kernel``."""
        return self._convolve_spectrum(self.reference_spectrum, kernel)

    def _convolve_spectrum(self, spectrum, kernel):
        full = torch.fft.irfft2(spectrum * torch.fft.rfft2(kernel, s=self.fft_shape),
                                s=self.fft_shape)
        k = self.kernel_size - 1
        return full[k:self.shape[0], k:self.shape[1]]

    def background(self, coefficients):
        return torch.tensordot(coefficients, self.basis, dims=1)

    def model(self, kernel, coefficients):
        """Model on the valid region, in the centred parametrisation."""
        return self.convolve(kernel) + self.background(coefficients)

    def variance(self, model):
        """Noise variance of the target at ``model`` (plus the reference term)."""
        variance = self.constant + self.slope * torch.clamp(model + self.offset, min=0.0)
        variance = torch.maximum(variance, self.minimum)
        if self.extra_variance is not None:
            variance = variance + self.extra_variance
        return variance

    def update_reference_variance(self, kernel):
        """Propagate the reference variance through the current ``K**2`` (fixed)."""
        if self.reference_variance_spectrum is None:
            return
        with torch.no_grad():
            self.extra_variance = torch.clamp(self._convolve_spectrum(
                self.reference_variance_spectrum, kernel.detach() ** 2), min=0.0)

    # -- objective ---------------------------------------------------------
    def objective(self, kernel, coefficients):
        """
        Negative log-likelihood (eq. 8/13) plus the penalty (eq. 20), in float64.

        The normalising constant is left out; see `normalization`.
        """
        model = self.model(kernel, coefficients)
        variance = self.variance(model)
        z = (self.target - model) / torch.sqrt(variance)
        per_pixel = self.loss(z) + 0.5 * torch.log(variance)
        value = torch.sum(torch.where(self.mask, per_pixel, 0.0), dtype=torch.float64)
        if self.regularization > 0:
            value = value + (self.regularization * self.n_data
                             * laplacian_penalty(kernel).to(torch.float64))
        return value

    def normalization(self):
        norm = getattr(self.loss, "normalization", None)
        return float(norm(self.n_data)) if norm is not None else 0.0

    # -- helpers for solvers -------------------------------------------------
    def weights(self, model):
        """Inverse variance on the fit pixels (zero elsewhere), detached."""
        with torch.no_grad():
            return torch.where(self.mask, 1.0 / self.variance(model), 0.0)

    def correlate(self, image, spectrum=None):
        """
        ``A^T`` for the kernel: ``sum_p image_p R_{p + K - 1 - (i, j)}``, in kernel order.

        One FFT correlation of the (centred) reference, or of the image whose
        spectrum is given, with ``image`` on the valid region; its cost does
        not grow with the kernel size.

        Parameters
        ----------
        image : (ny', nx') tensor
            An image on the valid region (e.g. weighted residuals).
        spectrum : tensor, optional
            ``rfft2`` of another full-frame image to use instead of the
            reference (e.g. of ``R**2`` for the diagonal of ``A^T W A``).

        Returns
        -------
        (K, K) tensor
        """
        spectrum = self.reference_spectrum if spectrum is None else spectrum
        ny, nx = image.shape
        flipped = torch.fft.rfft2(torch.flip(image, (0, 1)), s=self.fft_shape)
        full = torch.fft.irfft2(spectrum * flipped, s=self.fft_shape)
        # full[a + ny - 1, b + nx - 1] = sum_p image_p R_{p + (a, b)}; no
        # wrap-around reaches these indices because the FFT length is at
        # least the frame size.
        block = full[ny - 1:ny - 1 + self.kernel_size, nx - 1:nx - 1 + self.kernel_size]
        return torch.flip(block, (0, 1))

    def transpose(self, image):
        """``A^T image``: the kernel part (K, K) and the background part (n_terms,)."""
        return self.correlate(image), (self.basis * image[None]).sum(dim=(1, 2))

    def normal_product(self, weights, kernel, coefficients):
        """``A^T W A v`` without forming ``A``: a convolution and a correlation."""
        image = weights * self.model(kernel, coefficients)
        return self.transpose(image)

    def curvature_scales(self, weights):
        """
        Diagonal of the Gauss-Newton normal matrix for kernel and background.

        ``d_K[u] = sum_p w_p R_{p+u}^2`` is one correlation of ``R**2`` with
        the weight image; ``d_B[j] = sum_p w_p basis_j(p)^2``.
        """
        with torch.no_grad():
            r2 = torch.fft.rfft2(self.reference[0, 0] ** 2, s=self.fft_shape)
            d_kernel = self.correlate(weights, spectrum=r2)
            d_background = (weights[None] * self.basis ** 2).sum(dim=(1, 2))
        floor = torch.finfo(self.dtype).tiny
        return torch.clamp(d_kernel, min=floor), torch.clamp(d_background, min=floor)

    def linear_start(self, kernel_shape, weights):
        """
        Best scaling ``a`` of ``kernel_shape`` and background coefficients.

        A weighted linear least-squares fit of the target on
        ``[R (x) kernel_shape, basis]``, solved in float64.
        """
        with torch.no_grad():
            columns = torch.cat([self.convolve(kernel_shape)[None], self.basis])
            cols = columns[:, self.mask].to(torch.float64)
            w = weights[self.mask].to(torch.float64)
            y = self.target[self.mask].to(torch.float64)
            normal = (cols * w) @ cols.T
            rhs = (cols * w) @ y
            solution = torch.linalg.lstsq(normal, rhs[:, None]).solution[:, 0]
        amplitude = solution[0].to(self.dtype)
        return kernel_shape * amplitude, solution[1:].to(self.dtype)

    def uncentred_coefficients(self, kernel, coefficients):
        """Background coefficients of the un-centred model ``R (x) K + B``."""
        out = coefficients.detach().clone()
        out[0] = out[0] - self.reference_mean * kernel.detach().sum()
        return out
