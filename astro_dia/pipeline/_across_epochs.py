"""
Candidates of change across the epochs of a series (private).

Each epoch's `~astro_dia.detection.find_transients` table lists what changed
on its difference image. `group_candidates` joins the rows of all epochs
that lie within a match radius of one another (one source seen at many
epochs) into one candidate of the series; `StackedSignificance` adds up the
epochs' significance images, so that a change too faint to pass the
threshold at any one epoch, but present in many, is measured too.
"""

import numpy as np
from astropy.table import QTable
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..detection import DETECTION_FLAGS

__all__ = []

#: Flags of a detection that say it is no real change of a point source.
SPURIOUS = (DETECTION_FLAGS["EDGE"] | DETECTION_FLAGS["MASKED"] | DETECTION_FLAGS["SATURATED"]
            | DETECTION_FLAGS["SHARP"] | DETECTION_FLAGS["STAR_RESIDUAL"])


class StackedSignificance:
    """
    Running sums of the epochs' significance images on the reference's grid.

    ``stacked`` is ``sum(S_i) / sqrt(n)`` per pixel (a change present at
    every epoch adds up), ``chi2`` is ``sum(S_i**2) / n`` (a source that
    varies both ways adds up there too; 1 for noise).
    """

    def __init__(self, shape):
        self.total = np.zeros(shape)
        self.squares = np.zeros(shape)
        self.count = np.zeros(shape, np.int32)

    def add(self, significance):
        """Add one epoch's significance image (NaN where undefined)."""
        values = np.asarray(significance, float)
        good = np.isfinite(values)
        values = np.where(good, values, 0.0)
        self.total += values
        self.squares += values ** 2
        self.count += good

    @property
    def stacked(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.sqrt(self.count), np.nan)

    @property
    def chi2(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.squares / self.count, np.nan)


def _sample(image, x, y):
    """The image at the nearest pixel of each position (NaN outside)."""
    ny, nx = image.shape
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    inside = (ix >= 0) & (iy >= 0) & (ix < nx) & (iy < ny)
    out = np.full(len(x), np.nan)
    out[inside] = image[iy[inside], ix[inside]]
    return out


def group_candidates(detections, radius, stack=None):
    """
    One row per source of change, from the detections of every epoch.

    Parameters
    ----------
    detections : `~astropy.table.QTable`
        The epochs' candidates, stacked, with at least ``epoch``, ``x``,
        ``y`` (reference pixels), ``snr`` and ``flags`` columns.
    radius : float
        Detections closer than this (pixels) belong to one source (friends
        of friends).
    stack : `StackedSignificance`, optional
        Sampled at each source's position.

    Returns
    -------
    candidates : `~astropy.table.QTable`
        ``candidate_id`` (from 1), ``x``, ``y`` (S/N-weighted mean position),
        ``n_epochs`` (epochs with a detection), ``n_clean`` (of them, those
        with no flag in ``SPURIOUS``), ``max_snr`` (signed, largest ``|snr|``),
        ``n_brighter`` and ``n_fainter``, ``first_epoch``, ``last_epoch``,
        ``flags`` (OR of all detections' flags), ``stacked_snr`` and
        ``chi2`` (from ``stack``), most significant first. The input's
        rows get a ``candidate_id`` column in place.
    """
    n = len(detections)
    columns = ["candidate_id", "x", "y", "n_epochs", "n_clean", "max_snr", "n_brighter",
               "n_fainter", "first_epoch", "last_epoch", "flags", "stacked_snr", "chi2"]
    if n == 0:
        detections["candidate_id"] = np.zeros(0, int)
        return QTable({name: np.zeros(0) for name in columns})
    x = np.asarray(detections["x"], float)
    y = np.asarray(detections["y"], float)
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(float(radius), output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    snr = np.asarray(detections["snr"], float)
    flags = np.asarray(detections["flags"], np.int64)
    epoch = np.asarray(detections["epoch"], int)
    rows = []
    for label in np.unique(labels):
        members = labels == label
        weight = np.abs(snr[members])
        strongest = np.argmax(weight)
        rows.append(dict(
            x=float(np.average(x[members], weights=weight)),
            y=float(np.average(y[members], weights=weight)),
            n_epochs=int(np.unique(epoch[members]).size),
            n_clean=int(np.unique(epoch[members][(flags[members] & SPURIOUS) == 0]).size),
            max_snr=float(snr[members][strongest]),
            n_brighter=int((snr[members] > 0).sum()), n_fainter=int((snr[members] < 0).sum()),
            first_epoch=int(epoch[members].min()), last_epoch=int(epoch[members].max()),
            flags=int(np.bitwise_or.reduce(flags[members])), label=int(label)))
    table = QTable(rows=rows)
    if stack is not None:
        table["stacked_snr"] = _sample(stack.stacked, table["x"], table["y"])
        table["chi2"] = _sample(stack.chi2, table["x"], table["y"])
    else:
        table["stacked_snr"] = np.full(len(table), np.nan)
        table["chi2"] = np.full(len(table), np.nan)
    order = np.lexsort((-np.abs(np.asarray(table["max_snr"])), -np.asarray(table["n_clean"])))
    table = table[order]
    table.add_column(np.arange(1, len(table) + 1), name="candidate_id", index=0)
    ids = dict(zip(np.asarray(table["label"]), np.asarray(table["candidate_id"])))
    detections["candidate_id"] = np.array([ids[label] for label in labels])
    table.remove_column("label")
    return table
