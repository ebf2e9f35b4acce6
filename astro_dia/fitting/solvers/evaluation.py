"""
The objective at one parameter vector, from one model image (private).

A Gauss-Newton step needs, at each point it visits, the objective (the
line search), its exact gradient and the re-weighting weights. All three
are functions of the model image ``R (x) K + B`` at that point: an
`Evaluation` computes the model once and derives the rest from it, so that
the point a line search accepted is not convolved again for its gradient
and its weights.

The gradient is exact: the derivative of the data term in each model pixel
(``problem.data_gradient``, with the loss's ``psi``) taken to the
parameters by the adjoint of the model, ``problem.transpose`` (one
correlation with the reference), plus the quadratic kernel terms'
``problem.quadratic_product`` (the Laplacian penalty, the noisy
reference's correction).
"""

import torch

from ...losses import loss_irls_weight

__all__ = []


def pack(kernel, coefficients):
    """Kernel (C order) and background coefficients as one float64 vector."""
    return torch.cat([kernel.reshape(-1), coefficients]).to(torch.float64)


def unpack(problem, theta):
    """Split a parameter vector into kernel and coefficients in the problem's dtype."""
    kernel = theta[:problem.n_kernel].reshape(problem.kernel_shape)
    return kernel.to(problem.dtype), theta[problem.n_kernel:].to(problem.dtype)


def irls_weights_at(problem, model, residuals=None):
    """
    Gauss-Newton weights ``psi(z) / (z sigma**2)`` at ``model``.

    For the Gaussian loss these are ``1 / sigma**2``; for a robust loss
    they are the iteratively re-weighted least-squares weights, smaller
    where ``|z|`` is large. Zero outside the fit mask. ``residuals``, when
    given, is ``problem.normalised_residuals(model)``.
    """
    with torch.no_grad():
        variance, z = problem.normalised_residuals(model) if residuals is None else residuals
        ratio = loss_irls_weight(problem.loss, z)
        return torch.where(problem.mask, ratio / variance, 0.0)


class Evaluation:
    """
    The objective at ``theta``, with its gradient and weights on demand.

    Parameters
    ----------
    problem : ``astro_dia.fitting._problem.FitProblem``
    theta : float64 tensor
        Packed parameters (`pack`).

    Attributes
    ----------
    theta : tensor
        The point (the same object as given).
    value : float
        ``problem.objective`` at ``theta``.
    """

    def __init__(self, problem, theta):
        self.problem, self.theta = problem, theta
        with torch.no_grad():
            self._kernel, coefficients = unpack(problem, theta)
            self._model = problem.model(self._kernel, coefficients)
            self._residuals = problem.normalised_residuals(self._model)
            self.value = float(problem.objective_at_model(self._model, self._kernel,
                                                          self._residuals))
        self._gradient = self._weights = None

    def gradient(self):
        """The exact gradient of the objective (float64 vector, as `pack`)."""
        if self._gradient is None:
            problem = self.problem
            with torch.no_grad():
                image = problem.data_gradient(self._model, self._residuals)
                kernel_part, background_part = problem.transpose(image)
                if problem.regularization > 0 or getattr(problem, "correction", None) is not None:
                    kernel_part = kernel_part + problem.quadratic_product(self._kernel)
            self._gradient = pack(kernel_part, background_part)
        return self._gradient

    def irls_weights(self):
        """`irls_weights_at` the model of ``theta``."""
        if self._weights is None:
            self._weights = irls_weights_at(self.problem, self._model, self._residuals)
        return self._weights


class Evaluations:
    """The latest `Evaluation` of a problem, reused while the point is the same object."""

    def __init__(self, problem):
        self.problem = problem
        self.latest = None

    def at(self, theta):
        """The evaluation at ``theta``; computed only if the latest was at another point."""
        if self.latest is None or self.latest.theta is not theta:
            self.latest = Evaluation(self.problem, theta)
        return self.latest
