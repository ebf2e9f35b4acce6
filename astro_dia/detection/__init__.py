"""
Detection of what changed between the reference and the target.

`significance_image` turns a difference image into a matched-filter S/N
image with the target PSF and the difference's own variance;
`find_transients` lists its peaks of either sign above a threshold as a
table of candidates, measured by PSF photometry and flagged
(``DETECTION_FLAGS``); `candidate_cutouts` cuts reference, target,
difference and significance stamps around them, written to one FITS file
by `write_cutouts` and drawn by `CandidateCutouts.plot`.
"""

from .candidates import find_transients
from .cutouts import CandidateCutouts, candidate_cutouts, read_cutouts, write_cutouts
from .flags import DETECTION_FLAGS, decode_detection_flags
from .significance import significance_image

__all__ = ["significance_image", "find_transients", "candidate_cutouts", "CandidateCutouts",
           "write_cutouts", "read_cutouts", "DETECTION_FLAGS", "decode_detection_flags"]
