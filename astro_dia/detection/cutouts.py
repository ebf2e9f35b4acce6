"""
Stamps around candidates: reference, target, difference and significance.

`candidate_cutouts` cuts, with `~astropy.nddata.Cutout2D` (so each stamp
keeps its piece of the WCS), the same square around every candidate of a
`~astro_dia.detection.find_transients` table from each image; off-image
pixels are NaN and masked. `write_cutouts` saves them all as one FITS file
(one image extension per stamp, ``EXTNAME`` the image, ``EXTVER`` the
candidate's id), `read_cutouts` reads it back, and
`CandidateCutouts.plot` draws one candidate's stamps side by side.
"""

from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, Cutout2D, NDData, StdDevUncertainty
from astropy.wcs import WCS

from .significance import significance_image

__all__ = ["CandidateCutouts", "candidate_cutouts", "write_cutouts", "read_cutouts"]

#: The stamps of a candidate, in the order they are written and drawn.
STAMP_NAMES = ("reference", "target", "difference", "significance")


@dataclass
class CandidateCutouts:
    """
    The stamps of one candidate.

    Attributes
    ----------
    id : int
        The candidate's ``id`` in its table.
    x, y : float
        Its position in the full image (0-based pixels).
    snr : float
        Its significance.
    stamps : dict of str to `~astropy.nddata.CCDData`
        ``'reference'`` (when given), ``'target'``, ``'difference'`` (with
        its uncertainty) and ``'significance'``, each ``size x size`` with
        its WCS; pixels off the image or masked are NaN and masked.
    """

    id: int
    x: float
    y: float
    snr: float
    stamps: dict = field(default_factory=dict)

    def plot(self, figure=None):
        """
        Draw the stamps side by side (needs matplotlib).

        Parameters
        ----------
        figure : `matplotlib.figure.Figure`, optional
            Figure to draw on (cleared first); a new one by default.

        Returns
        -------
        figure : `matplotlib.figure.Figure`
        """
        from ..plotting import plot_stamps

        title = f"candidate {self.id} at ({self.x:.1f}, {self.y:.1f}), S/N {self.snr:.1f}"
        return plot_stamps(self.stamps, title=title, figure=figure)


def _stamp(image, position, size, unit, wcs, uncertainty=None):
    """One Cutout2D of ``image`` (array) as a CCDData, NaN and masked off the image."""
    cut = Cutout2D(np.asarray(image, dtype=float), position, size, wcs=wcs, mode="partial",
                   fill_value=np.nan)
    data = cut.data
    error = None
    if uncertainty is not None:
        error = StdDevUncertainty(Cutout2D(uncertainty, position, size, mode="partial",
                                           fill_value=np.nan).data)
    return CCDData(data, unit=unit, mask=~np.isfinite(data), wcs=cut.wcs, uncertainty=error)


def _masked(ndd):
    data = np.asarray(ndd.data, dtype=float)
    return data if ndd.mask is None else np.where(ndd.mask, np.nan, data)


def candidate_cutouts(result, table, size=21, *, reference=None, target=None,
                      significance=None, reference_psf=None):
    """
    Reference, target, difference and significance stamps around each candidate.

    Parameters
    ----------
    result : `~astro_dia.DifferenceResult`
        The fit the candidates were found on.
    table : `~astropy.table.Table`
        Candidates with ``x``, ``y`` (and ``id``, ``snr``) columns, as
        `~astro_dia.detection.find_transients` returns them.
    size : int, optional
        Side of the square stamps in pixels.
    reference : `~astropy.nddata.NDData`, optional
        The reference image (not part of the result); without it there is
        no reference stamp.
    target : `~astropy.nddata.NDData`, optional
        The target image; by default rebuilt as ``difference + model``.
    significance : `~astropy.nddata.CCDData`, optional
        The significance image; computed with `significance_image` (and
        ``reference_psf``) when not given.
    reference_psf : `astropy.modeling.Model`, optional
        Passed to `significance_image` when it is computed here.

    Returns
    -------
    cutouts : list of `CandidateCutouts`
        One per row of ``table``, in its order.

    Raises
    ------
    ValueError
        If ``size`` is not a positive integer, the table has no ``x`` and
        ``y``, or an image does not have the difference's shape.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if "x" not in table.colnames or "y" not in table.colnames:
        raise ValueError("the candidate table needs x and y columns (0-based pixels)")
    difference = result.difference
    shape = difference.shape
    images = {}
    if reference is not None:
        images["reference"] = (_checked(reference, shape, "reference"),
                               getattr(reference, "unit", None))
    if target is not None:
        images["target"] = (_checked(target, shape, "target"), getattr(target, "unit", None))
    elif getattr(result, "model", None) is not None:
        images["target"] = (_masked(difference) + np.asarray(result.model.data, float),
                            difference.unit)
    images["difference"] = (_masked(difference), difference.unit)
    if significance is None:
        significance = significance_image(result, reference_psf)
    images["significance"] = (_checked(significance, shape, "significance"),
                              u.dimensionless_unscaled)
    sigma = (None if difference.uncertainty is None else
             np.asarray(difference.uncertainty.represent_as(StdDevUncertainty).array, float))
    ids = table["id"] if "id" in table.colnames else np.arange(1, len(table) + 1)
    snrs = table["snr"] if "snr" in table.colnames else np.full(len(table), np.nan)
    cutouts = []
    for cid, x, y, snr in zip(ids, table["x"], table["y"], snrs):
        position = (float(x), float(y))
        stamps = {name: _stamp(data, position, int(size), unit, difference.wcs,
                               sigma if name == "difference" else None)
                  for name, (data, unit) in images.items()}
        cutouts.append(CandidateCutouts(id=int(cid), x=float(x), y=float(y),
                                        snr=float(snr), stamps=stamps))
    return cutouts


def _checked(image, shape, name):
    if not isinstance(image, NDData):
        raise TypeError(f"{name} must be a CCDData or NDData, got {type(image).__name__}")
    if image.data.shape != shape:
        raise ValueError(f"{name} must have the difference image's shape {shape}, got "
                         f"{image.data.shape}")
    return _masked(image)


def write_cutouts(cutouts, path, *, overwrite=False):
    """
    Write candidate stamps to one FITS file.

    Each stamp is an image extension named after its image (``EXTNAME``
    ``REFERENCE``, ``TARGET``, ``DIFFERENCE``, ``SIGNIFICANCE``, and
    ``DIFFERR`` for the difference's uncertainty) with the candidate's id
    as ``EXTVER``, its WCS, ``BUNIT`` and the candidate's ``CAND_X``,
    ``CAND_Y`` and ``CAND_SNR``.

    Parameters
    ----------
    cutouts : list of `CandidateCutouts`
    path : str or path-like
    overwrite : bool, optional
    """
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["NCAND"] = (len(cutouts), "number of candidates")
    for cut in cutouts:
        for name in STAMP_NAMES:
            stamp = cut.stamps.get(name)
            if stamp is None:
                continue
            layers = [(name.upper(), stamp.data)]
            if stamp.uncertainty is not None:
                layers.append(("DIFFERR", stamp.uncertainty.array))
            for extname, data in layers:
                header = stamp.wcs.to_header() if stamp.wcs is not None else fits.Header()
                header["EXTNAME"] = extname
                header["EXTVER"] = cut.id
                header["BUNIT"] = stamp.unit.to_string()
                header["CAND_X"] = (cut.x, "candidate x in the full image (0-based)")
                header["CAND_Y"] = (cut.y, "candidate y in the full image (0-based)")
                header["CAND_SNR"] = (cut.snr, "candidate significance")
                hdus.append(fits.ImageHDU(np.asarray(data, dtype=np.float32), header=header))
    fits.HDUList(hdus).writeto(path, overwrite=overwrite)


def read_cutouts(path):
    """
    Read the stamps written by `write_cutouts`.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    cutouts : list of `CandidateCutouts`
        In the order of the file.
    """
    by_id = {}
    with fits.open(path) as hdul:
        for hdu in hdul[1:]:
            header = hdu.header
            cid = int(header["EXTVER"])
            cut = by_id.setdefault(cid, CandidateCutouts(
                id=cid, x=float(header["CAND_X"]), y=float(header["CAND_Y"]),
                snr=float(header["CAND_SNR"])))
            data = np.array(hdu.data, dtype=float)
            name = header["EXTNAME"].lower()
            if name == "differr":
                cut.stamps["difference"].uncertainty = StdDevUncertainty(data)
                continue
            wcs = WCS(header) if "CTYPE1" in header else None
            unit = u.Unit(header.get("BUNIT", ""))   # "" is dimensionless
            cut.stamps[name] = CCDData(data, unit=unit, mask=~np.isfinite(data), wcs=wcs)
    return list(by_id.values())
