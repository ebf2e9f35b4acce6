"""
Registration: carry an image onto a reference's pixel grid.

`register` finds the transform from the image's pixels to the
reference's (through both WCSs, by matching stars, or both) and resamples
the image, its variance and its mask onto the reference's grid, or shifts
it by whole pixels; `find_transform` finds the transform alone, as an
`Alignment`; `ReferenceStars` holds a reference's stars, found once for
registering many images to it. Failures raise `RegistrationError` with
the problem and the fix; fall-backs warn with `RegistrationWarning`. See
:ref:`registration`.
"""

from ._inputs import RegistrationError
from ._reference import ReferenceStars
from ._register import Alignment, RegistrationWarning, find_transform, register

__all__ = ["register", "find_transform", "Alignment", "ReferenceStars", "RegistrationError",
           "RegistrationWarning"]
