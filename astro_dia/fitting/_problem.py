"""The kernel-fitting problem as tensors on one device (private).

Solvers see only a `FitProblem`: the reference (bad pixels zero-filled),
the target on the valid region, the mask of pixels that enter the fit, the
background basis, the resolved noise terms and the loss. They return a
`FitState`. Nothing here knows about CCDData.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ._errors_in_variables import correction_matrix
from ..model._model import fft_shape, lag_values, valid_convolution, variance_at, variance_slope_at
from ..model._torch import resolve_device, resolve_dtype, to_tensor
from ..background import background_basis, polynomial_terms
from ..losses import laplacian_matrix, laplacian_penalty, loss_psi

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
    #: P of each fit on the clipped pixels, in the order they were made
    #: (the robust pass's first), for the guard.
    pass_scale_factors: tuple = ()
    #: Whether the robust pass before clipping converged (None without
    #: rejection), for the guard.
    robust_converged: object = None


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
        Where and in what precision to compute: names (``"cpu"``,
        ``"float64"``) or torch objects, converted here.
    kernel_degree : int, optional
        Degree of the polynomial in the normalised image coordinates that
        each kernel pixel is (0: one kernel for the whole image). With
        ``d > 0`` the kernel parameters are ``(n_terms, K, K)``, one kernel
        per term of `~astro_dia.background.polynomial_terms`, and the model
        is ``sum_j b_j(x, y) (R (x) K_j)(x, y) + B``.
    constant_scale : bool, optional
        With ``kernel_degree > 0``, hold the photometric scale factor
        constant over the image: the kernels ``K_j`` of the non-constant
        terms sum to zero. Their central pixel is then not a free parameter
        (it is minus the sum of the others); it is listed in `fixed`.
    """

    def __init__(self, reference, target, fit_mask, basis, terms, kernel_size, loss,
                 regularization, reference_variance, *, device, dtype, kernel_degree=0,
                 constant_scale=False):
        device, dtype = resolve_device(device), resolve_dtype(dtype)
        self.device, self.dtype = device, dtype
        self.kernel_size = kernel_size
        self.half = kernel_size // 2
        h = self.half
        ny, nx = reference.shape
        self.valid = (slice(h, ny - h), slice(h, nx - h))
        self.kernel_degree = int(kernel_degree)
        self.constant_scale = bool(constant_scale) and self.kernel_degree > 0
        self.kernel_terms = len(polynomial_terms(self.kernel_degree))
        self.kernel_shape = ((kernel_size, kernel_size) if self.kernel_degree == 0
                             else (self.kernel_terms, kernel_size, kernel_size))
        self.n_kernel = self.kernel_terms * kernel_size ** 2
        tensor = dict(device=device, dtype=dtype)
        self.kernel_basis = (None if self.kernel_degree == 0 else to_tensor(
            background_basis((ny, nx), self.kernel_degree, region=self.valid), **tensor))
        # Parameters without effect (the central pixel of each non-constant
        # term's kernel under constant_scale), in the order of `pack`.
        centre = h * kernel_size + h
        self.fixed = torch.tensor(
            [j * kernel_size ** 2 + centre for j in range(1, self.kernel_terms)]
            if self.constant_scale else [], dtype=torch.long, device=device)
        # Centre the reference on its mean: M = (R - r)(x)K + (B + r P) is the
        # same model, but P and B0 are no longer nearly degenerate. A kernel
        # whose sum varies over the image would move r P(x, y) into the
        # background, which cannot follow it: no centring then.
        varying_sum = self.kernel_degree > 0 and not self.constant_scale
        self.reference_mean = 0.0 if varying_sum else float(np.mean(reference[self.valid]))
        self.reference = to_tensor(reference - self.reference_mean, **tensor)[None, None]
        # Convolutions are products of spectra: their cost does not grow with
        # the kernel size. Padding to a fast length leaves the valid region
        # free of wrap-around.
        self.fft_shape = fft_shape((ny, nx))
        self.shape = (ny, nx)
        self.reference_spectrum = torch.fft.rfft2(self.reference[0, 0], s=self.fft_shape)
        self.target = to_tensor(target[self.valid], **tensor)
        self.mask = torch.as_tensor(fit_mask, device=device)
        self.n_data = int(fit_mask.sum())
        # A constant background (degree 0) is one number: added and summed as
        # such, not as an image of ones; its basis is a view of a single one.
        self.constant_background = basis.shape[0] == 1 and bool(np.all(basis[0] == 1.0))
        self.basis = (torch.ones((1, 1, 1), **tensor).expand(basis.shape)
                      if self.constant_background else to_tensor(basis, **tensor))
        self.set_noise_terms(terms)
        self.loss = loss
        self.regularization = float(regularization)
        self.reference_variance_spectrum = (
            None if reference_variance is None
            else torch.fft.rfft2(to_tensor(reference_variance, **tensor), s=self.fft_shape))
        self.extra_variance = None  # reference noise through K**2, held fixed per pass
        # The errors-in-variables correction D_eff (K**2, K**2) of the noisy
        # reference, held fixed per pass (astro_dia.fitting._errors_in_variables).
        self._correction = None
        self._correction_point = None   # (kernel, coefficients, mask) it was set at
        # Newton-decrement tolerance of the Gauss-Newton solvers; None: the
        # dtype's (astro_dia.fitting._tolerances). The robust pass sets a coarse one.
        self.newton_tolerance = None

    def set_noise_terms(self, terms):
        """Put the target's noise terms (cropped to the valid region) on the device."""
        tensor = dict(device=self.device, dtype=self.dtype)
        self.constant = to_tensor(terms.constant, **tensor)
        self.slope = to_tensor(terms.slope, **tensor)
        self.minimum = to_tensor(terms.minimum, **tensor)
        self.offset = float(terms.offset)

    # -- kernel parametrisation ---------------------------------------------
    def effective_kernel(self, kernel):
        """
        The kernels the parameters stand for.

        The parameters themselves, except under ``constant_scale``: each
        non-constant term's kernel then has its sum subtracted from its
        central pixel, so that it sums to zero whatever the parameters.
        """
        if not self.constant_scale:
            return kernel
        h = self.half
        varying = kernel[1:]
        centre = torch.zeros_like(varying)
        centre[:, h, h] = 1.0
        varying = varying - varying.sum(dim=(1, 2))[:, None, None] * centre
        return torch.cat([kernel[:1], varying])

    def effective_adjoint(self, kernel_gradient):
        """Adjoint of `effective_kernel`: a gradient in the kernels -> in the parameters."""
        if not self.constant_scale:
            return kernel_gradient
        h = self.half
        varying = kernel_gradient[1:] - kernel_gradient[1:, h:h + 1, h:h + 1]
        return torch.cat([kernel_gradient[:1], varying])

    def scale_factor(self, kernel):
        """P at the image centre: the sum of the (constant term's) kernel."""
        kernel = self.effective_kernel(kernel)
        return (kernel if self.kernel_degree == 0 else kernel[0]).sum()

    # -- model -------------------------------------------------------------
    def convolve(self, kernel):
        """
        Valid-region convolution of the centred reference with ``kernel``.

        With ``kernel_degree > 0`` the per-term convolutions are weighted by
        the polynomial images and summed.
        """
        return self._convolve_spectrum(self.reference_spectrum, self.effective_kernel(kernel))

    def _convolve_spectrum(self, spectrum, kernel):
        return valid_convolution(spectrum, kernel, self.shape, kernel_basis=self.kernel_basis)

    def background(self, coefficients):
        """The background on the valid region (a number when it is constant)."""
        if self.constant_background:
            return coefficients[0]
        return torch.tensordot(coefficients, self.basis, dims=1)

    def model(self, kernel, coefficients):
        """Model on the valid region, in the centred parametrisation."""
        return self.convolve(kernel) + self.background(coefficients)

    def variance(self, model):
        """Noise variance of the target at ``model`` (plus the reference term)."""
        variance = variance_at(model, self.constant, self.slope, self.minimum, self.offset)
        if self.extra_variance is not None:
            variance = variance + self.extra_variance
        return variance

    def update_reference_variance(self, kernel, coefficients=None):
        """
        Propagate the reference variance through the current ``K**2`` (fixed).

        With ``coefficients`` the errors-in-variables correction of the
        noisy reference is also set, from the weights at the model of
        ``kernel, coefficients`` with the new variance
        (`~astro_dia.fitting._errors_in_variables.correction_matrix`); both are
        then held fixed until the next call.
        """
        if self.reference_variance_spectrum is None:
            return
        if self.kernel_degree > 0:
            raise NotImplementedError("reference noise with a spatially varying kernel")
        with torch.no_grad():
            self.extra_variance = torch.clamp(self._convolve_spectrum(
                self.reference_variance_spectrum, kernel.detach() ** 2), min=0.0)
        if coefficients is not None:
            self._correction_point = (kernel.detach().clone(), coefficients.detach().clone(),
                                      self.mask)
            self._correction = self._correction_at(kernel, coefficients)

    def _correction_at(self, kernel, coefficients):
        from .uncertainty import information_weights
        return correction_matrix(self, information_weights(self, kernel, coefficients),
                                 previous=self._correction)

    @property
    def correction(self):
        """
        The errors-in-variables correction ``D_eff`` in force (float64), or None.

        None without a reference variance (also for a copy of the problem
        that dropped it, as the robust pass before clipping does). Set
        again, at the same kernel, when the fit mask changed since (outlier
        rejection): a correction of more pixels than the fit has could
        exceed their ``A^T W A``.
        """
        if self.reference_variance_spectrum is None:
            return None
        point = self._correction_point
        if point is not None and point[2] is not self.mask:
            self._correction_point = (point[0], point[1], self.mask)
            self._correction = self._correction_at(point[0], point[1])
        return None if self._correction is None else self._correction.matrix

    # -- objective ---------------------------------------------------------
    def objective(self, kernel, coefficients):
        """
        Negative log-likelihood (eq. 8/13) plus the penalty (eq. 20), in float64.

        The normalising constant is left out; see `normalization`.
        """
        return self.objective_at_model(self.model(kernel, coefficients), kernel)

    def normalised_residuals(self, model):
        """``(variance, z)`` at ``model``: the noise variance and ``(I - M) / sigma``."""
        variance = self.variance(model)
        return variance, (self.target - model) / torch.sqrt(variance)

    def objective_at_model(self, model, kernel, residuals=None):
        """
        `objective` given the model of ``kernel`` (and its coefficients).

        ``residuals``, when given, is `normalised_residuals` of ``model``.
        """
        variance, z = self.normalised_residuals(model) if residuals is None else residuals
        per_pixel = self.loss(z) + 0.5 * torch.log(variance)
        value = torch.sum(torch.where(self.mask, per_pixel, 0.0), dtype=torch.float64)
        if self.regularization > 0:
            value = value + (self.regularization * self.n_data * laplacian_penalty(
                self.effective_kernel(kernel)).to(torch.float64))
        correction = self.correction
        if correction is not None:
            flat = kernel.reshape(-1).to(torch.float64)
            value = value - 0.5 * flat @ (correction @ flat)
        return value

    def data_gradient(self, model, residuals=None):
        """
        Derivative of the data term of `objective` in each model pixel.

        With ``z = (I - M) / sigma`` and ``v = sigma**2`` a function of the
        model, ``d/dM [rho(z) + ln(v) / 2] = -psi(z) / sigma
        + v' (1 - z psi(z)) / (2 v)``; zero off the mask. Taken to the
        parameters by `transpose`, it is the gradient of the data term.
        """
        with torch.no_grad():
            variance, z = self.normalised_residuals(model) if residuals is None else residuals
            psi = loss_psi(self.loss, z)
            slope = variance_slope_at(model, self.constant, self.slope, self.minimum, self.offset)
            gradient = (0.5 * slope / variance) * (1.0 - z * psi) - psi / torch.sqrt(variance)
            return torch.where(self.mask, gradient, 0.0)

    def penalty_product(self, kernel):
        """
        Hessian of the Laplacian penalty (eq. 20) times ``kernel``, in parameter space.

        ``2 lambda N_data L`` applied to each term's (effective) kernel.
        """
        size = self.kernel_size
        laplacian = torch.as_tensor(laplacian_matrix(size), dtype=kernel.dtype,
                                    device=kernel.device)
        flat = self.effective_kernel(kernel).reshape(-1, size * size)
        product = (flat @ laplacian).reshape(kernel.shape)
        return 2 * self.regularization * self.n_data * self.effective_adjoint(product)

    def quadratic_product(self, kernel):
        """
        Hessian of the objective's quadratic kernel terms times ``kernel``.

        The penalty's `penalty_product` minus the errors-in-variables
        correction ``D_eff kernel`` (zero when the problem has neither).
        """
        product = (self.penalty_product(kernel) if self.regularization > 0
                   else torch.zeros_like(kernel))
        correction = self.correction
        if correction is not None:
            product = product - (correction @ kernel.reshape(-1).to(torch.float64)).reshape(
                kernel.shape).to(kernel.dtype)
        return product

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
        image : (..., ny', nx') tensor
            An image on the valid region (e.g. weighted residuals), or a
            stack of them.
        spectrum : tensor, optional
            ``rfft2`` of another full-frame image to use instead of the
            reference (e.g. of ``R**2`` for the diagonal of ``A^T W A``).

        Returns
        -------
        (..., K, K) tensor
        """
        spectrum = self.reference_spectrum if spectrum is None else spectrum
        # sum_p image_p R_{p + d} is the inverse transform of R^ conj(image^)
        # at lag d: no wrap-around reaches d < K, as the FFT length is at
        # least the frame size. Lag K - 1 - i is kernel index i.
        product = spectrum * torch.fft.rfft2(image, s=self.fft_shape).conj()
        return lag_values(product, self.fft_shape, tuple(range(self.kernel_size - 1, -1, -1)))

    def transpose(self, image):
        """``A^T image``: the kernel part (`kernel_shape`) and the background part (n_terms,)."""
        if self.kernel_degree == 0:
            kernel_part = self.correlate(image)
        else:
            kernel_part = self.effective_adjoint(self.correlate(self.kernel_basis * image))
        if self.constant_background:
            return kernel_part, image.sum().reshape(1)
        return kernel_part, (self.basis * image[None]).sum(dim=(1, 2))

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
            if self.kernel_degree > 0:
                weights = weights * self.kernel_basis ** 2
            d_kernel = self.correlate(weights, spectrum=r2)
            d_background = (weights[None] * self.basis ** 2).sum(dim=(1, 2))
        floor = torch.finfo(self.dtype).tiny
        return torch.clamp(d_kernel, min=floor), torch.clamp(d_background, min=floor)

    def linear_start(self, kernel_shape, weights):
        """
        Best scaling ``a`` of ``kernel_shape`` and background coefficients.

        A weighted linear least-squares fit of the target on
        ``[R (x) kernel_shape, basis]``, solved in float64. With a spatially
        varying kernel, ``kernel_shape`` (K, K) is the constant term's and
        the other terms start at zero.
        """
        if self.kernel_degree > 0 and kernel_shape.dim() == 2:
            full = torch.zeros(self.kernel_shape, device=self.device, dtype=self.dtype)
            full[0] = kernel_shape
            kernel_shape = full
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
        out[0] = out[0] - self.reference_mean * self.scale_factor(kernel.detach())
        return out
