"""
The frames of a series (private): read them, time them, register them.

`read_frames` reads paths (with a unit for files without BUNIT) or takes
images, with each frame's observation time; `register_frames` carries each
onto the reference's grid (`~astro_dia.registration.register`: whole-pixel
shifts for a translation, bilinear resampling otherwise), writes it for the
fits, and records what happened in the frames table. A frame that fails is
recorded and the rest go on.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from astropy.nddata import NDData
from astropy.table import QTable
from astropy.utils.console import ProgressBar

from ..photometry import observation_time
from ..registration import ReferenceStars, RegistrationError, find_transform, register

__all__ = []


@dataclass
class Epoch:
    """One frame of the series."""

    index: int
    name: str
    image: object = field(repr=False)
    time: float = np.nan
    registered: object = None
    error: object = None


def read_frames(frames, unit=None):
    """
    ``[Epoch]`` from images or FITS paths, each with its observation time (MJD).

    Raises
    ------
    ValueError
        For no frames, or a frame without an observation time.
    """
    from ..result.io import read_image

    frames = list(frames)
    if not frames:
        raise ValueError("no frames given")
    epochs = []
    for index, frame in enumerate(frames):
        if isinstance(frame, NDData):
            image, name = frame, str(frame.meta.get("FILENAME", f"frame{index:04d}"))
        elif isinstance(frame, (str, os.PathLike)):
            image = read_image(frame, unit=unit, what=f"frame {index}")
            name = os.path.splitext(os.path.basename(os.fspath(frame)))[0]
        else:
            raise TypeError(f"each frame must be a CCDData or a FITS path, got "
                            f"{type(frame).__name__} at position {index}")
        try:
            time = observation_time(image.meta).mjd
        except ValueError as exc:
            raise ValueError(f"frame {index} ({name}): {exc}") from exc
        epochs.append(Epoch(index, name, image, float(time)))
    names = [epoch.name for epoch in epochs]
    if len(set(names)) < len(names):
        for epoch in epochs:
            epoch.name = f"{epoch.index:04d}_{epoch.name}"
    return epochs


def _register_one(image, reference, method, reference_stars=None):
    """Whole-pixel shift when the transform is a translation, else resampling.

    The transform is found once (with the reference's stars found once for
    the series, ``reference_stars``) and applied either way.
    """
    alignment = find_transform(image, reference, method=method,
                               reference_stars=reference_stars)
    try:
        return register(image, reference, resample=False, alignment=alignment)
    except RegistrationError as exc:
        if "translation" not in str(exc):
            raise
        return register(image, reference, resample=True, alignment=alignment)


def _reference_stars(reference):
    """The reference's stars for the whole series, or None (each frame then finds them)."""
    try:
        return ReferenceStars(reference)
    except (RegistrationError, ValueError):
        return None     # each frame's registration says what is wrong, in the frames table


def register_frames(epochs, reference, folder, *, method="auto", overwrite=False,
                    progress=True):
    """
    Register every epoch onto the reference's grid and write it to ``folder``.

    Sets each epoch's ``registered`` (path) or ``error``, and returns the
    frames table (one row per epoch) and the reference's stars
    (`~astro_dia.registration.ReferenceStars`, or None when they could not
    be found), whose FWHM the series reuses.
    """
    os.makedirs(folder, exist_ok=True)
    n = len(epochs)
    table = QTable({"epoch": np.arange(n), "name": [epoch.name for epoch in epochs],
                    "time": np.array([epoch.time for epoch in epochs]),
                    "reg_nstars": np.zeros(n, int), "reg_rms": np.full(n, np.nan),
                    "shift_x": np.full(n, np.nan), "shift_y": np.full(n, np.nan),
                    "scale_factor": np.full(n, np.nan),
                    "scale_factor_err": np.full(n, np.nan),
                    "output": np.array([""] * n, dtype=object),
                    "error": np.array([""] * n, dtype=object)})
    known = _reference_stars(reference)
    with ProgressBar(n) if progress else nullcontext() as bar:
        for epoch in epochs:
            try:
                registered = _register_one(epoch.image, reference, method, known)
            except (RegistrationError, ValueError) as exc:
                epoch.error = f"{type(exc).__name__}: {exc}"
                table["error"][epoch.index] = epoch.error
            else:
                header = registered.header
                table["reg_nstars"][epoch.index] = int(header.get("REGNSTAR", 0))
                table["reg_rms"][epoch.index] = float(header.get("REGRMS", np.nan))
                table["shift_x"][epoch.index] = float(header.get("REGA13", np.nan))
                table["shift_y"][epoch.index] = float(header.get("REGA23", np.nan))
                path = os.path.join(folder, f"{epoch.name}.fits")
                registered.write(path, overwrite=overwrite)
                epoch.registered = path
            epoch.image = None      # the registered copy is on disk; free the memory
            if bar is not None:
                bar.update()
    return table, known
