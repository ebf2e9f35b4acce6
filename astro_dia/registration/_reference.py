"""
`ReferenceStars`: a reference's stars found once, for registering many images to it.

`register` and `find_transform` detect the stars of both frames at every
call. Registering a series of frames to one reference repeats the
reference's half of that work (detection, seeing, the 2-D centroids of the
stars it pairs); a `ReferenceStars` holds it, and later calls reuse it.
"""

import zlib

import numpy as np

from ._inputs import RegistrationError, read_frame, saturation_level
from ._gaussians import gaussian_centroids
from ._stars import centroid_box, find_stars, reject_moved
from ..fitting._validation import positive_number

__all__ = []


def _fingerprint(data):
    """A checksum of the pixels, to tell whether an image is the one the stars came from."""
    return zlib.crc32(np.ascontiguousarray(data).view(np.uint8))


class ReferenceStars:
    """
    The stars of a reference, detected once and reused by `register` and `find_transform`.

    Registering many frames to one reference finds the reference's stars,
    its seeing and the 2-D centroids of its paired stars only once: pass
    this object as ``reference_stars`` to each call, with the same
    reference. The transforms are those found without it.

    Parameters
    ----------
    reference : `~astropy.nddata.CCDData`, `~astropy.nddata.NDData` or 2-D array
        The reference; NaN or infinite pixels must be masked.
    fwhm : float, optional
        FWHM (pixels) of the star finder's kernel; None (default) measures
        it on the reference, as `register` does.
    threshold : float, optional
        Detection threshold in sky standard deviations.
    saturation : float, optional
        Stars peaking above this are not used; default the SATURATE (or
        SATLEVEL) keyword, or none.

    Attributes
    ----------
    fwhm : float
        The FWHM used (measured when not given).
    shape : tuple of int
        The reference's shape.

    Raises
    ------
    RegistrationError
        For malformed data (see `register`).
    ValueError
        For a ``fwhm`` or ``threshold`` that is not a positive number.

    Examples
    --------
    >>> from astro_dia.registration import ReferenceStars, register
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, image, _ = make_image_pair(shape=(128, 128), shift=(0.3, -1.6), density=60,
    ...                                         target_sky=100.0, seed=0)
    >>> stars = ReferenceStars(reference)
    >>> registered = register(image, reference, reference_stars=stars, resample=False)
    >>> registered.header["REGSHIFX"], registered.header["REGSHIFY"]
    (2, 0)
    """

    def __init__(self, reference, *, fwhm=None, threshold=5.0, saturation=None):
        frame = read_frame(reference, "reference", need_nddata=False)
        fwhm = None if fwhm is None else positive_number(fwhm, "fwhm")
        threshold = positive_number(threshold, "threshold")
        self._stars = find_stars(frame.data, frame.mask, fwhm=fwhm, threshold=threshold,
                                 saturation=saturation_level(frame, saturation))
        self._data, self._mask = frame.data, frame.mask
        self._fingerprint = _fingerprint(frame.data)
        self._fitted = {}

    @property
    def fwhm(self):
        return float(self._stars.fwhm)

    @property
    def shape(self):
        return tuple(self._data.shape)

    def __len__(self):
        return len(self._stars)

    def __repr__(self):
        return (f"<ReferenceStars: {len(self)} stars, FWHM {self.fwhm:.2f} px, "
                f"reference {self.shape[0]} x {self.shape[1]}>")

    def _stars_for(self, frame):
        """The stars, after checking that ``frame`` (an `_Frame`) is their reference."""
        if tuple(frame.shape) != self.shape or _fingerprint(frame.data) != self._fingerprint:
            raise RegistrationError(
                "reference_stars were found on another image than this reference "
                f"(shape {self.shape} against {tuple(frame.shape)}, or other pixels); make "
                "them with ReferenceStars(reference) from the reference registered to")
        return self._stars

    def _centroids(self, index, fwhm):
        """
        2-D Gaussian centroids of the stars ``index``, as `fit_centroids` gives them.

        Each star's fit in a box of a given size is computed once and kept.
        """
        index = np.asarray(index, int)
        box = centroid_box(fwhm)
        values, done = self._fitted.setdefault(
            box, (np.full((len(self._stars), 2), np.nan), np.zeros(len(self._stars), bool)))
        todo = np.unique(index[~done[index]])
        if len(todo):
            values[todo] = gaussian_centroids(self._data, self._mask, self._stars.x[todo],
                                              self._stars.y[todo], box=box, sky=self._stars.sky)
            done[todo] = True
        return reject_moved(values[index], self._stars.x[index], self._stars.y[index], fwhm)


