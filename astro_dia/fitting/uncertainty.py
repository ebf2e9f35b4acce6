"""
Uncertainties of the fitted kernel and background: observed Fisher information.

The covariance of the maximum-likelihood parameters is estimated by the
inverse of the observed Fisher information at the optimum (paper eq.
15-17). The information is assembled in the Gauss-Newton form
``A^T W A``, with ``A`` the design matrix of the linear model (one column
per kernel pixel, one per background term) and ``W`` the per-pixel
curvature of the loss, ``rho''(z) / sigma**2``, plus the Hessian of the
Laplacian penalty when the kernel is regularised (eq. 20). The validity
checks of paper section 2.5 (positive eigenvalues and determinant) are
applied before inverting, and a `~astro_dia.exceptions.KernelFitWarning`
says when they fail.

`~astro_dia.DifferenceImager` uses these functions for the dense
covariance: at once with ``compute_errors='covariance'`` or a spatially
varying kernel, and on small frames when ``result.covariance`` or
``kernel_error`` is first read; with the default ``compute_errors=True``
sigma_P and sigma_B0 come from matrix-free solves with the same weights
(``astro_dia.fitting._matrix_free_errors``).
"""

import math
import warnings

import numpy as np
import torch

from ._normal import add_regularization, assemble_normal_equations
from ..model._torch import to_tensor
from ..exceptions import KernelFitWarning

# fisher_information acts on the private fit problem; it is the imager's.
__all__ = ["covariance_from_information", "scale_factor_error",
           "background_errors", "loss_curvature"]

#: Largest condition number of the (equilibrated) information matrix that is
#: still inverted with confidence: 1 / (100 eps) in float64.
MAX_CONDITION = 1.0 / (100.0 * np.finfo(np.float64).eps)

#: Largest component of P or B0 along an undetermined direction of the
#: information for which sigma_P and sigma_B0 are still trusted.
ESTIMABLE_TOLERANCE = 1e-6


def loss_curvature(loss, z):
    """
    Second derivative ``rho''(z)`` of a per-pixel loss, elementwise.

    The loss's own ``curvature(z)`` where it has one (in closed form: 1 for
    the Gaussian loss, 1 inside and 0 outside the threshold for the Huber
    loss, ``(nu + 1)(nu - z**2) / (nu + z**2)**2`` for Student's t), else
    by torch automatic differentiation, so that it works for any
    elementwise differentiable callable.

    Parameters
    ----------
    loss : callable
        Per-pixel loss ``rho(z)`` acting elementwise on a tensor.
    z : ndarray or tensor
        Normalised residuals.

    Returns
    -------
    curvature : ndarray or tensor
        ``rho''(z)``, float64, of the kind (numpy or torch) and shape of ``z``.

    Examples
    --------
    >>> import numpy as np
    >>> from astro_dia.losses import HuberLoss
    >>> loss_curvature(HuberLoss(c=1.345), np.array([0.5, 3.0])).tolist()
    [1.0, 0.0]
    """
    is_numpy = not isinstance(z, torch.Tensor)
    device = "cpu" if is_numpy else z.device
    values = to_tensor(z, device=device, dtype=torch.float64) if is_numpy else (
        z.detach().to(torch.float64))
    closed_form = getattr(loss, "curvature", None)
    if closed_form is not None:
        second = closed_form(values).detach().to(torch.float64)
        return second.cpu().numpy().copy() if is_numpy else second
    values = values.clone().requires_grad_(True)
    with torch.enable_grad():
        first, = torch.autograd.grad(loss(values).sum(), values, create_graph=True)
        if first.requires_grad:
            second, = torch.autograd.grad(first.sum(), values, allow_unused=True)
        else:   # rho' does not depend on z: a linear loss has no curvature
            second = None
    if second is None:
        second = torch.zeros_like(values)
    second = second.detach()
    return second.cpu().numpy().copy() if is_numpy else second


def fisher_information(problem, kernel, coefficients):
    """
    Observed Fisher information of the centred parameters at the optimum.

    The Gauss-Newton form of paper eq. 15: ``A^T W A`` with per-pixel
    weights ``rho''(z) / sigma**2`` evaluated at the fitted model (zero
    outside the fit mask), plus the Hessian ``2 lambda N_data L`` of the
    Laplacian penalty (eq. 20-21) when the problem is regularised.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
        The fitted problem (its noise terms, mask, loss and penalty).
    kernel : (K, K) ndarray or tensor
        Fitted kernel.
    coefficients : (n_terms,) ndarray or tensor
        Fitted background coefficients in the problem's *centred*
        parametrisation (the reference minus its mean ``reference_mean``),
        so that the constant term is ``B0 + reference_mean * P``.

    Returns
    -------
    information : (n, n) ndarray
        float64, ``n = K**2 + n_terms``; rows and columns in the order of
        the kernel pixels (C order), then the background terms.

    See Also
    --------
    covariance_from_information : its inverse, un-centred and checked.

    Notes
    -----
    The observed information of the negative log-likelihood
    ``sum rho(z) + sum ln sigma`` has further terms from the dependence of
    ``sigma`` on the model (CCD and EMCCD noise). For the Gaussian loss
    their expectation relative to the term kept here is
    ``(d sigma**2 / dM)**2 / (2 sigma**2) = 1 / (2 G**2 sigma**2)`` per pixel
    (``G`` the gain, ``sigma`` in the data unit), i.e. about 1e-3 for a sky
    of 500 adu at unit gain and less for any real CCD gain and sky; they are
    neglected. Reference noise included in the weights
    (``reference_noise=True``) is treated as a fixed part of ``sigma**2``
    here, and the errors-in-variables correction ``D_eff`` is subtracted
    (``astro_dia.fitting._normal.add_regularization``): this is the "bread"
    ``H_c`` of the sandwich covariance the imager then forms
    (``astro_dia.fitting._errors_in_variables``).
    """
    weights = information_weights(problem, kernel, coefficients)
    normal, _ = assemble_normal_equations(problem, weights, dtype=torch.float64)
    add_regularization(normal, problem)
    information = normal.cpu().numpy().copy()
    return 0.5 * (information + information.T)


def information_weights(problem, kernel, coefficients):
    """
    Per-pixel weights ``rho''(z) / sigma**2`` of the information, float64.

    Evaluated at the model of ``kernel, coefficients`` (tensors or arrays,
    centred parametrisation); zero outside the fit mask. The dense
    `fisher_information` and the matrix-free errors
    (``astro_dia.fitting._matrix_free_errors``) use the same weights.
    """
    tensor = dict(device=problem.device, dtype=problem.dtype)
    if not isinstance(kernel, torch.Tensor):
        kernel = to_tensor(kernel, **tensor)
    if not isinstance(coefficients, torch.Tensor):
        coefficients = to_tensor(coefficients, **tensor)
    with torch.no_grad():
        model = problem.model(kernel.detach().to(problem.dtype),
                              coefficients.detach().to(problem.dtype))
        variance = problem.variance(model).to(torch.float64)
        z = (problem.target.to(torch.float64) - model.to(torch.float64)) / torch.sqrt(variance)
    curvature = loss_curvature(problem.loss, z)
    return torch.where(problem.mask, curvature / variance, 0.0)


def _uncentring_jacobian(n, n_kernel, reference_mean, n_scale):
    """d(uncentred) / d(centred): B0 = c0' - r * P, everything else unchanged."""
    jacobian = np.eye(n)
    if n > n_kernel:
        jacobian[n_kernel, :n_scale] = -reference_mean
    return jacobian


def covariance_from_information(information, *, reference_mean, n_kernel, n_scale=None):
    """
    Covariance of the un-centred parameters from the Fisher information.

    Inverts the information (paper eq. 16) after the validity checks of
    section 2.5, and maps it from the centred parametrisation of the fit
    to the parameters of ``M = R (x) K + B``.

    Parameters
    ----------
    information : (n, n) array_like
        Information matrix of the centred parameters (kernel pixels in C
        order, then background terms), e.g. from ``fisher_information``.
    reference_mean : float
        Mean of the reference the fit was centred on.
    n_kernel : int
        Number of kernel parameters: ``K**2``, or ``n_terms * K**2`` for a
        spatially varying kernel.
    n_scale : int, optional
        Number of leading kernel parameters whose sum is P (those of the
        constant term of a spatially varying kernel); ``n_kernel`` by
        default.

    Returns
    -------
    covariance : (n, n) ndarray
        Covariance of ``[kernel pixels, background coefficients]`` with
        ``B0 = c0' - reference_mean * P``.
    valid : bool
        False when a check failed; the covariance is then a pseudo-inverse
        over the well-determined directions only and must not be trusted.

    Raises
    ------
    ValueError
        If ``information`` is not a finite square matrix or ``n_kernel`` is
        out of range.

    Warns
    -----
    astro_dia.exceptions.KernelFitWarning
        If the information matrix has an eigenvalue that is not positive, a
        determinant that is not positive, or a condition number above
        ``1 / (100 eps)``.

    Notes
    -----
    The linear algebra runs in torch (float64, on the CPU), as the fit
    does: a LAPACK call on numpy's own BLAS threads competes with torch's
    for the cores (on 2 cores it made a 142 x 142 fit twice as slow).
    The checks are made on the equilibrated matrix ``D^-1/2 F D^-1/2``
    (``D`` its diagonal), which has the same definiteness as ``F`` but
    does not depend on the units of the parameters (kernel pixels are
    dimensionless, background terms are in the data unit). The determinant
    is the product of the eigenvalues, evaluated as a sum of logarithms so
    that it neither under- nor overflows. The covariance ``C`` of the
    centred parameters is mapped with the Jacobian ``J`` of
    ``B0 = c0' - r sum(K)``: ``J C J^T``.

    Examples
    --------
    >>> import numpy as np
    >>> information = np.array([[4.0, 0.0], [0.0, 1.0]])
    >>> covariance, valid = covariance_from_information(
    ...     information, reference_mean=0.0, n_kernel=1)
    >>> covariance.tolist(), valid
    ([[0.25, 0.0], [0.0, 1.0]], True)
    """
    information = np.array(information, dtype=np.float64)
    if information.ndim != 2 or information.shape[0] != information.shape[1]:
        raise ValueError(f"information must be a square matrix, got shape {information.shape}")
    if not np.isfinite(information).all():
        raise ValueError("information must be finite, got NaN or infinite entries")
    n = information.shape[0]
    n_kernel = int(n_kernel)
    if not 0 < n_kernel <= n:
        raise ValueError(f"n_kernel must be between 1 and {n}, got {n_kernel}")
    n_scale = n_kernel if n_scale is None else int(n_scale)
    if not 0 < n_scale <= n_kernel:
        raise ValueError(f"n_scale must be between 1 and {n_kernel}, got {n_scale}")
    reference_mean = float(reference_mean)
    information = 0.5 * (information + information.T)

    diagonal = np.diag(information).copy()
    problems = []
    if np.any(diagonal <= 0):
        problems.append(f"{int(np.sum(diagonal <= 0))} parameters carry no information "
                        "(zero diagonal)")
        diagonal = np.where(diagonal > 0, diagonal, 1.0)
    scale = 1.0 / np.sqrt(diagonal)
    equilibrated = information * scale[:, None] * scale[None, :]
    eigenvalues, eigenvectors = (part.numpy() for part in
                                 torch.linalg.eigh(torch.from_numpy(equilibrated)))
    n_nonpositive = int(np.sum(eigenvalues <= 0))
    if n_nonpositive:
        problems.append(f"{n_nonpositive} of its {n} eigenvalues are not positive "
                        f"(smallest {eigenvalues[0]:.3g})")
    sign = float(np.prod(np.sign(eigenvalues)))
    log_determinant = float(np.sum(np.log(np.abs(eigenvalues)))) if sign != 0 else -math.inf
    if sign <= 0:
        problems.append("its determinant is " + ("zero" if sign == 0 else "negative"))
    elif not math.isfinite(log_determinant):
        problems.append("its determinant is not finite")
    if eigenvalues[0] > 0:
        condition = float(eigenvalues[-1] / eigenvalues[0])
        if condition > MAX_CONDITION:
            problems.append(f"its condition number {condition:.3g} exceeds "
                            f"1/(100 eps) = {MAX_CONDITION:.3g}")

    valid = not problems
    if valid:
        inverse_eigenvalues = 1.0 / eigenvalues
    else:
        cutoff = max(float(eigenvalues[-1]), 0.0) / MAX_CONDITION
        keep = eigenvalues > cutoff
        inverse_eigenvalues = np.where(keep, 1.0 / np.where(keep, eigenvalues, 1.0), 0.0)
        affected = _affected_quantities(eigenvectors[:, ~keep], scale, n_kernel, reference_mean,
                                        n_scale)
        if affected:
            warnings.warn(
                "the Fisher information matrix of the kernel fit is not valid for inversion: "
                + "; ".join(problems) + f", and {' and '.join(affected)} depend on the "
                "undetermined directions. The covariance (and sigma_P, sigma_B0) is a "
                "pseudo-inverse and must not be trusted; try regularization=1 (lambda of eq. "
                "20, typically 0.1-100), a smaller kernel_size, a lower background_degree, or "
                "a field with more stars", KernelFitWarning)
    vectors = torch.from_numpy(eigenvectors)
    centred = (vectors * torch.from_numpy(inverse_eigenvalues)) @ vectors.T
    centred = centred * torch.from_numpy(scale[:, None] * scale[None, :])
    jacobian = torch.from_numpy(_uncentring_jacobian(n, n_kernel, reference_mean, n_scale))
    covariance = (jacobian @ centred @ jacobian.T).numpy()
    return 0.5 * (covariance + covariance.T), bool(valid)


def _affected_quantities(null_vectors, scale, n_kernel, reference_mean, n_scale):
    """Which of P and B0 have a component along the undetermined eigenvectors."""
    n = len(scale)
    directions = {"P": np.r_[np.ones(n_scale), np.zeros(n - n_scale)]}
    if n > n_kernel:
        background = np.zeros(n)
        background[:n_scale] = -reference_mean
        background[n_kernel] = 1.0
        directions["B0"] = background
    affected = []
    for name, direction in directions.items():
        # theta = D^-1/2 phi, so c^T theta = (D^-1/2 c)^T phi.
        direction = direction * scale
        direction = direction / np.linalg.norm(direction)
        if null_vectors.size and np.max(np.abs(null_vectors.T @ direction)) > ESTIMABLE_TOLERANCE:
            affected.append(name)
    return affected


def scale_factor_error(covariance, n_kernel):
    """
    Standard error of the photometric scale factor ``P = sum(K)``.

    Parameters
    ----------
    covariance : (n, n) array_like
        Covariance of ``[kernel pixels, background coefficients]``.
    n_kernel : int
        Number of kernel pixels, ``K**2``.

    Returns
    -------
    sigma_p : float
        ``sqrt(1^T C_KK 1)``, the square root of the sum of the kernel block.

    Examples
    --------
    >>> import numpy as np
    >>> scale_factor_error(np.diag([0.01, 0.03, 4.0]), 2)  # doctest: +FLOAT_CMP
    0.2
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    n_kernel = int(n_kernel)
    return float(math.sqrt(max(float(covariance[:n_kernel, :n_kernel].sum()), 0.0)))


def background_errors(covariance, n_kernel):
    """
    Standard errors of the background coefficients.

    Parameters
    ----------
    covariance : (n, n) array_like
        Covariance of ``[kernel pixels, background coefficients]``.
    n_kernel : int
        Number of kernel pixels, ``K**2``.

    Returns
    -------
    errors : (n - n_kernel,) ndarray
        Square roots of the diagonal of the background block; the first is
        ``sigma_B0``.

    Examples
    --------
    >>> import numpy as np
    >>> background_errors(np.diag([0.01, 0.03, 4.0]), 2).tolist()
    [2.0]
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    n_kernel = int(n_kernel)
    return np.sqrt(np.maximum(np.diag(covariance)[n_kernel:], 0.0))
