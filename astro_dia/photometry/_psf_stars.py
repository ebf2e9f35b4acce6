"""
Stars of a reference image for PSF building and light curves: `find_psf_stars`.

photutils `~photutils.detection.DAOStarFinder` finds the reference's
stars (`reference_sources`, brightest first, each marked isolated or not
and saturated or not); `find_psf_stars` keeps the bright, isolated,
unsaturated ones that `build_reference_psf` needs.
"""

import warnings

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning
from scipy.spatial import cKDTree

__all__ = ["find_psf_stars"]


def _finder_table(data, fwhm, threshold):
    from photutils.detection import DAOStarFinder

    _, median, std = sigma_clipped_stats(data, maxiters=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)   # no sources is not an error here
        found = DAOStarFinder(threshold * std, fwhm, exclude_border=True)(data - median)
    return found, median, std


def reference_sources(reference, fwhm, *, threshold=10.0, max_sources=500, saturation=None,
                      saturated_fraction=0.9):
    """
    The reference's stars, brightest first.

    Parameters
    ----------
    reference : `~astropy.nddata.CCDData`
    fwhm : float
        FWHM of the reference PSF (pixels).
    threshold : float, optional
        Detection threshold in sky standard deviations.
    max_sources : int, optional
        Keep at most this many (the brightest).
    saturation : float, optional
        Stars peaking above ``saturated_fraction`` of it are flagged
        ``saturated``.
    saturated_fraction : float, optional
        See ``saturation``; lower it for a stacked reference, whose
        averaged cores stay below the level their sharpest frames reach.

    Returns
    -------
    sources : `~astropy.table.QTable`
        ``x``, ``y`` (0-based), ``peak`` (above the sky), ``isolated``
        (no brighter-than-a-tenth neighbour within 3 FWHM) and
        ``saturated``.
    """
    data = np.asarray(reference.data, float)
    bad = ~np.isfinite(data)
    if reference.mask is not None:
        bad |= np.asarray(reference.mask, bool)
    data = np.where(bad, np.nanmedian(data[~bad]), data)
    found, median, _ = _finder_table(data, fwhm, threshold)
    if found is None or len(found) == 0:
        return QTable({"x": np.zeros(0), "y": np.zeros(0), "peak": np.zeros(0),
                       "isolated": np.zeros(0, bool), "saturated": np.zeros(0, bool)})
    order = np.argsort(-np.asarray(found["peak"], float))
    found = found[order]
    x = np.asarray(found["x_centroid"], float)
    y = np.asarray(found["y_centroid"], float)
    peak = np.asarray(found["peak"], float)
    tree = cKDTree(np.column_stack([x, y]))
    isolated = np.ones(len(x), bool)
    for i, neighbours in enumerate(tree.query_ball_point(np.column_stack([x, y]), 3 * fwhm)):
        others = [j for j in neighbours if j != i]
        isolated[i] = not any(peak[j] > 0.1 * peak[i] for j in others)
    saturated = np.zeros(len(x), bool)
    if saturation is not None:
        saturated = peak + median >= saturated_fraction * float(saturation)
    table = QTable({"x": x, "y": y, "peak": peak, "isolated": isolated,
                    "saturated": saturated})
    return table[:int(max_sources)]



def epsf_size(fwhm):
    """Odd side (pixels) of the cutouts an ePSF is built from: five FWHM, rounded up."""
    return int(2 * np.ceil(2.5 * float(fwhm)) + 1)


def find_psf_stars(reference, fwhm, *, threshold=10.0, max_stars=40, saturation=None):
    """
    Bright, isolated, unsaturated stars of a reference, for `build_reference_psf`.

    Parameters
    ----------
    reference : `~astropy.nddata.CCDData` or `~astropy.nddata.NDData`
        The reference image (its mask is honoured).
    fwhm : float
        FWHM of its PSF in pixels (for the star finder).
    threshold : float, optional
        Detection threshold in sky standard deviations.
    max_stars : int, optional
        Keep at most this many, the brightest.
    saturation : float, optional
        Stars peaking above 90% of this level (in the image's unit) are left
        out; give it for frames whose stars saturate.

    Returns
    -------
    stars : `~astropy.table.QTable`
        ``x``, ``y`` (0-based pixels) and ``peak`` (above the sky),
        brightest first; no neighbour brighter than a tenth of the star
        lies within 3 FWHM.

    Examples
    --------
    >>> from astro_dia.photometry import build_reference_psf, find_psf_stars
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, _, _ = make_image_pair((160, 160), density=30, seed=2)
    >>> stars = find_psf_stars(reference, fwhm=3.5)
    >>> psf = build_reference_psf(reference, stars, size=15)
    >>> len(stars) > 5
    True
    """
    sources = reference_sources(reference, float(fwhm), threshold=threshold,
                                max_sources=np.iinfo(np.int32).max, saturation=saturation)
    keep = np.asarray(sources["isolated"], bool) & ~np.asarray(sources["saturated"], bool)
    return sources[keep][["x", "y", "peak"]][:int(max_stars)]
