"""
The FITS layout of a whole fit result, written and read field by field.

This private module owns the multi-extension file that
`astro_dia.io.write_result` writes and `astro_dia.io.read_result` reads
(the layout is described in `astro_dia.io`). It knows the result's fields
by name only and never imports `astro_dia.result`: `read_result_fields`
returns the keyword arguments from which `DifferenceResult.read` builds the
record, so that the result module can use this one without an import
cycle.
"""

import contextlib
import json
import os
import warnings

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.table import QTable
from astropy.wcs import FITSFixedWarning

from ..background import background_basis, polynomial_terms

__all__ = ["RESULT_FORMAT_VERSION", "write_result_file", "result_hdulist",
           "read_result_fields"]

#: Version of the layout written by `write_result_file` (keyword DIAFMT of KERNEL).
RESULT_FORMAT_VERSION = 2

_MASK_HDU = "MASK"
_UNCERTAINTY_HDU = "UNCERT"



@contextlib.contextmanager
def without_datfix_notices():
    """
    Silence astropy's notice that it fixed a header's date keywords.

    astropy fixes MJD-OBS from DATE-OBS (or the reverse) when it builds a
    frame's WCS and says so for every frame read (161 times in a series of
    101 pyDIA frames); the header read is not changed.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*'datfix' made the change.*",
                                category=FITSFixedWarning)
        yield

def write_result_file(result, path, *, overwrite=False, include_model=True,
                      include_covariance=True):
    """
    Write a fit result as one multi-extension FITS file (no type check).

    Parameters
    ----------
    result : `~astro_dia.DifferenceResult`
        The result to write; it is not modified.
    path : str or path-like
        The FITS file to write.
    overwrite, include_model, include_covariance : bool, optional
        As in `astro_dia.io.write_result`.
    """
    hdus = result_hdulist(result, include_model=include_model,
                          include_covariance=include_covariance)
    hdus.writeto(os.fspath(path), overwrite=overwrite)


def result_hdulist(result, *, include_model=True, include_covariance=True):
    """
    The `~astropy.io.fits.HDUList` that `write_result_file` writes.

    Parameters
    ----------
    result : `~astro_dia.DifferenceResult`
    include_model, include_covariance : bool, optional
        As in `write_result_file`.

    Returns
    -------
    hdulist : `~astropy.io.fits.HDUList`
    """
    difference = result.difference
    hdus = difference.to_hdu(hdu_mask=_MASK_HDU, hdu_uncertainty=_UNCERTAINTY_HDU,
                             as_image_hdu=False)
    unit = difference.unit

    kernel = fits.ImageHDU(np.asarray(result.kernel, dtype=float), name="KERNEL")
    _set_cards(kernel.header, _result_cards(result, unit))
    hdus.append(kernel)
    if result.kernel_error is not None:
        hdus.append(fits.ImageHDU(np.asarray(result.kernel_error, dtype=float),
                                  name="KERNERR"))
    if getattr(result, "kernel_terms", None) is not None:
        hdus.append(fits.ImageHDU(np.asarray(result.kernel_terms, dtype=float),
                                  name="KERNTERM"))
    hdus.append(_background_table(result, unit))
    if include_model and result.model is not None:
        model = fits.ImageHDU(np.asarray(result.model.data, dtype=float), name="MODEL")
        model.header["BUNIT"] = unit.to_string()   # as CCDData writes BUNIT: FITS has no "electron"
        hdus.append(model)
    hdus.append(fits.ImageHDU(np.asarray(result.fit_mask, dtype=np.uint8), name="FITMASK"))
    hdus.append(fits.ImageHDU(np.asarray(result.flags, dtype=np.uint8), name="FLAGS"))
    if include_covariance and result.covariance is not None:
        hdus.append(fits.ImageHDU(np.asarray(result.covariance, dtype=float), name="COVAR"))
    return hdus


def read_result_fields(path, *, model=True, wcs=True):
    """
    The fields of a result file written by `write_result_file`.

    Parameters
    ----------
    path : str or path-like
    model : bool, optional
        Read the MODEL extension; False leaves ``model`` None (as for a
        file written without it), for a reader that does not need it.
    wcs : bool, optional
        Read the difference image as `~astropy.nddata.CCDData.read` does,
        its WCS parsed from the header (default). False builds it from the
        pixels, the mask, the uncertainty and the header alone (no WCS;
        the data and uncertainty in native byte order), for a reader that
        needs only the pixels; a file whose uncertainty is not a standard
        deviation is read as by default.

    Returns
    -------
    fields : dict
        The keyword arguments of `~astro_dia.DifferenceResult`.

    Raises
    ------
    OSError
        If the file does not exist or is not a FITS file.
    ValueError
        If it is a FITS file but not one written by `write_result_file`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OSError(f"the result file {path!r} does not exist")
    difference = None
    with fits.open(path) as hdus:
        names = {hdu.name for hdu in hdus}
        if "KERNEL" not in names or "BKGCOEF" not in names:
            raise ValueError(f"{path!r} is not an astro_dia result file (it has no KERNEL "
                             "and BKGCOEF extensions); write one with astro_dia.io."
                             "write_result")
        info = hdus["KERNEL"].header
        version = info.get("DIAFMT")
        if version != RESULT_FORMAT_VERSION:
            raise ValueError(f"{path!r} has result format version {version!r}; this "
                             f"astro_dia reads version {RESULT_FORMAT_VERSION}")
        kernel = np.array(hdus["KERNEL"].data, dtype=float)
        kernel_error = (np.array(hdus["KERNERR"].data, dtype=float)
                        if "KERNERR" in names else None)
        kernel_terms = (np.array(hdus["KERNTERM"].data, dtype=float)
                        if "KERNTERM" in names else None)
        table = hdus["BKGCOEF"]
        model_data = (np.array(hdus["MODEL"].data, dtype=float) if model and "MODEL" in names
                      else None)
        fit_mask = np.array(hdus["FITMASK"].data, dtype=bool)
        flags = np.array(hdus["FLAGS"].data, dtype=np.uint8)
        covariance = np.array(hdus["COVAR"].data, dtype=float) if "COVAR" in names else None
        if not wcs:
            difference = _pixels_only(hdus, names)
        unit = (difference.unit if difference is not None
                else _fits_unit(hdus[0].header.get("BUNIT")))
        values = _table_column(table, "value", unit)
        errors = _table_column(table, "error", unit)
        info = info.copy()
    if difference is None:
        with without_datfix_notices():
            difference = CCDData.read(path, hdu_mask=_MASK_HDU,
                                      hdu_uncertainty=_UNCERTAINTY_HDU)
    difference.flags = flags
    unit = difference.unit
    coefficients = u.Quantity(values, unit).ravel()
    degree = int(info["DIA_BDEG"])
    background = np.tensordot(coefficients.value, background_basis(difference.shape, degree),
                              axes=1) * unit
    has_errors = bool(info["DIA_HERR"])
    model = None
    if model_data is not None:
        model = CCDData(model_data, unit=unit, mask=~np.isfinite(model_data),
                        meta=difference.meta.copy(), wcs=difference.wcs)
    return dict(
        difference=difference,
        model=model,
        kernel=kernel,
        kernel_degree=int(info.get("DIA_KDEG", 0)),
        constant_scale=bool(info.get("DIA_CSCL", False)),
        kernel_terms=kernel_terms,
        scale_factor=float(info["DIA_P"]),
        background=background,
        background_coefficients=coefficients,
        background_degree=degree,
        fit_mask=fit_mask,
        flags=flags,
        n_outliers=int(info["DIA_NOUT"]),
        clip=None if info["DIA_CLIP"] == "none" else float(info["DIA_CLIP"]),
        residual_scatter=float(info["DIA_ZSTD"]),
        quality=_quality_from_cards(info),
        n_data=int(info["DIA_NDAT"]),
        n_iterations=int(info["DIA_NIT"]),
        converged=bool(info["DIA_CONV"]),
        loss_value=float(info["DIA_LVAL"]),
        fit_time=float(info["DIA_TIME"]),
        noise_settings=_from_json(info["DIA_NSET"]),
        solver=str(info["DIA_SOLV"]),
        fit_region=str(info.get("DIA_FREG", "all")),
        saturation_levels=_from_json(info["DIA_SATL"]),
        covariance=covariance,
        scale_factor_error=(float("nan") if has_errors and info["DIA_PERR"] is None
                            else float(info["DIA_PERR"]) if has_errors else None),
        background_error=(u.Quantity(errors, unit).ravel() if has_errors else None),
        kernel_error=kernel_error,
        covariance_valid=bool(info["DIA_CVOK"]) if has_errors else None,
    )


# -- private helpers -----------------------------------------------------------

def _result_cards(result, unit):
    """The fit's scalar results as (keyword, value, comment), for the KERNEL header."""
    has_errors = result.scale_factor_error is not None
    cards = [
        ("DIAFMT", RESULT_FORMAT_VERSION, "astro_dia result file format version"),
        ("DIA_P", float(result.scale_factor), "photometric scale factor P = sum(K)"),
        ("DIA_B0", float(result.background_offset.to_value(unit)),
         "background B0 at the image centre"),
        ("DIA_BDEG", int(result.background_degree), "background polynomial degree"),
        ("DIA_KDEG", int(getattr(result, "kernel_degree", 0)),
         "kernel polynomial degree (spatial variation)"),
        ("DIA_CSCL", bool(getattr(result, "constant_scale", False)),
         "scale factor held constant over the image"),
        ("DIA_HERR", has_errors, "errors from the Fisher information present"),
        ("DIA_PERR", (float(result.scale_factor_error)
                      if has_errors and np.isfinite(result.scale_factor_error) else None),
         "sigma_P (Fisher information)"),
        ("DIA_CVOK", bool(result.covariance_valid) if has_errors else None,
         "covariance passed validity checks"),
        ("DIA_NDAT", int(result.n_data), "pixels in the fit"),
        ("DIA_NOUT", int(result.n_outliers), "pixels rejected from the fit as outliers"),
        ("DIA_CLIP", "none" if result.clip is None else float(result.clip),
         "outlier rejection threshold (sigma)"),
        ("DIA_ZSTD", float(result.residual_scatter), "robust std of D/sigma, fitted pixels"),
        *_quality_cards(getattr(result, "quality", None)),
        ("DIA_NIT", int(result.n_iterations), "solver iterations"),
        ("DIA_CONV", bool(result.converged), "solver converged"),
        ("DIA_LVAL", float(result.loss_value), "final value of the objective"),
        ("DIA_TIME", float(result.fit_time), "fit wall-clock time (s)"),
        ("DIA_SOLV", str(result.solver), "solver"),
        ("DIA_FREG", str(result.fit_region), "fit region: all pixels or stars"),
        ("DIA_NSET", _to_json(result.noise_settings), "noise settings (JSON)"),
        ("DIA_SATL", _to_json(result.saturation_levels), "saturation levels (JSON)"),
    ]
    return cards


def _quality_cards(quality):
    """The guard's measures (``result.quality``) as cards; none for a result without them."""
    if not quality:
        return []
    cards = [
        ("DIA_ZT5", quality["tail_fraction"], "fraction of fitted pixels beyond 5 sigma"),
        ("DIA_FREJ", quality["rejected_star_flux"], "star flux fraction in rejected px"),
        ("DIA_KNEG", quality["kernel_negative"], "negative share of kernel mass"),
        ("DIA_KLOB", quality["kernel_lobe"], "deepest negative lobe of kernel / peak"),
        ("DIA_KWID", quality["kernel_width"], "kernel rms width per axis (pixels)"),
        ("DIA_PROB", quality.get("robust_scale_factor"), "P of the robust pass"),
        ("DIA_PSHF", quality.get("pass_shift", 0.0), "shift of P between clipped fits"),
        ("DIA_PBIA", quality.get("predicted_bias"), "predicted bias of P, ref. noise"),
    ]
    finite = [(key, None if value is None or not np.isfinite(value) else float(value), comment)
              for key, value, comment in cards]
    return finite + [("DIA_QUAL", ",".join(quality["causes"]) or "OK", "guard causes, or OK")]


def _pixels_only(hdus, names):
    """
    The difference image of an open result file without its WCS (see `read_result_fields`).

    None when its uncertainty is not a standard deviation: `CCDData.read`
    knows the other kinds.
    """
    if (_UNCERTAINTY_HDU not in names
            or hdus[_UNCERTAINTY_HDU].header.get("UTYPE") != "StdDevUncertainty"):
        return None
    header = hdus[0].header
    mask = (np.asarray(hdus[_MASK_HDU].data).astype(bool) if _MASK_HDU in names else None)
    return CCDData(np.asarray(hdus[0].data, dtype=float), unit=_fits_unit(header.get("BUNIT")),
                   uncertainty=StdDevUncertainty(np.asarray(hdus[_UNCERTAINTY_HDU].data,
                                                            dtype=float), copy=False),
                   mask=mask, meta=header)


def _fits_unit(text):
    """The unit of a BUNIT card, as `CCDData.read` takes it (None without one)."""
    if not text:
        return None
    text = text.lower() if text.strip().lower() == "adu" else text
    return u.Unit(CCDData.known_invalid_fits_unit_strings.get(text, text))


def _table_column(hdu, name, unit):
    """A column of the BKGCOEF table in ``unit`` (its TUNIT honoured), as floats."""
    values = np.array(hdu.data[name], dtype=float)
    stored = hdu.columns[name].unit
    if stored and unit is not None:
        values = u.Quantity(values, _fits_unit(stored)).to_value(unit)
    return values


def _quality_from_cards(info):
    """``result.quality`` back from the cards of `_quality_cards` (None without them)."""
    if "DIA_QUAL" not in info:
        return None

    def number(key, missing=float("nan")):
        value = info.get(key)
        return missing if value is None else float(value)

    causes = str(info["DIA_QUAL"])
    return dict(residual_scatter=number("DIA_ZSTD"), tail_fraction=number("DIA_ZT5"),
                rejected_star_flux=number("DIA_FREJ"), kernel_negative=number("DIA_KNEG"),
                kernel_lobe=number("DIA_KLOB"), kernel_width=number("DIA_KWID"),
                robust_scale_factor=number("DIA_PROB", None),
                pass_shift=number("DIA_PSHF", 0.0), predicted_bias=number("DIA_PBIA", None),
                causes=() if causes == "OK" else tuple(causes.split(",")))


def _set_cards(header, cards):
    for key, value, comment in cards:
        header[key] = (value, _comment_that_fits(key, value, comment))


def _comment_that_fits(key, value, comment):
    """
    ``comment``, or no comment when it does not fit on the card beside ``value``.

    A value that fits on one card with no room for the whole comment (a JSON
    string of 60-70 characters) would make astropy cut the comment when the
    file is written, with a warning; the card goes without it instead. A
    longer string value continues on CONTINUE cards, which keep the comment.
    """
    image = fits.Card(key, value).image
    if len(image) > fits.Card.length:      # CONTINUE cards
        return comment
    room = fits.Card.length - len(image.rstrip()) - len(" / ")
    return comment if len(comment) <= room else ""


def _background_table(result, unit):
    terms = polynomial_terms(int(result.background_degree))
    values = u.Quantity(result.background_coefficients).to_value(unit)
    if result.background_error is not None:
        errors = u.Quantity(result.background_error).to_value(unit)
    else:
        errors = np.full(len(terms), np.nan)
    table = QTable({
        "x_power": np.array([m for m, _ in terms], dtype=np.int16),
        "y_power": np.array([n for _, n in terms], dtype=np.int16),
        "value": values,
        "error": errors,
    })
    hdu = fits.table_to_hdu(table)
    # TUNIT as CCDData writes BUNIT (FITS has no "electron"), read back by `_fits_unit`.
    for name in ("value", "error"):
        hdu.columns.change_attrib(name, "unit", unit.to_string())
    hdu.name = "BKGCOEF"
    return hdu


def _jsonable(value):
    """Numbers, strings and containers as they are; arrays as a placeholder."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        return f"<array {value.shape}>"
    return str(value)


def _to_json(mapping):
    return json.dumps(_jsonable(mapping), separators=(",", ":"))


def _from_json(text):
    """Inverse of `_to_json`; lists at the top level become tuples, as in a fresh result."""
    mapping = json.loads(text)
    return {key: tuple(value) if isinstance(value, list) else value
            for key, value in mapping.items()}
