"""Provenance keywords written into the ``meta`` of returned images (private)."""

import copy

from astropy.io import fits

__all__ = []


def copy_meta(meta):
    """A deep copy of ``meta`` (a Header stays a Header, anything else a dict)."""
    if isinstance(meta, fits.Header):
        return meta.copy()
    return copy.deepcopy(dict(meta)) if meta is not None else {}


def stamp(meta, cards):
    """
    Add provenance ``cards`` to ``meta`` in place and return it.

    Parameters
    ----------
    meta : `~astropy.io.fits.Header` or dict
        A copy made by `copy_meta`.
    cards : list of (str, object, str)
        ``(key, value, comment)``; keys of up to 8 characters are used as
        they are, longer ones as ``HIERARCH`` cards in a Header.
    """
    for key, value, comment in cards:
        key = key.upper()
        if isinstance(meta, fits.Header):
            card = key if len(key) <= 8 else f"HIERARCH {key}"
            meta[card] = (value, comment)
        else:
            meta[key] = value
    return meta
