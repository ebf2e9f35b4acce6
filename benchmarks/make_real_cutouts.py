"""
Write the real cutouts of ``tests/data/real`` from the shared real frames.

Two pairs, the same region of both frames, pixels copied unchanged
(uint16, written as BITPIX 16 with BZERO 32768 like the originals):

- ``properimage_{ref,tgt}.fits``: rows 0-255, columns 60-315 of the aligned
  ProperImage pair (256 x 256): seven bright isolated unsaturated stars, a
  saturated star (65535 at about x=236, y=81 of the cutout) and the defect
  at x=57, y=43 (a 65535 pixel in the target; in the reference a row of
  values from 1150 to 58974 adu on a sky of 8100, as interpolating a hot
  pixel during the alignment would leave);
- ``pydia_{ref,tgt}.fits``: 320 x 320 pixels of the crowded bulge field,
  reference AKB13475I0028 (PFWHM 4.73 px) and target AKB13475I0113 (night
  56507, PFWHM 5.37 px), registered by the whole-pixel shift measured by
  ``real_pairs.measure_offset`` (9, -30); rows 70-389 and columns 108-427
  of the reference, rows 61-380 and columns 138-457 of the target.
  320 pixels (not less) so that the crowded field still holds ten stars
  isolated enough for `astro_dia.metrics.flux_ratio`.

Each file keeps the original header cards that matter (detector, time,
seeing) and gets HISTORY cards saying where it was cut. Run from the root
of the source tree (a few seconds)::

    PYTHONPATH=. python benchmarks/make_real_cutouts.py [--data DIR] [--out tests/data/real]
"""

import argparse
import os
import sys
import textwrap

import numpy as np
from astropy.io import fits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_pairs import (PROPERIMAGE, PYDIA_DIR, PYDIA_REFERENCE, default_data_dir,  # noqa: E402
                        measure_offset)

PYDIA_TARGET = "AKB13475I0113.fits"
PYDIA_COMMIT = "953b5cefb6ea19962376ea5bf17735d4a4c4aa3a"
PROPERIMAGE_COMMIT = "28fe36da166f35af7041e196871bacf0ca8de26b"

PROPERIMAGE_CARDS = ("OBJECT", "DATE-OBS", "JD", "EXPTIME", "FILTER", "IMAGETYP", "INSTRUME",
                     "XBINNING", "YBINNING", "XPIXSZ", "YPIXSZ", "CCD-TEMP", "FOCALLEN",
                     "APTDIA")
PYDIA_CARDS = ("OBSERVAT", "TELESCOP", "INSTRUME", "OBJECT", "RA", "DEC", "EPOCH", "FILTERS",
               "DATE-OBS", "UT", "MJD-OBS", "PHJDMID", "EXPTIME", "SECZ", "GAIN", "RDNOISE",
               "PFWHM", "PFWHMX", "PFWHMY", "PFWHME", "PBKGRND")

#: (y0, x0) of the ProperImage cutout, and its size.
PROPERIMAGE_CORNER, PROPERIMAGE_SIZE = (0, 60), 256
#: (y0, x0) of the pyDIA cutout in the registered (overlap) frame, and its size.
PYDIA_CORNER, PYDIA_SIZE = (61, 108), 320


def read(path):
    with fits.open(path) as hdul:
        return np.asarray(hdul[0].data), hdul[0].header.copy()


def cut_header(header, cards, history):
    """A new header with ``cards`` copied from ``header`` and ``history`` (text) added."""
    out = fits.Header()
    for card in cards:
        if card in header:
            out[card] = (header[card], header.comments[card])
    for line in textwrap.wrap(" ".join(history), 70):
        out.add_history(line)
    return out


def write(path, data, header):
    if data.dtype != np.uint16:
        raise ValueError(f"{path}: expected uint16 pixels, got {data.dtype}")
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)
    print(f"wrote {path} {data.shape} {os.path.getsize(path)} bytes")


def properimage(data_dir, out_dir):
    (y0, x0), size = PROPERIMAGE_CORNER, PROPERIMAGE_SIZE
    for key, suffix in (("reference", "ref"), ("target", "tgt")):
        name = os.path.basename(PROPERIMAGE[key])
        data, header = read(os.path.join(data_dir, PROPERIMAGE[key]))
        history = [f"Cut from {name} of ProperImage (github.com/quatrope/ProperImage,",
                   f"data/, commit {PROPERIMAGE_COMMIT[:12]}), BSD-3 licence:",
                   f"rows {y0}:{y0 + size}, columns {x0}:{x0 + size} (0-based, end",
                   "excluded); pixels unchanged. benchmarks/make_real_cutouts.py."]
        write(os.path.join(out_dir, f"properimage_{suffix}.fits"),
              data[y0:y0 + size, x0:x0 + size], cut_header(header, PROPERIMAGE_CARDS, history))


def pydia(data_dir, out_dir):
    reference, ref_header = read(os.path.join(data_dir, PYDIA_DIR, PYDIA_REFERENCE))
    target, tgt_header = read(os.path.join(data_dir, PYDIA_DIR, PYDIA_TARGET))
    offset, n_matched, _ = measure_offset(reference.astype(float), target.astype(float),
                                          fwhm=(ref_header["PFWHM"], tgt_header["PFWHM"]))
    dy, dx = (int(np.round(o)) for o in offset)
    (y0, x0), size = PYDIA_CORNER, PYDIA_SIZE
    corners = {"ref": (y0 + max(dy, 0), x0 + max(dx, 0)),
               "tgt": (y0 + max(-dy, 0), x0 + max(-dx, 0))}
    for suffix, data, header, name in (("ref", reference, ref_header, PYDIA_REFERENCE),
                                       ("tgt", target, tgt_header, PYDIA_TARGET)):
        cy, cx = corners[suffix]
        history = [f"Cut from {name} of pyDIA (github.com/MichaelDAlbrow/pyDIA,",
                   f"Example/Images, commit {PYDIA_COMMIT[:12]}), MIT licence:",
                   f"rows {cy}:{cy + size}, columns {cx}:{cx + size} (0-based, end",
                   "excluded); pixels unchanged. Target registered to the",
                   f"reference by the whole-pixel shift (dy, dx) = ({dy}, {dx}) (measured",
                   f"{offset[0]:+.2f}, {offset[1]:+.2f} from {n_matched} matched stars).",
                   "Seeing cards (PFWHM...) are of the full frame. No SATURATE",
                   "card: stars saturate at 65300 adu. benchmarks/make_real_cutouts.py."]
        write(os.path.join(out_dir, f"pydia_{suffix}.fits"),
              data[cy:cy + size, cx:cx + size], cut_header(header, PYDIA_CARDS, history))


def main(argv=None):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=default_data_dir(), help="folder of the real frames")
    parser.add_argument("--out", default=os.path.join(root, "tests", "data", "real"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    properimage(args.data, args.out)
    pydia(args.data, args.out)


if __name__ == "__main__":
    main()
