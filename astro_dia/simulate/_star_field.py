"""
Simulated star fields (private): positions and fluxes, and their images.

This module owns the star field of paper section 3.1 (`make_star_field`,
re-exported by `astro_dia.simulate`) and its rendering with
pixel-integrated Gaussian PSFs (`render_stars`), shared by the image pairs
of `astro_dia.simulate` and the time series of `astro_dia.simulate._series`.
"""

import numpy as np
from astropy.table import QTable

__all__ = []


def render_stars(shape, stars, sigma, *, dx=0.0, dy=0.0, flux_scale=1.0):
    """Pixel-integrated Gaussian stars (photutils PRF models); ``sigma`` may be per star."""
    from photutils.datasets import make_model_image
    from photutils.psf import CircularGaussianSigmaPRF

    if len(stars) == 0:
        return np.zeros(shape)
    params = QTable({"x_0": np.asarray(stars["x"], float) + dx,
                     "y_0": np.asarray(stars["y"], float) + dy,
                     "flux": np.asarray(stars["flux"], float) * flux_scale})
    if np.ndim(sigma):
        params["sigma"] = np.broadcast_to(np.asarray(sigma, float), len(stars))
    size = 2 * int(np.ceil(8 * np.max(sigma))) + 1
    sigma = float(np.max(sigma))
    return make_model_image(shape, CircularGaussianSigmaPRF(sigma=sigma), params,
                            model_shape=(size, size))


def make_star_field(shape, *, density=30.0, seed=None, bright_star_center=True):
    """
    Draw star positions and fluxes as in paper section 3.1.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image.
    density : float, optional
        Stars per 100 x 100 pixels.
    seed : int or `numpy.random.Generator`, optional
    bright_star_center : bool, optional
        Move the brightest star to the image centre (for photometry tests).

    Returns
    -------
    stars : `~astropy.table.QTable`
        Columns ``x``, ``y`` (0-based pixel coordinates) and ``flux``
        (adu), with :math:`F^{-3/2}` uniform in :math:`[10^{-9}, 10^{-4.5}]`.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    n_stars = max(1, int(round(density * ny * nx / 1e4)))
    x = rng.uniform(-0.5, nx - 0.5, n_stars)
    y = rng.uniform(-0.5, ny - 0.5, n_stars)
    flux = rng.uniform(1e-9, 10 ** -4.5, n_stars) ** (-2.0 / 3.0)
    if bright_star_center:
        brightest = int(np.argmax(flux))
        x[brightest], y[brightest] = (nx - 1) / 2, (ny - 1) / 2
    return QTable({"x": x, "y": y, "flux": flux})
