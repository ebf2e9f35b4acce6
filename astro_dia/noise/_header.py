"""Look-ups of detector keywords in FITS headers and ``meta`` dicts (private)."""

import math

__all__ = []

GAIN_KEYWORDS = ("GAIN", "EGAIN", "CCDGAIN")
READ_NOISE_KEYWORDS = ("RDNOISE", "READNOIS", "RON", "READNOISE")
#: EM gain: the common spelling, Andor SOLIS's real (calibrated) EM gain
#: EMREALGN, and spellings of other camera software. EMCCDGAIN and EM GAIN
#: need a HIERARCH card in a FITS file, but are plain keys of a ``meta`` dict.
EM_GAIN_KEYWORDS = ("EMGAIN", "EM_GAIN", "EMREALGN", "EMCCDGN", "EMCCDGAI", "GAINEM",
                    "EMCCDGAIN", "EM GAIN")
SKY_KEYWORDS = ("SKYLEVEL", "SKY", "SKYSUB")
FLAT_KEYWORDS = ("FLATFILE", "FLATNAME", "FLAT")
#: Saturation level: the common spelling, then those of other observatories'
#: software; MAXLIN (the end of the linear range) last, as the lowest safe level.
SATURATION_KEYWORDS = ("SATURATE", "SATLEVEL", "SATURATN", "SATURATA", "MAXLIN")


def find_keyword(meta, keywords):
    """
    Find the first of ``keywords`` present in ``meta``.

    Keys are matched without regard to case, as FITS keywords are.

    Parameters
    ----------
    meta : dict-like
        A `~astropy.io.fits.Header` or the ``meta`` dict of an NDData.
    keywords : tuple of str
        Keywords to try, in order.

    Returns
    -------
    keyword, value : str, object or None, None
        The keyword found and its value (the value of a ``(value, comment)``
        tuple), or ``(None, None)``.
    """
    if meta is None:
        return None, None
    upper = {str(key).upper(): key for key in meta.keys()}
    for keyword in keywords:
        if keyword in upper:
            value = meta[upper[keyword]]
            if isinstance(value, tuple):
                value = value[0]
            return keyword, value
    return None, None


def header_float(meta, keywords, what):
    """
    Read a finite number from the first of ``keywords`` present.

    Returns
    -------
    keyword, value : str, float or None, None

    Raises
    ------
    ValueError
        If the keyword is present but its value is not a finite number
        (booleans included).
    """
    keyword, value = find_keyword(meta, keywords)
    if keyword is None:
        return None, None
    if isinstance(value, bool):
        value = None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number):
        raise ValueError(
            f"header keyword {keyword} should give the {what} as a finite number, "
            f"got {value!r}")
    return keyword, number


def keyword_list(keywords):
    """Format keywords for an error message: ``'GAIN, EGAIN or CCDGAIN'``."""
    keywords = list(keywords)
    if len(keywords) == 1:
        return keywords[0]
    return ", ".join(keywords[:-1]) + " or " + keywords[-1]
