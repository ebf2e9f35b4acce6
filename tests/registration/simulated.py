"""
Simulated frames with a known transform, for the registration and reference tests.

`star_pair` renders one star field twice: on the reference's grid at the
stars' positions, and on the image's grid at the positions the inverse of
a known transform gives, with Poisson and read noise and the true
uncertainty attached, so that `register` must recover the transform and
carry the noise. `tan_wcs` gives a simple TAN WCS; `image_wcs` the WCS the
image would have under the transform, optionally off by a pixel offset.
"""

import numpy as np
from astropy import units as u
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.table import QTable
from astropy.wcs import WCS
from photutils.datasets import make_model_image
from photutils.psf import CircularGaussianPRF
from skimage.transform import AffineTransform

GAIN, READ_NOISE = 2.0, 5.0  # e-/adu, e-


def render(shape, x, y, flux, fwhm):
    size = 2 * int(np.ceil(3 * fwhm)) + 1
    # Rendered on a canvas padded by ``size``, stars at most size/2 outside the frame.
    near = ((x > -size / 2) & (x < shape[1] + size / 2) & (y > -size / 2)
            & (y < shape[0] + size / 2))
    params = QTable({"x_0": x[near] + size, "y_0": y[near] + size, "flux": flux[near]})
    canvas = make_model_image((shape[0] + 2 * size, shape[1] + 2 * size),
                              CircularGaussianPRF(fwhm=fwhm), params, model_shape=(size, size))
    return canvas[size:-size, size:-size]


def observe(model, rng, sky):
    """Noisy CCDData (adu) of ``model`` + ``sky`` with its true uncertainty."""
    expected = model + sky
    electrons = rng.poisson(expected * GAIN) + rng.normal(0, READ_NOISE, model.shape)
    sigma = np.sqrt(expected / GAIN + (READ_NOISE / GAIN) ** 2)
    return CCDData(electrons / GAIN, unit=u.adu, uncertainty=StdDevUncertainty(sigma),
                   meta={"GAIN": GAIN, "RDNOISE": READ_NOISE})


def star_field(rng, shape, n_stars, margin=60):
    ny, nx = shape
    x = rng.uniform(-margin, nx + margin, n_stars)
    y = rng.uniform(-margin, ny + margin, n_stars)
    flux = 10 ** rng.uniform(3.3, 5.5, n_stars)
    return x, y, flux


def star_pair(transform, *, shape=(160, 160), n_stars=120, fwhm=(3.5, 4.0), sky=(300.0, 500.0),
              seed=0, noise=True):
    """
    ``(image, reference, truth)``: the truth maps image pixels to reference pixels.

    ``transform`` is a scikit-image transform or a 3 x 3 matrix (image ``(x, y, 1)``
    to reference).
    """
    truth = transform if hasattr(transform, "params") else AffineTransform(matrix=transform)
    rng = np.random.default_rng(seed)
    x, y, flux = star_field(rng, shape, n_stars)
    ix, iy = truth.inverse(np.column_stack([x, y])).T
    reference_model = render(shape, x, y, flux, fwhm[0])
    image_model = render(shape, ix, iy, flux, fwhm[1])
    if not noise:
        return (CCDData(image_model + sky[1], unit=u.adu),
                CCDData(reference_model + sky[0], unit=u.adu), truth)
    return observe(image_model, rng, sky[1]), observe(reference_model, rng, sky[0]), truth


def tan_wcs(shape, scale=0.5 / 3600):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [271.37, -25.29]
    wcs.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    wcs.wcs.cd = np.array([[-scale, 0.0], [0.0, scale]])
    return wcs


def image_wcs(reference_wcs, truth, offset=(0.0, 0.0)):
    """The image's WCS under ``truth`` (affine), its pixels off by ``offset`` (x, y)."""
    matrix = np.asarray(truth.params, float)
    wcs = reference_wcs.deepcopy()
    # sky(p_image) = sky_ref(A p + t): CD_image = CD_ref A, CRPIX_image = A^-1 (CRPIX_ref - t)
    crpix0 = reference_wcs.wcs.crpix - 1.0
    inverse = np.linalg.inv(matrix)
    wcs.wcs.crpix = (inverse[:2, :2] @ crpix0 + inverse[:2, 2]) + 1.0 + np.asarray(offset)
    wcs.wcs.cd = reference_wcs.wcs.cd @ matrix[:2, :2]
    return wcs
