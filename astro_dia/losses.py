"""
Objective functions: per-pixel negative log-likelihoods and the Laplacian penalty.

A loss here is a callable ``rho(z)`` of the normalised residual
``z = (I - M) / sigma`` returning the per-pixel :math:`\\rho(z)`: called
with numpy arrays (or numbers) a `Loss` returns numpy, and inside the fit
it is called with torch tensors, through which it is differentiated. The
fit minimises

.. math::

    \\mathcal{L}(\\theta) = \\sum_{ij} \\rho(z_{ij}) + \\sum_{ij} \\ln\\sigma_{ij}
    + Q + \\lambda N_{\\rm data}\\,\\theta^{\\rm T} L \\theta

(paper eq. 8, 13 and 20), where ``Q`` is the loss's normalising constant.
Any callable written with torch operations can be passed as a loss (it
receives tensors); a `Loss` subclass defines ``rho(z)`` on tensors and gets
the numpy interface from the base class. Give either a
``normalization(n_data)`` method to report a comparable loss value.
"""

import math

import numpy as np
import torch

__all__ = ["Loss", "GaussianLoss", "HuberLoss", "StudentTLoss", "get_loss",
           "laplacian_matrix", "laplacian_penalty"]


class Loss:
    """
    Base class of per-pixel losses ``rho(z)``.

    Subclasses define `rho` with torch operations. Calling the loss with a
    tensor returns a tensor (as the fit does); with a number or a numpy
    array it returns a float or a float64 ndarray.
    """

    #: Short name used in provenance keywords.
    name = "custom"

    def rho(self, z):
        """
        The loss of each normalised residual, on tensors.

        Parameters
        ----------
        z : `torch.Tensor`

        Returns
        -------
        rho : `torch.Tensor`
        """
        raise NotImplementedError(f"{type(self).__name__} must define rho(z)")

    def psi(self, z):
        """
        The derivative ``rho'(z)``, on tensors.

        By automatic differentiation of `rho` unless a subclass gives it in
        closed form.
        """
        return _autograd_psi(self.rho, z)

    def irls_weight(self, z):
        """
        The re-weighting factor ``psi(z) / z`` (at least 0), on tensors.

        Near ``z = 0`` the ratio is taken at ``|z| = 1e-3``; subclasses give
        it in closed form.
        """
        return _ratio(self.psi, z)

    def __call__(self, z):
        """
        The loss of each normalised residual.

        Parameters
        ----------
        z : float, array_like or `torch.Tensor`

        Returns
        -------
        rho : float, ndarray or `torch.Tensor`
            Of the type given: a tensor for a tensor, else numpy.
        """
        if isinstance(z, torch.Tensor):
            return self.rho(z)
        values = self.rho(torch.as_tensor(np.asarray(z, dtype=float)))
        values = values.detach().cpu().numpy()
        return float(values) if values.ndim == 0 else values

    def normalization(self, n_data):
        """
        Normalising constant Q of the likelihood for ``n_data`` pixels.

        Parameters
        ----------
        n_data : int
            Number of pixels in the fit.

        Returns
        -------
        q : float
        """
        return 0.0

    def __repr__(self):
        return f"{type(self).__name__}()"


class GaussianLoss(Loss):
    """
    Gaussian negative log-likelihood, :math:`\\rho(z) = z^2/2` (paper eq. 4, 8).

    Examples
    --------
    >>> import torch
    >>> float(GaussianLoss()(torch.tensor(2.0)))
    2.0
    """

    name = "gaussian"

    def rho(self, z):
        return 0.5 * z * z

    def psi(self, z):
        return z

    def irls_weight(self, z):
        return torch.ones_like(z)

    def curvature(self, z):
        """``rho''(z)`` in closed form (see `~astro_dia.uncertainty.loss_curvature`)."""
        return torch.ones_like(z)

    def normalization(self, n_data):
        return 0.5 * n_data * math.log(2 * math.pi)


class HuberLoss(Loss):
    """
    Huber's robust loss (paper eq. 12), quadratic within ``c``, linear beyond.

    Parameters
    ----------
    c : float, optional
        Threshold in units of sigma; 1.345 (Huber & Ronchetti 2009) by
        default.

    Examples
    --------
    >>> loss = HuberLoss(c=1.0)
    >>> loss([0.5, 3.0]).tolist()
    [0.125, 2.5]
    """

    name = "huber"

    def __init__(self, c=1.345):
        c = float(c)
        if not np.isfinite(c) or c <= 0:
            raise ValueError(f"the Huber threshold c must be positive and finite, got {c}")
        self.c = c

    def rho(self, z):
        a = torch.abs(z)
        return torch.where(a <= self.c, 0.5 * z * z, self.c * (a - 0.5 * self.c))

    def psi(self, z):
        return torch.clamp(z, -self.c, self.c)

    def irls_weight(self, z):
        return torch.clamp(self.c / torch.abs(z), max=1.0)

    def curvature(self, z):
        """``rho''(z)`` in closed form (see `~astro_dia.uncertainty.loss_curvature`)."""
        return (torch.abs(z) <= self.c).to(z.dtype)

    def normalization(self, n_data):
        """Q of paper eq. 14."""
        c = self.c
        return n_data * math.log(math.sqrt(2 * math.pi) * math.erf(c / math.sqrt(2))
                                 + 2 * math.exp(-c * c / 2) / c)

    def __repr__(self):
        return f"HuberLoss(c={self.c})"


class StudentTLoss(Loss):
    """
    Student's t negative log-likelihood with ``nu`` degrees of freedom.

    A heavier-tailed alternative to `HuberLoss`:
    :math:`\\rho(z) = \\frac{\\nu+1}{2}\\ln(1 + z^2/\\nu)`.

    Parameters
    ----------
    nu : float, optional
        Degrees of freedom, 4 by default.
    """

    name = "student_t"

    def __init__(self, nu=4.0):
        nu = float(nu)
        if not np.isfinite(nu) or nu <= 0:
            raise ValueError(f"nu must be positive and finite, got {nu}")
        self.nu = nu

    def rho(self, z):
        return 0.5 * (self.nu + 1) * torch.log1p(z * z / self.nu)

    def psi(self, z):
        return (self.nu + 1) * z / (self.nu + z * z)

    def irls_weight(self, z):
        return (self.nu + 1) / (self.nu + z * z)

    def curvature(self, z):
        """``rho''(z)`` in closed form (see `~astro_dia.uncertainty.loss_curvature`)."""
        return (self.nu + 1) * (self.nu - z * z) / (self.nu + z * z) ** 2

    def normalization(self, n_data):
        nu = self.nu
        log_norm = (math.lgamma(nu / 2) - math.lgamma((nu + 1) / 2)
                    + 0.5 * math.log(nu * math.pi))
        return n_data * log_norm

    def __repr__(self):
        return f"StudentTLoss(nu={self.nu})"


def _autograd_psi(rho, z):
    """``rho'(z)`` of a per-pixel loss written with torch operations."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        (derivative,) = torch.autograd.grad(rho(z).sum(), z)
    return derivative


def _ratio(psi, z):
    """``psi(z) / z``, at least 0, with ``psi(1e-3) / 1e-3`` where ``|z| < 1e-3``."""
    with torch.no_grad():
        small = torch.abs(z) < 1e-3
        near_zero = psi(torch.full((), 1e-3, dtype=z.dtype, device=z.device)) / 1e-3
        ratio = torch.where(small, near_zero, psi(z) / torch.where(small, 1.0, z))
        return torch.clamp(ratio, min=0.0)


def loss_psi(loss, z):
    """``rho'(z)`` of any loss: a `Loss`'s own `Loss.psi`, else by autograd."""
    if isinstance(loss, Loss):
        return loss.psi(z)
    return _autograd_psi(loss, z)


def loss_irls_weight(loss, z):
    """``psi(z) / z`` of any loss (`Loss.irls_weight` for a `Loss`)."""
    if isinstance(loss, Loss):
        return loss.irls_weight(z)
    return _ratio(lambda x: _autograd_psi(loss, x), z)


_LOSSES = {"gaussian": GaussianLoss, "huber": HuberLoss, "student_t": StudentTLoss}


def get_loss(loss):
    """
    Return a loss object from a name or callable.

    Parameters
    ----------
    loss : {'gaussian', 'huber', 'student_t'} or callable
        A name (with default parameters) or any callable ``rho(z)`` on
        torch tensors.

    Returns
    -------
    loss : callable

    Raises
    ------
    ValueError
        For an unknown name or an object that is not callable.
    """
    if isinstance(loss, str):
        if loss.lower() not in _LOSSES:
            raise ValueError(f"loss must be one of {sorted(_LOSSES)} or a callable, got {loss!r}")
        return _LOSSES[loss.lower()]()
    if not callable(loss):
        raise ValueError(f"loss must be one of {sorted(_LOSSES)} or a callable, got {loss!r}")
    return loss


def laplacian_matrix(kernel_size):
    """
    Laplacian matrix of the kernel-pixel connectivity graph (paper eq. 21).

    Pixels are adjacent when they share an edge (four-connectivity).

    Parameters
    ----------
    kernel_size : int
        Kernel side length.

    Returns
    -------
    laplacian : (kernel_size**2, kernel_size**2) ndarray
        Rows in C order of the kernel pixels.

    Examples
    --------
    >>> laplacian_matrix(2)
    array([[ 2., -1., -1.,  0.],
           [-1.,  2.,  0., -1.],
           [-1.,  0.,  2., -1.],
           [ 0., -1., -1.,  2.]])
    """
    n = int(kernel_size)
    index = np.arange(n * n).reshape(n, n)
    matrix = np.zeros((n * n, n * n))
    for a, b in ((index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :])):
        a, b = a.ravel(), b.ravel()
        matrix[a, b] = matrix[b, a] = -1.0
        matrix[a, a] += 1.0
        matrix[b, b] += 1.0
    return matrix


def laplacian_penalty(kernel):
    """
    The quadratic form :math:`\\theta^{\\rm T} L \\theta` of a kernel.

    Equal to the sum of squared differences of edge-adjacent kernel pixels,
    computed without building the matrix of `laplacian_matrix`.

    Parameters
    ----------
    kernel : (..., K, K) array_like or tensor
        A kernel, or a stack of them (summed over the stack).

    Returns
    -------
    penalty : float or 0-d tensor
        A tensor (differentiable) for a tensor, else a float.
    """
    tensor = isinstance(kernel, torch.Tensor)
    if not tensor:
        kernel = np.asarray(kernel, dtype=float)
    dx = kernel[..., :, 1:] - kernel[..., :, :-1]
    dy = kernel[..., 1:, :] - kernel[..., :-1, :]
    penalty = (dx * dx).sum() + (dy * dy).sum()
    return penalty if tensor else float(penalty)
