"""
Reference images: the best frames of a series, registered and combined.

`build_reference` measures the frames (`frame_statistics`: seeing and
sky), chooses the sharpest, registers them to the best with
`astro_dia.registration.register`, matches their backgrounds and combines
them with outliers rejected and the uncertainty propagated. See
:ref:`reference-building`.
"""

from ._build import ReferenceWarning, build_reference
from ._measure import frame_statistics

__all__ = ["build_reference", "frame_statistics", "ReferenceWarning"]
