"""Turn the positions users give (tables, arrays, sky coordinates) into pixel coordinates."""

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

__all__ = []

_COLUMN_PAIRS = (("x", "y"), ("xcentroid", "ycentroid"), ("x_0", "y_0"), ("x_init", "y_init"))


def _column(table, name):
    column = table[name]
    return np.asarray(getattr(column, "value", column), dtype=float)


def position_table(positions, wcs):
    """
    The ``id``, ``x``, ``y`` (0-based pixels) of the requested positions.

    Parameters
    ----------
    positions : Table, (N, 2) array_like or SkyCoord
    wcs : WCS or None
        Needed for a SkyCoord.

    Returns
    -------
    ids : (N,) ndarray
        The table's ``id`` column if it has one, else 1..N.
    x, y : (N,) ndarray
    skycoord : SkyCoord or None
    """
    skycoord = None
    ids = None
    if isinstance(positions, SkyCoord):
        if wcs is None:
            raise ValueError("sky positions need the image's WCS, but the image has none; "
                             "give pixel positions, or attach a WCS to the image")
        skycoord = positions.reshape(-1) if not positions.isscalar else positions.reshape(1)
        x, y = (np.asarray(v, dtype=float) for v in wcs.world_to_pixel(skycoord))
    elif isinstance(positions, Table):
        for xname, yname in _COLUMN_PAIRS:
            if xname in positions.colnames and yname in positions.colnames:
                x, y = _column(positions, xname), _column(positions, yname)
                break
        else:
            if "skycoord" in positions.colnames:
                return position_table(positions["skycoord"], wcs)[:3] + (
                    positions["skycoord"],)
            raise ValueError(
                "the positions table needs pixel columns x/y (or xcentroid/ycentroid, "
                f"x_0/y_0) or a skycoord column; it has {positions.colnames}")
        if "id" in positions.colnames:
            ids = np.asarray(positions["id"])
    else:
        try:
            xy = np.array(positions, dtype=float)
        except (TypeError, ValueError) as exc:
            raise TypeError("positions must be a Table, an (N, 2) array of (x, y) or a "
                            f"SkyCoord, got {type(positions).__name__}") from exc
        if xy.ndim == 1 and xy.size == 2:
            xy = xy[None, :]
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"a positions array must have shape (N, 2) for (x, y) pairs, "
                             f"got {xy.shape}")
        x, y = xy[:, 0], xy[:, 1]
    x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
    if x.size == 0:
        raise ValueError("no positions given")
    if ids is None:
        ids = np.arange(1, x.size + 1)
    return ids, x, y, skycoord


def pixel_positions(positions, wcs, shape=None):
    """Just the ``x``, ``y`` pixel arrays of `position_table`."""
    return position_table(positions, wcs)[1:3]
