"""
Difference imaging as a ccdproc-style reduction step.

`subtract_reference` is to a reference image what `ccdproc.subtract_bias`
is to a master bias: a function of a calibrated `~astropy.nddata.CCDData`
that returns a new `~astropy.nddata.CCDData` and records the call in its
header, so that it chains after `ccdproc.ccd_process`,
`ccdproc.flat_correct` and `ccdproc.gain_correct`.
"""

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import NDData


__all__ = ["subtract_reference"]

#: Header key of the log entry, and the short FITS keyword holding its value,
#: in the manner of ccdproc's long function names (e.g. ``flat_correct`` ->
#: ``flatcor``).
LOG_KEY = "subtract_reference"
LOG_SHORT_KEY = "subref"


def subtract_reference(ccd, reference, *, imager=None, add_keyword=True, **settings):
    """
    Subtract the reference image, convolved to match, from a calibrated frame.

    Fits the kernel and differential background that turn ``reference``
    into ``ccd`` with a `~astro_dia.DifferenceImager` and returns the
    difference image, ``ccd - (reference (x) K + B)``, with its
    uncertainty, mask and the fit's ``DIA_*`` keywords, the kernel
    included, so that `astro_dia.photometry.differential_photometry` and
    `~astro_dia.photometry.aperture_photometry_difference` convolve the
    reference PSF with it from the image alone, also after
    ``difference.write(path)`` and ``CCDData.read(path)``. The call is logged
    in the header as ccdproc's own steps log theirs: the keyword
    ``HIERARCH SUBTRACT_REFERENCE`` names the short keyword ``SUBREF``, whose
    value lists the arguments (arrays and images as placeholders such as
    ``<CCDData>``).

    Parameters
    ----------
    ccd : `~astropy.nddata.CCDData`
        The calibrated target frame, e.g. the output of
        `ccdproc.ccd_process`: data in adu or electrons (after
        `ccdproc.gain_correct`), with the ``uncertainty`` and ``mask``
        ccdproc gives it. It is not modified.
    reference : `~astropy.nddata.CCDData`
        The reference image on the same pixel grid, in a unit convertible
        to that of ``ccd``. It is not modified.
    imager : `~astro_dia.DifferenceImager`, optional
        A configured imager to use. If None (default), one is made from
        ``settings``.
    add_keyword : bool, str, `ccdproc.Keyword` or dict, optional
        As in ccdproc: True (default) logs the call as described above;
        a string, a Keyword or a dict gives the item(s) to add instead;
        False or None adds no log entry. The ``DIA_*`` keywords of the fit
        follow ``imager.add_keyword``; when the imager is made here, a
        false ``add_keyword`` turns them off too.
    **settings
        Keyword arguments of `~astro_dia.DifferenceImager` (``kernel_size``,
        ``noise_model``, ``flat``, ``gain``, ...). Not allowed together
        with ``imager``.

    Returns
    -------
    difference : `~astropy.nddata.CCDData`
        The difference image, in the unit of ``ccd``. Its header (``meta``)
        holds the fit's ``DIA_*`` keywords (see
        `~astro_dia.DifferenceImager`: ``DIA_KSZ`` the kernel size K,
        ``DIA_KDEG`` its polynomial degree, ``DIA_P`` and ``DIA_PERR`` the
        scale factor P and sigma_P, ...) and the kernel itself:

        * ``DIA_KNUM``: the number of kernel values, ``n_terms * K**2``
          (``n_terms = 1`` for a constant kernel);
        * ``DIAK0001``, ``DIAK0002``, ...: the values (1-based, C order) of
          the ``(K, K)`` kernel, or of the ``(n_terms, K, K)`` term kernels
          ``result.kernel_terms`` of a spatially varying one
          (``kernel_degree > 0``), each as the ``repr`` string of the
          float64 value, so that it is exact after a FITS round trip;
        * with ``kernel_degree > 0``: ``DIA_NX``, ``DIA_NY``, the image size
          of the kernel polynomial's coordinates, and, when errors were
          computed and P varies, ``DPCViijj``, the covariance of the
          scale factors of terms i and j (``i <= j``), for sigma_P at any
          position.

        Earlier kernel cards in the header of ``ccd`` are removed. These
        cards follow ``imager.add_keyword`` as the ``DIA_*`` keywords do.

    Raises
    ------
    TypeError
        If ``imager`` is not a DifferenceImager, or is given together with
        ``settings``; or if ``add_keyword`` is of an unknown kind.

    See Also
    --------
    astro_dia.DifferenceImager.fit : the full result (model, covariance, ...).
    astro_dia.photometry.differential_photometry : fluxes on the difference image.

    Notes
    -----
    After `ccdproc.flat_correct` the photon noise of a pixel depends on the
    master flat (paper eq. 6), which ccdproc does not record in the header
    by name. When the header logs ``flat_correct`` and the frame carries the
    uncertainty that ``ccd_process(..., error=True)`` propagated, the CCD
    noise model recovers the flat from it
    (`~astro_dia.noise.flat_from_uncertainty`, recorded in the provenance);
    otherwise pass the master flat as ``flat=``.

    Examples
    --------
    >>> from astro_dia.ccdproc_step import subtract_reference
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, target, truth = make_image_pair(shape=(48, 48), density=100, seed=2)
    >>> difference = subtract_reference(target, reference, kernel_size=7, flat=1, sky=0)
    >>> difference.header["SUBREF"]
    'ccd=<CCDData>, reference=<CCDData>, kernel_size=7, flat=1, sky=0'
    >>> print(f"P = {difference.header['DIA_P']:.1f} (true {truth.scale_factor})")
    P = 1.0 (true 1.0)
    >>> difference.header["DIA_KNUM"]    # the 7 x 7 kernel, in DIAK0001 ... DIAK0049
    49
    """
    from ..core import DifferenceImager

    if imager is None:
        imager = DifferenceImager(**settings, add_keyword=bool(add_keyword))
    elif not isinstance(imager, DifferenceImager):
        raise TypeError(f"imager must be a DifferenceImager, got {type(imager).__name__}")
    elif settings:
        raise TypeError(f"give either imager or DifferenceImager settings, not both (got "
                        f"imager and {', '.join(sorted(settings))})")
    entries = _log_entries(add_keyword, ccd, reference, imager, settings)
    # The fit writes its kernel cards into the difference's header (and
    # removes stale ones inherited from the input).
    difference = imager.fit(reference, ccd).difference
    for key, value in entries.items():
        _insert(difference.meta, key, value)
    return difference


def _log_entries(add_keyword, ccd, reference, imager, settings):
    """The ``{key: value}`` to log, following ccdproc's ``add_keyword`` conventions."""
    if add_keyword is None or add_keyword is False:
        return {}
    if add_keyword is True:
        arguments = [("ccd", ccd), ("reference", reference)]
        if imager is not None and not settings:
            arguments.append(("imager", imager))
        arguments += list(settings.items())
        text = ", ".join(f"{name}={_placeholder(value)}" for name, value in arguments)
        return {LOG_KEY: " ".join(text.split())}
    if isinstance(add_keyword, str):
        return {add_keyword: None}
    if isinstance(add_keyword, dict):
        return dict(add_keyword)
    name, value = getattr(add_keyword, "name", None), getattr(add_keyword, "value", None)
    if name is None:
        raise TypeError(f"add_keyword must be a bool, a str, a ccdproc.Keyword or a dict, "
                        f"got {type(add_keyword).__name__}")
    return {name: value}


def _placeholder(value):
    """ccdproc's convention: images and arrays of more than one value as ``<ClassName>``."""
    if isinstance(value, NDData) or (isinstance(value, (np.ndarray, u.Quantity))
                                     and np.size(value) > 1):
        return f"<{type(value).__name__}>"
    if hasattr(value, "kernel_size") and hasattr(value, "fit"):  # a DifferenceImager
        return f"<{type(value).__name__}>"
    return value


def _insert(meta, key, value):
    """Add one log item; the long ``subtract_reference`` key points to ``SUBREF``."""
    if key == LOG_KEY:
        comment = "Shortened name for astro_dia command"
        if isinstance(meta, fits.Header):
            meta[f"HIERARCH {key.upper()}"] = (LOG_SHORT_KEY, comment)
        else:
            meta[key] = (LOG_SHORT_KEY, comment)
        meta[LOG_SHORT_KEY] = value
    else:
        meta[key] = value
