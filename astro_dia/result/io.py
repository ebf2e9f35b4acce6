"""
FITS files of difference images and of whole fit results.

`write_result` writes one multi-extension FITS file per fit, in this order:

* the primary HDU: the difference image, its unit (BUNIT), WCS and the
  ``meta`` of ``result.difference`` (the ``DIA_*`` provenance keywords
  included);
* ``MASK`` and ``UNCERT``: its mask and standard deviation, as
  `~astropy.nddata.CCDData` writes them;
* ``KERNEL``: the kernel; its header holds the fit's results (P, sigma_P,
  B0, iterations, noise settings, ...);
* ``KERNERR``: standard errors of the kernel pixels (when computed);
* ``KERNTERM``: the kernels of the polynomial terms of a spatially varying
  kernel (``kernel_degree > 0`` only), a cube;
* ``BKGCOEF``: a table of the background polynomial terms: exponents
  ``x_power`` and ``y_power``, ``value`` and ``error``;
* ``MODEL``: the model ``R (x) K + B`` (NaN where undefined; optional);
* ``FITMASK``: 1 for the pixels that entered the fit;
* ``COVAR``: the parameter covariance (when computed; optional).

``CCDData.read(path)`` reads the difference image back unchanged (it
ignores the extensions it does not know); `read_result` rebuilds the whole
`~astro_dia.DifferenceResult`.
"""

import os

from astropy.io import fits
from astropy.nddata import CCDData

from ._fits_layout import (RESULT_FORMAT_VERSION, read_result_fields, without_datfix_notices,
                           write_result_file)
from ._record import DifferenceResult

__all__ = ["write_result", "read_result", "read_image", "RESULT_FORMAT_VERSION"]


def read_image(path, *, unit=None, what="image"):
    """
    Read one FITS image as `~astropy.nddata.CCDData`, with clear errors.

    Parameters
    ----------
    path : str or path-like
        The FITS file; its primary HDU holds the image, and MASK and UNCERT
        extensions are read as `~astropy.nddata.CCDData` does.
    unit : `~astropy.units.Unit` or str, optional
        Unit of the data when the header has no BUNIT keyword.
    what : str, optional
        What the file is (``'reference'``, ``'target'``), for messages.

    Returns
    -------
    image : `~astropy.nddata.CCDData`

    Raises
    ------
    OSError
        If the file does not exist or is not a readable FITS file.
    ValueError
        If the header has no BUNIT and no ``unit`` is given, or the primary
        HDU holds no image.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OSError(f"the {what} file {path!r} does not exist")
    try:
        with open(path, "rb") as stream:  # closed even when astropy fails to parse it
            header = fits.getheader(stream)
    except Exception as exc:  # astropy raises OSError, or others on damaged files
        raise OSError(f"the {what} file {path!r} is not a readable FITS file "
                      f"({type(exc).__name__}: {exc})") from exc
    if header.get("NAXIS", 0) != 2:
        raise ValueError(f"the {what} file {path!r} has no 2-D image in its primary HDU "
                         f"(NAXIS = {header.get('NAXIS', 0)})")
    if unit is None and "BUNIT" not in header:
        raise ValueError(f"the {what} file {path!r} has no BUNIT keyword; give its unit "
                         "(e.g. unit='adu', or --unit adu on the command line)")
    try:
        with without_datfix_notices():
            return CCDData.read(path, unit=unit)
    except (OSError, TypeError, ValueError) as exc:
        raise OSError(f"the {what} file {path!r} could not be read as an image "
                      f"({type(exc).__name__}: {exc})") from exc


def write_result(result, path, *, overwrite=False, include_model=True,
                 include_covariance=True):
    """
    Write a fit result as one multi-extension FITS file.

    The primary HDU and the MASK and UNCERT extensions are the difference
    image exactly as `~astropy.nddata.CCDData.write` writes it, so that
    ``CCDData.read(path)`` gives it back unchanged; the kernel, the
    background coefficients, the model, the fit mask and the covariance
    follow as extensions, and the fit's scalar results go in the KERNEL
    header (see the module docstring for the layout).

    Parameters
    ----------
    result : `~astro_dia.DifferenceResult`
        The result of `~astro_dia.DifferenceImager.fit`. It is not modified.
    path : str or path-like
        The FITS file to write.
    overwrite : bool, optional
        Replace ``path`` if it exists.
    include_model : bool, optional
        Write the MODEL extension (as large as the image). Without it
        `read_result` returns ``model=None``.
    include_covariance : bool, optional
        Write the COVAR extension (``(K**2 + n_B)**2`` numbers).

    Raises
    ------
    TypeError
        If ``result`` is not a fit result.
    OSError
        If ``path`` exists and ``overwrite`` is false.

    See Also
    --------
    read_result

    Examples
    --------
    >>> import os, tempfile
    >>> from astropy.nddata import CCDData
    >>> from astro_dia import DifferenceImager
    >>> from astro_dia.io import read_result, write_result
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, target, truth = make_image_pair(shape=(48, 48), density=100, seed=3)
    >>> result = DifferenceImager(kernel_size=7, flat=1, sky=0).fit(reference, target)
    >>> path = os.path.join(tempfile.mkdtemp(), "difference.fits")
    >>> write_result(result, path)
    >>> CCDData.read(path).header["DIA_KSZ"]
    7
    >>> again = read_result(path)
    >>> bool(again.scale_factor == result.scale_factor)
    True
    """
    _check_result(result)
    write_result_file(result, path, overwrite=overwrite, include_model=include_model,
                      include_covariance=include_covariance)


def read_result(path, *, model=True, wcs=True):
    """
    Read a fit result written by `write_result`.

    Parameters
    ----------
    path : str or path-like
    model : bool, optional
        Read the model image too (default). False leaves ``model`` None,
        for a reader that does not need it.
    wcs : bool, optional
        Give the difference image its WCS, parsed from the header as
        `~astropy.nddata.CCDData.read` does (default). False reads the
        pixels, mask, uncertainty and header alone, in native byte order and
        several times faster, for a reader that needs only the pixels (a
        series' detection and photometry passes).

    Returns
    -------
    result : `~astro_dia.DifferenceResult`
        With the attributes of a fresh fit: ``difference``, ``model``
        (None if it was not written), ``kernel``, ``scale_factor``,
        ``scale_factor_error``, ``background`` (recomputed from the
        coefficients), ``background_coefficients``, ``background_error``,
        ``kernel_error``, ``covariance``, ``fit_mask``, ``n_data``,
        ``n_iterations``, ``converged``, ``loss_value``, ``fit_time``,
        ``noise_settings``, ``solver``, ``saturation_levels``,
        ``covariance_valid``, ``flags`` (also as ``difference.flags``),
        ``n_outliers``, ``clip`` and ``residual_scatter``.

    Raises
    ------
    OSError
        If the file does not exist or is not a FITS file.
    ValueError
        If it is a FITS file but not one written by `write_result`.
    """
    return DifferenceResult(**read_result_fields(path, model=model, wcs=wcs))


# -- private helpers -----------------------------------------------------------

def _check_result(result):
    if not isinstance(result, DifferenceResult):
        raise TypeError(f"result must be a DifferenceResult (from DifferenceImager.fit), got "
                        f"{type(result).__name__}")
