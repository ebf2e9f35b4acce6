"""
Bit flags of the difference image: why a pixel is masked or was left out of the fit.

``DifferenceResult.flags`` (and the ``flags`` of ``result.difference``) is a
``uint8`` image whose bits say what happened to each pixel. The boolean
``mask`` of the difference image is ``flags & INVALID != 0``: the pixels
whose difference is undefined or meaningless. ``OUTLIER`` and ``EXCLUDED``
pixels keep their difference (a real transient is an outlier of the fit
too) but did not pull the kernel.

========== ===== ==================================================================
name       value meaning
========== ===== ==================================================================
MASKED         1 masked or non-finite in the input target
SATURATED      2 at or above the target's saturation level, or within half a kernel
                 of a saturated reference pixel
NO_MODEL       4 the model is undefined: the border of half a kernel, or a masked
                 or non-finite reference pixel within half a kernel
BAD_NOISE      8 the noise model cannot describe the pixel (a flat of zero or less,
                 a non-positive or non-finite uncertainty)
OUTLIER       16 rejected from the fit by ``clip`` (cosmic ray, hot pixel, defect)
EXCLUDED      32 left out of the fit by ``exclude=``
========== ===== ==================================================================

The decoding of a flag value into names, `describe_flags` here, is shared
with the flag tables of `astro_dia.photometry` and `astro_dia.detection`
(``names_of_set_bits``).
"""

import numpy as np

__all__ = ["MASKED", "SATURATED", "NO_MODEL", "BAD_NOISE", "OUTLIER", "EXCLUDED", "INVALID",
           "FLAG_NAMES", "describe_flags"]

MASKED = 1
SATURATED = 2
NO_MODEL = 4
BAD_NOISE = 8
OUTLIER = 16
EXCLUDED = 32

#: The bits that mask a pixel of the difference image.
INVALID = MASKED | SATURATED | NO_MODEL | BAD_NOISE

#: Name of each bit.
FLAG_NAMES = {MASKED: "MASKED", SATURATED: "SATURATED", NO_MODEL: "NO_MODEL",
              BAD_NOISE: "BAD_NOISE", OUTLIER: "OUTLIER", EXCLUDED: "EXCLUDED"}


def describe_flags(value):
    """
    The names of the bits set in one flag value.

    Parameters
    ----------
    value : int
        A pixel of ``DifferenceResult.flags``.

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> describe_flags(SATURATED | OUTLIER)
    ['SATURATED', 'OUTLIER']
    """
    return names_of_set_bits(value, ((name, bit) for bit, name in FLAG_NAMES.items()))


def names_of_set_bits(value, named_bits):
    """
    The names of the bits set in ``value``, in the order of ``named_bits`` (private).

    Parameters
    ----------
    value : int
        A flag value, the bitwise OR of some of the bits.
    named_bits : iterable of (str, int)
        Each flag's name and bit value.

    Returns
    -------
    names : list of str
    """
    value = int(value)
    return [name for name, bit in named_bits if value & bit]


def flag_image(shape, *, masked, saturated, no_model, bad_noise, outlier, excluded):
    """Combine boolean masks (full frame, or None) into a ``uint8`` flag image (private)."""
    flags = np.zeros(shape, np.uint8)
    for bit, where in ((MASKED, masked), (SATURATED, saturated), (NO_MODEL, no_model),
                       (BAD_NOISE, bad_noise), (OUTLIER, outlier), (EXCLUDED, excluded)):
        if where is not None:
            flags[where] |= np.uint8(bit)
    return flags
