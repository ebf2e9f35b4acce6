"""
Stars for registration and for choosing reference frames (private).

`find_stars` detects point sources with photutils' `DAOStarFinder`
(a matched filter whose kernel sums to zero, so a smooth sky needs no
subtraction) and returns their centroids and fluxes, brightest first;
`measure_fwhm` fits circular Gaussians (photutils' ``fit_fwhm`` model) to
bright isolated unsaturated stars and returns the median FWHM; `fit_centroids`
fits elliptical ones (photutils' ``centroid_2dg`` model). Both fit all the
stars at once (`_gaussians`).
"""

import inspect
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.stats import sigma_clipped_stats
from scipy.spatial import cKDTree

from ._gaussians import gaussian_centroids, gaussian_fwhms

__all__ = []

#: FWHM (pixels) the finder assumes before the seeing is measured.
FIRST_FWHM = 3.0
#: Limit of DAOFIND's roundness statistics (its default is 1).
ROUNDNESS = 2.0
#: Stars whose FWHM is fitted to measure the seeing.
FWHM_STARS = 30
#: The sky's statistics take every n-th pixel in x and y, n the largest that
#: keeps at least this many pixels (all of them for frames up to 632 x 632).
SKY_PIXELS = 100_000


@dataclass
class Stars:
    """Detected stars, brightest first: 0-based ``x``, ``y``, ``flux``, ``peak``."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    peak: np.ndarray
    fwhm: float
    sky: float
    sky_sigma: float

    def __len__(self):
        return len(self.x)

    @property
    def xy(self):
        return np.column_stack([self.x, self.y])

    @property
    def error(self):
        """
        Rough centroid error (pixels per axis) of each star: PSF sigma / (S/N).

        The S/N counts the star's own Poisson noise (as if in electrons) and
        that of the sky under a Gaussian PSF's noise-equivalent area; only
        the stars' relative weights in the transform fit depend on it.
        """
        sigma = self.fwhm / 2.3548
        flux = np.maximum(self.flux, 1e-30)
        noise = np.sqrt(flux + 4 * np.pi * sigma ** 2 * self.sky_sigma ** 2)
        return sigma * noise / flux

    def take(self, index):
        return Stars(self.x[index], self.y[index], self.flux[index], self.peak[index],
                     self.fwhm, self.sky, self.sky_sigma)


def sky_statistics(data, mask):
    """
    Sigma-clipped median and standard deviation of the unmasked pixels.

    On a large frame, of a regular subsample of them (`SKY_PIXELS`): both
    are then known to a fraction of a per cent, at a tenth of the cost for
    a 1000 x 1000 frame.
    """
    step = max(1, int(np.sqrt(data.size / SKY_PIXELS)))
    data, mask = data[::step, ::step], mask[::step, ::step]
    _, median, std = sigma_clipped_stats(data, mask=mask, sigma=3.0, maxiters=10)
    return float(median), float(std)


def _detect(data, mask, fwhm, threshold, sky_sigma, peak_max):
    from photutils.detection import DAOStarFinder
    from photutils.utils.exceptions import NoDetectionsWarning

    # DAOFIND's default roundness cut (-1, 1) drops many real stars of crowded
    # fields (blends, saturated cores), and not the same ones in two frames;
    # wide limits keep the lists alike, and the transform fit rejects blends.
    if "roundness_range" in inspect.signature(DAOStarFinder).parameters:  # photutils >= 3
        shape_limits = {"roundness_range": (-ROUNDNESS, ROUNDNESS)}
    else:
        shape_limits = {"roundlo": -ROUNDNESS, "roundhi": ROUNDNESS}
    finder = DAOStarFinder(threshold * sky_sigma, fwhm, exclude_border=True, peak_max=peak_max,
                           **shape_limits)
    with warnings.catch_warnings():
        # "No sources were found" is an answer here, not a problem.
        warnings.simplefilter("ignore", NoDetectionsWarning)
        table = finder.find_stars(data, mask=mask)
    if table is None:
        return np.zeros((0, 4))
    names = table.colnames
    # photutils 3 renamed xcentroid to x_centroid; 2.x has only the old names.
    columns = [np.asarray(table[new if new in names else old], float)
               for new, old in (("x_centroid", "xcentroid"), ("y_centroid", "ycentroid"),
                                ("flux", "flux"), ("peak", "peak"))]
    columns = np.column_stack(columns)
    columns = columns[np.all(np.isfinite(columns), axis=1) & (columns[:, 2] > 0)]
    return columns[np.argsort(-columns[:, 2], kind="stable")]


def isolated(x, y, radius):
    """Whether each star has no other within ``radius`` pixels."""
    if len(x) < 2:
        return np.ones(len(x), bool)
    tree = cKDTree(np.column_stack([x, y]))
    distance, _ = tree.query(np.column_stack([x, y]), k=2)
    return distance[:, 1] > radius


def measure_fwhm(data, mask, x, y, *, guess, sky=0.0, saturation=None, peak=None):
    """
    Median FWHM (pixels) of up to `FWHM_STARS` bright isolated stars at ``x, y``.

    The stars must be brightest first; saturated ones (``peak`` + sky at or
    above ``saturation``) and stars with a neighbour within 3 ``guess`` are
    skipped. The fits are those of photutils' ``fit_fwhm`` (a pixel-integrated
    circular Gaussian in a box ``2 ceil(1.5 guess) + 1`` pixels wide), all
    stars at once (`gaussian_fwhms`). Returns NaN when no star can be fitted.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = isolated(x, y, 3.0 * guess)
    if saturation is not None and peak is not None:
        ok &= np.asarray(peak) + sky < 0.9 * saturation
    size = int(2 * np.ceil(1.5 * guess) + 1)
    half = size // 2
    ny, nx = data.shape
    ok &= (x > half) & (x < nx - 1 - half) & (y > half) & (y < ny - 1 - half)
    index = np.flatnonzero(ok)[:FWHM_STARS]
    if len(index) == 0:
        return float("nan")
    fwhm = np.abs(gaussian_fwhms(data, mask, x[index], y[index], box=size, fwhm=guess, sky=sky))
    fwhm = fwhm[np.isfinite(fwhm) & (fwhm > 0.5) & (fwhm < 10 * size)]
    return float(np.median(fwhm)) if len(fwhm) else float("nan")


def find_stars(data, mask, *, fwhm=None, threshold=5.0, saturation=None, max_stars=500):
    """
    Detect stars, measuring the seeing first when ``fwhm`` is None.

    Parameters
    ----------
    data : 2-D array
    mask : 2-D bool array
    fwhm : float or None
        FWHM (pixels) of the finder's kernel; None measures it.
    threshold : float
        Detection threshold in sky standard deviations.
    saturation : float or None
        Stars peaking at or above this level are left out.
    max_stars : int
        Keep at most this many, the brightest.

    Returns
    -------
    `Stars`
    """
    sky, sky_sigma = sky_statistics(data, mask)
    if not np.isfinite(sky_sigma) or sky_sigma <= 0:
        sky_sigma = max(float(np.nanstd(data[~mask])) if np.any(~mask) else 0.0, 1e-30)
    peak_max = None if saturation is None else saturation - sky
    measured = fwhm
    if fwhm is None:
        first = _detect(data, mask, FIRST_FWHM, threshold, sky_sigma, peak_max)
        measured = measure_fwhm(data, mask, first[:, 0], first[:, 1], guess=FIRST_FWHM,
                                sky=sky, saturation=saturation, peak=first[:, 3])
        if not np.isfinite(measured):
            measured = FIRST_FWHM
        measured = float(np.clip(measured, 1.0, min(data.shape) / 4))
    table = _detect(data, mask, measured, threshold, sky_sigma, peak_max)[:max_stars]
    return Stars(table[:, 0], table[:, 1], table[:, 2], table[:, 3], float(measured), sky,
                 sky_sigma)


def centroid_box(fwhm):
    """Side (pixels) of the box `fit_centroids` fits in: ``2 round(fwhm) + 1``."""
    return 2 * int(round(fwhm)) + 1


def reject_moved(xy, x, y, fwhm):
    """``xy`` with NaN where a centroid moved more than half the FWHM from ``x, y``."""
    xy = np.array(xy, float)
    moved = np.hypot(xy[:, 0] - np.asarray(x, float), xy[:, 1] - np.asarray(y, float)) \
        > 0.5 * fwhm
    xy[moved] = np.nan
    return xy


def fit_centroids(data, mask, x, y, *, fwhm, sky=0.0):
    """
    2-D Gaussian centroids (those of photutils' ``centroid_2dg``) near ``x, y``.

    More faithful than the finder's marginal fits when the PSF is
    asymmetric or the field crowded; NaN where the fit fails or the box
    leaves the image. The box is ``2 round(fwhm) + 1`` pixels wide.
    """
    xy = gaussian_centroids(data, mask, x, y, box=centroid_box(fwhm), sky=sky)
    return reject_moved(xy, x, y, fwhm)
