"""
Per-frame seeing and sky, and the choice of reference frames (private).
"""

import numpy as np
from astropy.table import QTable

from ..registration._inputs import read_frame
from ..registration._stars import find_stars

__all__ = []


def frame_name(frame, index, names):
    """The frame's name: ``names[index]``, its FILENAME-like card, or ``frame <index>``."""
    if names is not None:
        return str(names[index])
    meta = getattr(frame, "meta", None) or {}
    for key in ("FILENAME", "ORIGFILE", "FILE", "IRAFNAME"):
        if key in meta:
            value = meta[key]
            return str(value[0] if isinstance(value, tuple) else value)
    return f"frame {index}"


def frame_statistics(frames, *, names=None, threshold=5.0, saturation=None):
    """
    Seeing and sky of each frame.

    Parameters
    ----------
    frames : sequence of `~astropy.nddata.CCDData` or `~astropy.nddata.NDData`
    names : sequence of str, optional
        Names for the table and headers; default each frame's FILENAME
        (or ORIGFILE) card, else ``'frame <index>'``.
    threshold : float, optional
        Star detection threshold in sky standard deviations.
    saturation : float, optional
        Stars peaking above this are not used for the FWHM; default each
        frame's SATURATE card, or none.

    Returns
    -------
    `~astropy.table.QTable`
        One row per frame: ``index``, ``name``, ``fwhm`` (pixels; median
        of 2-D Gaussian fits of up to 30 bright isolated stars, the model
        of ``photutils.psf.fit_fwhm``), ``sky`` (sigma-clipped median, in the
        frame's unit), ``sky_sigma`` (sigma-clipped standard deviation) and
        ``n_stars`` (stars detected).

    Examples
    --------
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, target, _ = make_image_pair(shape=(96, 96), seed=1, target_sky=100.0)
    >>> table = frame_statistics([reference, target])
    >>> bool(table["fwhm"][0] < table["fwhm"][1])   # the target's PSF is wider
    True
    """
    rows = []
    for index, image in enumerate(frames):
        frame = read_frame(image, f"frame {index}")
        level = saturation
        if level is None and frame.meta is not None and "SATURATE" in frame.meta:
            level = float(frame.meta["SATURATE"])
        stars = find_stars(frame.data, frame.mask, threshold=threshold, saturation=level)
        rows.append((index, frame_name(image, index, names), stars.fwhm, stars.sky,
                     stars.sky_sigma, len(stars)))
    names_ = ("index", "name", "fwhm", "sky", "sky_sigma", "n_stars")
    return QTable(rows=rows, names=names_) if rows else QTable(names=names_)


#: Fewest stars a frame needs to be chosen (the fewest `register` matches by default).
MIN_STARS = 5


def choose_frames(table, n_frames, max_fwhm_ratio, max_background_ratio):
    """
    Indices of the frames to combine, best (sharpest) first.

    Frames with fewer than ``MIN_STARS`` stars (clouds, a blank or
    defocused frame: their FWHM means nothing) are left out. Frames whose sky exceeds ``max_background_ratio`` times the median sky
    (when that is positive) are left out, then the rest are ranked by FWHM: the ``n_frames``
    sharpest, or (``n_frames`` None) all within ``max_fwhm_ratio`` of the
    sharpest.
    """
    fwhm = np.asarray(table["fwhm"], float)
    sky = np.asarray(table["sky"], float)
    usable = np.isfinite(fwhm) & (np.asarray(table["n_stars"]) >= MIN_STARS)
    # The cut needs a sky level; sky-subtracted frames (median near 0) skip it.
    if np.any(usable) and np.median(sky[usable]) > 0:
        usable &= sky <= max_background_ratio * np.median(sky[usable])
    order = [int(i) for i in np.argsort(np.where(usable, fwhm, np.inf), kind="stable")
             if usable[i]]
    if not order:
        return []
    if n_frames is not None:
        return order[:n_frames]
    return [i for i in order if fwhm[i] <= max_fwhm_ratio * fwhm[order[0]]]
