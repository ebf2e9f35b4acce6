"""
The output tables shared by the ``astro-dia photometry`` and ``detect`` commands.

Both commands write one long table over many result files. This module owns
what they share: the checks of ``--out`` before any work (never an input
file, never an existing file without ``--overwrite``) and the ``file`` and
``time`` columns that say which result file, and which observation, each
row comes from.
"""

import os

__all__ = []


def check_out(out, inputs, overwrite):
    """
    Refuse an output table that is an input file, or exists without ``--overwrite``.

    Parameters
    ----------
    out : str
        The ``--out`` argument.
    inputs : list of str
        The input files it must not be.
    overwrite : bool
        The ``--overwrite`` argument.

    Returns
    -------
    path : str
        The absolute path of ``out``.

    Raises
    ------
    ValueError
        If ``out`` is one of ``inputs``.
    OSError
        If ``out`` exists and ``overwrite`` is false.
    """
    path = os.path.abspath(out)
    if any(os.path.abspath(name) == path for name in inputs):
        raise ValueError(f"--out {out!r} is an input file; choose another name")
    if os.path.exists(path) and not overwrite:
        raise OSError(f"{out!r} exists; pass --overwrite to replace it")
    return path


def add_file_and_time(table, path, result):
    """
    Put the result file's name and observation time in front of ``table``'s rows.

    Parameters
    ----------
    table : `~astropy.table.Table`
        The rows measured on one result; modified in place.
    path : str
        The result file; its base name fills the first column, ``file``.
    result : `~astro_dia.DifferenceResult`
        The result read from it; the second column, ``time``, is the
        observation time of its difference image's header (DATE-OBS or
        MJD-OBS), left out when the header has neither.
    """
    from ..photometry import observation_time

    table.add_column(os.path.basename(path), name="file", index=0)
    try:
        table.add_column(observation_time(result.difference.meta), name="time", index=1)
    except ValueError:   # no DATE-OBS or MJD-OBS: rows without a time
        pass
