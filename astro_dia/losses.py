"""
Objective functions: per-pixel negative log-likelihoods and the Laplacian penalty.

A loss here is a callable ``rho(z)`` of the normalised residual
``z = (I - M) / sigma`` (a torch tensor) returning the per-pixel
:math:`\\rho(z)`. The fit minimises

.. math::

    \\mathcal{L}(\\theta) = \\sum_{ij} \\rho(z_{ij}) + \\sum_{ij} \\ln\\sigma_{ij}
    + Q + \\lambda N_{\\rm data}\\,\\theta^{\\rm T} L \\theta

(paper eq. 8, 13 and 20), where ``Q`` is the loss's normalising constant.
Any differentiable callable can be passed as a loss; give it a
``normalization(n_data)`` method to report a comparable loss value.
"""

import math

import numpy as np
import torch

__all__ = ["Loss", "GaussianLoss", "HuberLoss", "StudentTLoss", "get_loss",
           "laplacian_matrix", "laplacian_penalty"]


class Loss:
    """Base class of per-pixel losses ``rho(z)``."""

    #: Short name used in provenance keywords.
    name = "custom"

    def __call__(self, z):
        raise NotImplementedError

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

    def __call__(self, z):
        return 0.5 * z * z

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
    >>> import torch
    >>> loss = HuberLoss(c=1.0)
    >>> [float(v) for v in loss(torch.tensor([0.5, 3.0]))]
    [0.125, 2.5]
    """

    name = "huber"

    def __init__(self, c=1.345):
        c = float(c)
        if not np.isfinite(c) or c <= 0:
            raise ValueError(f"the Huber threshold c must be positive and finite, got {c}")
        self.c = c

    def __call__(self, z):
        a = torch.abs(z)
        return torch.where(a <= self.c, 0.5 * z * z, self.c * (a - 0.5 * self.c))

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

    def __call__(self, z):
        return 0.5 * (self.nu + 1) * torch.log1p(z * z / self.nu)

    def normalization(self, n_data):
        nu = self.nu
        log_norm = (math.lgamma(nu / 2) - math.lgamma((nu + 1) / 2)
                    + 0.5 * math.log(nu * math.pi))
        return n_data * log_norm

    def __repr__(self):
        return f"StudentTLoss(nu={self.nu})"


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
    The quadratic form :math:`\\theta^{\\rm T} L \\theta` of a kernel tensor.

    Equal to the sum of squared differences of edge-adjacent kernel pixels,
    computed without building the matrix of `laplacian_matrix`.

    Parameters
    ----------
    kernel : (..., K, K) tensor
        A kernel, or a stack of them (summed over the stack).

    Returns
    -------
    penalty : 0-d tensor
    """
    dx = kernel[..., :, 1:] - kernel[..., :, :-1]
    dy = kernel[..., 1:, :] - kernel[..., :-1, :]
    return (dx * dx).sum() + (dy * dy).sum()
