"""
Real frame pairs for the benchmarks: reading, registration by whole pixels, detector settings.

Shared by ``validate_real_data.py`` (the benchmark) and
``make_real_cutouts.py`` (the cutouts in ``tests/data/real``). The frames
are those of ``../shared/data/real`` (see its README.md):

- ``properimage``: the aligned ProperImage pair (ESO 085-030, 60 s each,
  74 s apart); no detector keywords, so gain 1 e-/adu, read noise 10 e- and
  saturation 60000 adu are given here;
- ``pydia-NNNN``: pyDIA's crowded bulge field (KB13475), reference
  AKB13475I0028 (night 56481, PFWHM 4.73 px) against the target
  AKB13475I``NNNN`` of night 56507; GAIN 1.9 e-/adu and RDNOISE 5 e- from
  the headers, saturation 65300 adu (the frames have no SATURATE card).

The pyDIA frames are not aligned: `measure_offset` finds the translation
from matched star centroids, and `register_integer` shifts by its whole
part and crops both frames to their overlap (the pixel kernel of a
difference-imaging fit absorbs the fraction).
"""

import os
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.stats import sigma_clipped_stats

PROPERIMAGE = dict(reference="properimage_eso085/aligned_eso085-030-004.fit",
                   target="properimage_eso085/aligned_eso085-030-005.fit",
                   gain=1.0, read_noise=10.0, saturation=60000.0)

PYDIA_DIR = "pydia_kb13475"
#: Good seeing (PFWHM 4.73 px) and a low sky (PBKGRND 904 adu), night 56481.
PYDIA_REFERENCE = "AKB13475I0028.fits"
#: Night 56507, PFWHM 4.69 (about as sharp as the reference), 5.37, 5.98, 6.54, 7.50, 7.92 px.
PYDIA_TARGETS = ("0103", "0113", "0143", "0133", "0089", "0090")
PYDIA_SATURATION = 65300.0

#: Pair names, in the order the benchmark runs them.
PAIR_NAMES = ("properimage",) + tuple(f"pydia-{n}" for n in PYDIA_TARGETS)


@dataclass
class RealPair:
    """A registered pair: CCDData in adu on one grid, and its detector settings."""

    name: str
    reference: CCDData
    target: CCDData
    gain: float          # e-/adu
    read_noise: float    # e-
    saturation: float    # adu
    offset: tuple        # measured (dy, dx): target pixel + offset = reference pixel
    shift: tuple         # whole-pixel part applied


def default_data_dir():
    """``../shared/data/real`` relative to the root of the source tree."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.normpath(os.path.join(root, "..", "shared", "data", "real"))


def read_frame(path):
    """A FITS frame as CCDData (float64, adu) with its primary header."""
    with fits.open(path) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float64)
        header = hdul[0].header.copy()
    for card in ("BZERO", "BSCALE"):
        header.remove(card, ignore_missing=True)
    return CCDData(data, unit="adu", meta=header)


def bright_centroids(data, fwhm, saturation, n_stars=150):
    """``(x, y)`` centroids of the brightest unsaturated stars (DAOStarFinder)."""
    from photutils.detection import DAOStarFinder

    _, median, std = sigma_clipped_stats(data)
    finder = DAOStarFinder(10 * std, fwhm, peak_max=0.9 * saturation - median,
                           n_brightest=n_stars, exclude_border=True)
    sources = finder(data - median)
    if sources is None:
        return np.empty((0, 2))
    return np.column_stack([sources["x_centroid"], sources["y_centroid"]])


def coarse_offset(reference, target):
    """Whole-frame ``(dy, dx)`` from phase correlation of sky-normalised, clipped frames."""
    from skimage.registration import phase_cross_correlation

    images = []
    for data in (reference, target):
        _, median, std = sigma_clipped_stats(data)
        images.append(np.clip((data - median) / std, 0, 50))
    shift, _, _ = phase_cross_correlation(images[0], images[1], upsample_factor=10)
    return shift  # the shift that registers the target onto the reference: + (dy, dx)


def measure_offset(reference, target, *, fwhm=(5.0, 5.0), saturation=PYDIA_SATURATION,
                   match_radius=3.0):
    """
    Translation between two frames from matched star centroids.

    Returns ``(dy, dx), n_matched, (std_y, std_x)``: a star at target pixel
    ``(y, x)`` is at reference pixel ``(y + dy, x + dx)``; the median of the
    matched centroid differences, their number and scatter. ``fwhm`` is
    that of the reference and of the target (pixels), for the star finder.
    """
    from scipy.spatial import cKDTree

    ref_xy = bright_centroids(reference, fwhm[0], saturation)
    tgt_xy = bright_centroids(target, fwhm[1], saturation)
    dy, dx = coarse_offset(reference, target)
    distance, index = cKDTree(ref_xy).query(tgt_xy + [dx, dy],
                                            distance_upper_bound=match_radius)
    matched = np.isfinite(distance)
    if matched.sum() < 5:
        raise RuntimeError(f"only {int(matched.sum())} stars matched between the frames "
                           f"(coarse offset {dy:.1f}, {dx:.1f})")
    difference = ref_xy[index[matched]] - tgt_xy[matched]
    offset = np.median(difference, axis=0)
    return (float(offset[1]), float(offset[0])), int(matched.sum()), tuple(
        float(s) for s in np.std(difference, axis=0)[::-1])


def register_integer(reference, target, shift):
    """
    Copies of both frames cropped to their overlap after a whole-pixel shift.

    ``shift = (dy, dx)`` (ints): target pixel ``(y, x)`` is reference pixel
    ``(y + dy, x + dx)``.
    """
    ny, nx = reference.shape
    dy, dx = (int(s) for s in shift)
    ref_slices = (slice(max(dy, 0), ny + min(dy, 0)), slice(max(dx, 0), nx + min(dx, 0)))
    tgt_slices = (slice(max(-dy, 0), ny + min(-dy, 0)), slice(max(-dx, 0), nx + min(-dx, 0)))
    out = []
    for image, slices in ((reference, ref_slices), (target, tgt_slices)):
        header = image.header.copy()
        header["HISTORY"] = (f"cropped to [{slices[0].start}:{slices[0].stop}, "
                             f"{slices[1].start}:{slices[1].stop}] (0-based y, x) to "
                             f"register by the whole-pixel shift {dy}, {dx}")
        out.append(CCDData(image.data[slices].copy(), unit=image.unit, meta=header))
    return out


def load_pair(name, data_dir=None):
    """The registered `RealPair` called ``name`` (one of `PAIR_NAMES`)."""
    data_dir = data_dir or default_data_dir()
    if name not in PAIR_NAMES:
        raise ValueError(f"unknown pair {name!r}; choose from {', '.join(PAIR_NAMES)}")
    if name == "properimage":
        reference = read_frame(os.path.join(data_dir, PROPERIMAGE["reference"]))
        target = read_frame(os.path.join(data_dir, PROPERIMAGE["target"]))
        return RealPair(name, reference, target, PROPERIMAGE["gain"],
                        PROPERIMAGE["read_noise"], PROPERIMAGE["saturation"], (0.0, 0.0),
                        (0, 0))
    number = name.split("-", 1)[1]
    reference = read_frame(os.path.join(data_dir, PYDIA_DIR, PYDIA_REFERENCE))
    target = read_frame(os.path.join(data_dir, PYDIA_DIR, f"AKB13475I{number}.fits"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # photutils' no-detection and fit warnings
        offset, _, _ = measure_offset(reference.data, target.data,
                                      fwhm=(reference.header["PFWHM"], target.header["PFWHM"]))
    shift = tuple(int(np.round(o)) for o in offset)
    reference, target = register_integer(reference, target, shift)
    return RealPair(name, reference, target, float(target.header["GAIN"]),
                    float(target.header["RDNOISE"]), PYDIA_SATURATION, offset, shift)
