"""
Write the unregistered real cutouts of ``tests/data/real`` for the registration tests.

Two frames of pyDIA's crowded bulge field (KB13475), cut at the same pixel
rows and columns so that the large translation between the frames stays in
the cutouts (the tests must find it):

- ``pydia_reg_ref.fits``: AKB13475I0028 (night 56481, PFWHM 4.73 px);
- ``pydia_reg_img.fits``: AKB13475I0113 (night 56507, PFWHM 5.37 px), whose
  stars sit about (dx, dy) = (+29.8, -8.9) pixels from the reference's;
- ``pydia_reg_0103.fits``, ``pydia_reg_0104.fits``: AKB13475I0103 and
  AKB13475I0104 (night 56507, 3.7 minutes apart, PFWHM 4.69 and 4.76 px,
  the same pointing to 0.1 px, about (dx, dy) = (+13.6, -30.3) from the
  reference's): a pair whose difference cancels the static sky, for the
  noise of registered frames.

Rows 150-349 and columns 150-349 (0-based) of both, 200 x 200, stored as
float32 (the original int16 pixels, exactly). Each file keeps the original
header cards that matter and HISTORY cards saying how it was cut. Run
from the root of the source tree (a second)::

    python benchmarks/make_registration_cutouts.py [--data DIR] [--out tests/data/real]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_real_cutouts import PYDIA_CARDS, PYDIA_COMMIT, cut_header, read  # noqa: E402
from real_pairs import PYDIA_DIR, default_data_dir  # noqa: E402

FRAMES = {"ref": "AKB13475I0028.fits", "img": "AKB13475I0113.fits",
          "0103": "AKB13475I0103.fits", "0104": "AKB13475I0104.fits"}
#: (y0, x0) of both cutouts, and their size.
CORNER, SIZE = (150, 150), 200


def main(argv=None):
    from astropy.io import fits

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=default_data_dir(), help="folder of the real frames")
    parser.add_argument("--out", default=os.path.join(root, "tests", "data", "real"))
    args = parser.parse_args(argv)
    (y0, x0) = CORNER
    for suffix, name in FRAMES.items():
        data, header = read(os.path.join(args.data, PYDIA_DIR, name))
        history = [f"Cut from {name} of pyDIA (github.com/MichaelDAlbrow/pyDIA,",
                   f"Example/Images, commit {PYDIA_COMMIT[:12]}), MIT licence:",
                   f"rows {y0}:{y0 + SIZE}, columns {x0}:{x0 + SIZE} (0-based, end",
                   "excluded) of the unregistered frame; pixels unchanged, as float32.",
                   "Seeing cards (PFWHM...) are of the full frame. No SATURATE",
                   "card: stars saturate at 65300 adu.",
                   "benchmarks/make_registration_cutouts.py."]
        cut = data[y0:y0 + SIZE, x0:x0 + SIZE].astype(np.float32)
        if not np.array_equal(cut, data[y0:y0 + SIZE, x0:x0 + SIZE]):
            raise ValueError(f"{name}: pixels not exact in float32")
        path = os.path.join(args.out, f"pydia_reg_{suffix}.fits")
        fits.PrimaryHDU(cut, header=cut_header(header, PYDIA_CARDS, history)).writeto(
            path, overwrite=True)
        print(f"wrote {path} {cut.shape} {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
