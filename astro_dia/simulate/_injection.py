"""
Point sources injected into a simulated target, and the S/N they should have.

Used to validate detection (`astro_dia.detection`): `inject_point_sources`
adds pixel-integrated Gaussian sources to a copy of an image, and
`expected_snr` gives the matched-filter S/N each has in a difference image
of a given variance, ``flux * sqrt(sum(phi**2 / V))`` over the pixels of
its PSF ``phi``. Public through `astro_dia.simulate`.
"""

import numpy as np
from astropy.table import QTable

from ._star_field import render_stars

__all__ = ["inject_point_sources", "expected_snr"]


def _sources(x, y, flux):
    x, y, flux = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float),
                                     np.asarray(flux, float))
    return QTable({"x": x.ravel(), "y": y.ravel(), "flux": flux.ravel()})


def inject_point_sources(image, x, y, flux, psf_sigma):
    """
    A copy of ``image`` with point sources added.

    Parameters
    ----------
    image : `~astropy.nddata.CCDData`
        The image (e.g. a simulated target); it is not changed.
    x, y : array_like
        0-based pixel positions of the sources.
    flux : float or array_like
        Their fluxes, in the image's unit; negative values make fading
        sources (holes).
    psf_sigma : float
        Standard deviation (pixels) of their Gaussian PSF, that of the
        target (``hypot(psf_sigma, kernel_sigma)`` for `make_image_pair`).

    Returns
    -------
    image : `~astropy.nddata.CCDData`
        The copy; the sources are noiseless (for sources faint against the
        sky, their own photon noise is small).
    """
    out = image.copy()
    out.data = np.asarray(out.data, float) + render_stars(out.data.shape, _sources(x, y, flux),
                                                          float(psf_sigma))
    return out


def expected_snr(x, y, flux, psf_sigma, variance):
    """
    The matched-filter S/N of point sources in an image of given variance.

    Parameters
    ----------
    x, y, flux, psf_sigma
        As for `inject_point_sources`.
    variance : (M, N) ndarray
        Variance of the difference image's pixels (e.g.
        ``truth.target_variance``, plus the reference's through the kernel).

    Returns
    -------
    snr : ndarray
        ``|flux| * sqrt(sum(phi**2 / V))`` for each source.
    """
    sources = _sources(x, y, 1.0)
    variance = np.asarray(variance, float)
    snr = np.empty(len(sources))
    for i in range(len(sources)):
        phi = render_stars(variance.shape, sources[i:i + 1], float(psf_sigma))
        snr[i] = np.sqrt(np.sum(phi ** 2 / variance))
    return snr * np.abs(np.broadcast_to(np.asarray(flux, float), snr.shape))
