"""
Bit flags of the candidate tables of `~astro_dia.detection.find_transients`.

The ``flags`` column is the bitwise OR of these values; 0 is a clean
candidate.

============== ===== ====================================================================
name           value meaning
============== ===== ====================================================================
EDGE               1 the PSF fit box reaches the image edge or the border of half a kernel
                     where the model is undefined
MASKED             2 a masked pixel (bad column, masked star, no model) lies in the fit box
DIPOLE             4 a significant lobe of the opposite sign lies within two FWHM: the
                     residual of a misregistered, badly subtracted or variable bright star
SATURATED          8 a saturated pixel lies in the fit box
EXTENDED          16 a broader filter finds it more significant than a point source would
                     be: a galaxy residual, a satellite trail, a blend
SHARP             32 the brightest pixel exceeds a PSF fit by 5 sigma and by half the fit's
                     own peak: sharper than the target PSF, a cosmic ray, a hot pixel or
                     another defect, not a transient
STAR_RESIDUAL     64 it sits on a star of the model more than 5 times brighter and its peak
                     is sharper than the PSF (by 3 sigma and half the fit's peak): the core
                     of a bright star imperfectly matched, not a change of its flux
============== ===== ====================================================================
"""

from ..flags import names_of_set_bits

__all__ = ["DETECTION_FLAGS", "decode_detection_flags"]

#: Flag names and their bit values.
DETECTION_FLAGS = {"EDGE": 1, "MASKED": 2, "DIPOLE": 4, "SATURATED": 8, "EXTENDED": 16,
                   "SHARP": 32, "STAR_RESIDUAL": 64}


def decode_detection_flags(value):
    """
    The names of the flags set in one ``flags`` value.

    Parameters
    ----------
    value : int

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from astro_dia.detection import decode_detection_flags
    >>> decode_detection_flags(4 | 2)
    ['MASKED', 'DIPOLE']
    """
    return names_of_set_bits(value, DETECTION_FLAGS.items())
