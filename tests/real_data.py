"""
Loaders of the real cutouts in ``tests/data/real`` (see its README.rst).

Each loader returns a `RealCutoutPair`: the reference and target as
`~astropy.nddata.CCDData` in adu (float64 copies of the stored uint16
pixels, headers as ``meta``), and the detector settings the tests pass to
`~astro_dia.DifferenceImager` and `~astro_dia.metrics.flux_ratio`. The
files are read with `astropy.io.fits` rather than ``CCDData.read``, whose
WCS parsing warns about the ProperImage headers' DATE-OBS.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData

DATA_DIR = Path(__file__).resolve().parent / "data" / "real"


@dataclass(frozen=True)
class RealCutoutPair:
    """A registered real pair and its detector settings."""

    name: str
    reference: CCDData
    target: CCDData
    gain: u.Quantity          # e-/adu
    read_noise: u.Quantity    # e-
    saturation: float         # adu; the frames have no SATURATE card

    def imager_settings(self, **extra):
        """Keyword arguments of `~astro_dia.DifferenceImager` for this pair."""
        return dict(gain=self.gain, read_noise=self.read_noise, flat=1,
                    saturation=self.saturation, **extra)


def read_cutout(name):
    """One cutout file as CCDData (adu, float64) with its header."""
    with fits.open(DATA_DIR / name) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float64)
        header = hdul[0].header.copy()
    return CCDData(data, unit=u.adu, meta=header)


def properimage_pair():
    """
    The ProperImage cutout pair: 256 x 256, aligned, gain 1, read noise 10 e-.

    Examples
    --------
    >>> pair = properimage_pair()
    >>> pair.reference.shape, pair.target.unit, pair.saturation
    ((256, 256), Unit("adu"), 60000.0)
    """
    return RealCutoutPair("properimage", read_cutout("properimage_ref.fits"),
                          read_cutout("properimage_tgt.fits"), 1.0 * u.electron / u.adu,
                          10.0 * u.electron, 60000.0)


def pydia_pair():
    """
    The pyDIA cutout pair: 320 x 320, crowded, GAIN and RDNOISE from the header.

    Examples
    --------
    >>> pair = pydia_pair()
    >>> pair.target.header["PFWHM"] > pair.reference.header["PFWHM"]
    True
    >>> pair.gain, pair.read_noise
    (<Quantity 1.9 electron / adu>, <Quantity 5. electron>)
    """
    reference = read_cutout("pydia_ref.fits")
    target = read_cutout("pydia_tgt.fits")
    return RealCutoutPair("pydia", reference, target,
                          float(target.header["GAIN"]) * u.electron / u.adu,
                          float(target.header["RDNOISE"]) * u.electron, 65300.0)


#: Loaders by pair name.
PAIRS = {"properimage": properimage_pair, "pydia": pydia_pair}
