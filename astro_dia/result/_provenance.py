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
    ``meta`` with the provenance ``cards`` added.

    Parameters
    ----------
    meta : `~astropy.io.fits.Header` or dict
        A copy made by `copy_meta`.
    cards : list of (str, object, str)
        ``(key, value, comment)``; keys of up to 8 characters are used as
        they are, longer ones as ``HIERARCH`` cards in a Header.

    Returns
    -------
    `~astropy.io.fits.Header` or dict
        A dict is updated in place. A Header's existing keywords are updated
        in place; if there are new ones, a new Header with them appended in
        order is returned (one construction, not one insertion per card).
    """
    if not isinstance(meta, fits.Header):
        for key, value, _ in cards:
            meta[key.upper()] = value
        return meta
    appended = {}
    for key, value, comment in cards:
        key = key.upper()
        card = key if len(key) <= 8 else f"HIERARCH {key}"
        if card in meta:
            meta[card] = (value, comment)
        else:
            appended[card] = fits.Card(card, value, comment)
    if not appended:
        return meta
    return fits.Header(list(meta.cards) + list(appended.values()))
