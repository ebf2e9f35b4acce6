"""
Differential fluxes at given positions on a difference image.

`differential_photometry` fits the target PSF (the reference PSF convolved
with the kernel) at fixed positions by linear least squares (sources whose
fit boxes overlap jointly, ``astro_dia.photometry._linear``), or at free
positions or with a background term with photutils
`~photutils.psf.PSFPhotometry`, weighted by the difference image's
uncertainty and honouring its mask. `aperture_photometry_difference`
(`astro_dia.photometry.aperture`) is the quick alternative, on the inputs
read here. Both divide by the photometric scale factor P to put the flux on
the reference's scale, propagating sigma_P.
"""

import warnings

import numpy as np
from astropy import units as u
from astropy.nddata import NDData, StdDevUncertainty
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning

from ..result._kernel_header import kernel_from_header
from .flags import PHOTOMETRY_FLAGS
from ._linear import fit_fixed_positions
from ._positions import position_table
from .psf import _check_psf_model, _natural_size, render_psf, target_psf

__all__ = ["differential_photometry"]

_NEGATIVE_FLUX = 4          # photutils' bit for a non-positive flux
_ENCLOSED = 0.97            # flux fraction the automatic fit box holds


# -- inputs -----------------------------------------------------------------------
def _fit_of(result):
    """The fit behind ``result`` and its difference image.

    A `~astro_dia.DifferenceResult` is its own fit; a difference image
    carries one in its header when `~astro_dia.subtract_reference` made it
    (``DIA_KNUM``/``DIAKnnnn`` cards), else the fit is None.
    """
    if hasattr(result, "difference") and hasattr(result, "kernel"):
        return result, result.difference
    if isinstance(result, NDData):
        return kernel_from_header(result.meta, shape=np.shape(result.data)), result
    raise TypeError("result must be a DifferenceResult or a CCDData difference image, "
                    f"got {type(result).__name__}")


def _no_kernel_message(meta):
    """Why a plain difference image cannot give the target PSF, and what to do."""
    hint = ""
    if "DIA_KSZ" in (meta or {}):
        hint = (" (a file from DifferenceResult.write or astro_dia.io.write_result: read "
                "it with astro_dia.io.read_result, which gives the kernel back)")
    return ("the difference image carries no kernel (no DIA_KNUM/DIAKnnnn header cards), "
            "so the target PSF, reference_psf convolved with the kernel, is unknown; "
            "fitting reference_psf unconvolved would bias the fluxes. Pass the "
            "DifferenceResult from DifferenceImager.fit instead of its difference image, "
            "or make the difference with astro_dia.subtract_reference (which records the "
            "kernel in the header), or pass kernel=result.kernel (kernel=[[1.0]] if "
            f"reference_psf is already the target's PSF){hint}")


def _difference_inputs(result, scale_factor, scale_factor_error, kernel, need_kernel=True):
    """The fit (or None), difference NDData, P, sigma_P and kernel, from a result or an image.

    With ``need_kernel``, an image without a recorded kernel and no
    ``kernel`` given is an error, never a silent fit of the reference PSF.
    """
    fit, difference = _fit_of(result)
    # A spatially varying fit gives the local kernel and P at each source,
    # unless the caller overrides them.
    local = (kernel is None and scale_factor is None
             and getattr(fit, "kernel_terms", None) is not None)
    if fit is not None:
        if kernel is None:
            kernel = fit.kernel
        if scale_factor is None:
            scale_factor = fit.scale_factor
            if scale_factor_error is None:
                scale_factor_error = getattr(fit, "scale_factor_error", None)
    else:
        meta = difference.meta or {}
        missing_kernel = need_kernel and kernel is None
        if scale_factor is None:
            if "DIA_P" not in meta:
                raise ValueError(
                    "the difference image has no DIA_P header keyword, so the scale factor "
                    "P is unknown; pass scale_factor= (and scale_factor_error=), or the "
                    "DifferenceResult itself"
                    + ("; " + _no_kernel_message(meta) if missing_kernel else ""))
            scale_factor = meta["DIA_P"]
            if scale_factor_error is None:
                scale_factor_error = meta.get("DIA_PERR")
        if missing_kernel:
            raise ValueError(_no_kernel_message(meta))
    scale_factor = float(scale_factor)
    if not np.isfinite(scale_factor) or scale_factor == 0:
        raise ValueError(f"the scale factor P must be finite and non-zero, got {scale_factor}")
    if scale_factor_error is not None:
        scale_factor_error = float(scale_factor_error)
        if not np.isfinite(scale_factor_error) or scale_factor_error < 0:
            raise ValueError(f"scale_factor_error must be non-negative and finite, got "
                             f"{scale_factor_error}")
    return fit, difference, scale_factor, scale_factor_error, kernel, local


def _pixels(difference):
    """Data, error and bad-pixel mask of the difference, ready for photutils."""
    data = np.asarray(difference.data, dtype=float)
    if data.ndim != 2:
        raise ValueError(f"the difference image must be 2-D, got shape {data.shape}")
    if difference.uncertainty is None:
        raise ValueError("the difference image has no uncertainty, which weights the fit; "
                         "attach a StdDevUncertainty (DifferenceImager always does)")
    uncertainty = difference.uncertainty
    if not isinstance(uncertainty, StdDevUncertainty):     # (a standard deviation as it is)
        uncertainty = uncertainty.represent_as(StdDevUncertainty)
    error = np.asarray(uncertainty.array, dtype=float)
    error = np.broadcast_to(error, data.shape)
    bad = ~np.isfinite(data) | ~np.isfinite(error) | (error <= 0)
    if difference.mask is not None:
        bad = bad | np.asarray(difference.mask, bool)
    return np.where(bad, 0.0, data), np.where(bad, 1.0, error), bad


def _fit_shape(fit_shape, psf):
    if fit_shape is None:
        image = render_psf(psf, _natural_size(psf))
        centre = image.shape[0] // 2
        total = image.sum()
        for half in range(1, centre + 1):
            box = image[centre - half:centre + half + 1, centre - half:centre + half + 1]
            if box.sum() >= _ENCLOSED * total:
                break
        return (2 * half + 1,) * 2
    shape = np.atleast_1d(fit_shape)
    if shape.size == 1:
        shape = np.repeat(shape, 2)
    if (shape.size != 2 or not np.issubdtype(shape.dtype, np.integer) or (shape < 3).any()
            or (shape % 2 == 0).any()):
        raise ValueError(f"fit_shape must be an odd integer >= 3 or a pair of them, got "
                         f"{fit_shape!r}")
    return tuple(int(n) for n in shape)


def _footprints(x, y, shape, box, bad):
    """Flags and good-pixel counts of the ``box`` around each position."""
    ny, nx = shape
    inside = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < nx - 0.5) \
        & (y >= -0.5) & (y < ny - 0.5)
    flags = np.where(inside, 0, PHOTOMETRY_FLAGS["outside_image"])
    n_good = np.zeros(x.size, int)
    hy, hx = box[0] // 2, box[1] // 2
    for i in np.flatnonzero(inside):
        cx, cy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
        y0, y1, x0, x1 = cy - hy, cy + hy + 1, cx - hx, cx + hx + 1
        window = bad[max(y0, 0):min(y1, ny), max(x0, 0):min(x1, nx)]
        n_good[i] = int((~window).sum())
        if n_good[i] < box[0] * box[1]:
            flags[i] |= PHOTOMETRY_FLAGS["masked_pixels"]
        if n_good[i] == 0:
            flags[i] |= PHOTOMETRY_FLAGS["fully_masked"]
    return flags, n_good


def _reference_scale(flux, flux_err, scale_factor, scale_factor_error):
    """flux / P and its error, including sigma_P when known."""
    flux_ref = flux / scale_factor
    variance = (flux_err / scale_factor) ** 2
    if scale_factor_error is not None:
        variance = variance + (flux * scale_factor_error / scale_factor ** 2) ** 2
    return flux_ref, np.sqrt(variance)


def _table(ids, x, y, skycoord, flux, flux_err, scale_factor, scale_factor_error, unit,
           extra, flags, meta):
    flux_ref, flux_ref_err = _reference_scale(flux, flux_err, scale_factor, scale_factor_error)
    table = QTable()
    table["id"] = ids
    table["x"] = x
    table["y"] = y
    if skycoord is not None:
        table["skycoord"] = skycoord
    table["flux"] = flux * unit
    table["flux_err"] = flux_err * unit
    table["flux_ref"] = flux_ref * unit
    table["flux_ref_err"] = flux_ref_err * unit
    for name, column in extra.items():
        table[name] = column
    table["flags"] = flags.astype(np.int64)
    table.meta.update(meta)
    if np.ndim(scale_factor):
        # A spatially varying kernel: P (and sigma_P) at each source.
        table["scale_factor"] = scale_factor
        table.meta["scale_factor"] = "per source (column scale_factor)"
        table.meta["scale_factor_error"] = None
        if scale_factor_error is not None:
            table["scale_factor_error"] = scale_factor_error
            table.meta["scale_factor_error"] = "per source (column scale_factor_error)"
    else:
        table.meta["scale_factor"] = scale_factor
        table.meta["scale_factor_error"] = scale_factor_error
    if scale_factor_error is None:
        warnings.warn("the scale factor's error is unknown (compute_errors=False, or no "
                      "DIA_PERR keyword), so flux_ref_err leaves it out", AstropyUserWarning)
    return table


def _unit(difference):
    return difference.unit if difference.unit is not None else u.dimensionless_unscaled


# -- PSF photometry -------------------------------------------------------------
def _psf_model(psf, local_background, fixed_positions):
    """The model photutils fits: the PSF, plus a constant for a local background."""
    from astropy.modeling.models import Const2D

    psf = psf.copy()
    psf.x_0.fixed = psf.y_0.fixed = bool(fixed_positions)
    if local_background is not True:
        return psf
    model = psf + Const2D(amplitude=0.0)
    model.x_name, model.y_name, model.flux_name = "x_0_0", "y_0_0", "flux_0"
    return model


def _initial_fluxes(model_psf, data, error, bad, x, y, box):
    """Weighted linear PSF flux at fixed positions: the fit's starting point."""
    ny, nx = data.shape
    hy, hx = box[0] // 2, box[1] // 2
    fluxes = np.zeros(x.size)
    psf = model_psf.copy()
    psf.flux = 1.0
    for i in range(x.size):
        cx, cy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
        ys = slice(max(cy - hy, 0), min(cy + hy + 1, ny))
        xs = slice(max(cx - hx, 0), min(cx + hx + 1, nx))
        yy, xx = np.mgrid[ys, xs]
        psf.x_0, psf.y_0 = x[i], y[i]
        profile = np.where(bad[ys, xs], 0.0, psf(xx, yy))
        weight = profile / error[ys, xs] ** 2
        norm = np.sum(weight * profile)
        fluxes[i] = np.sum(weight * data[ys, xs]) / norm if norm > 0 else 0.0
    return fluxes


def differential_photometry(result, positions, reference_psf, *, fit_shape=None,
                            fixed_positions=True, local_background=False, scale_factor=None,
                            scale_factor_error=None, kernel=None, oversampling=4,
                            position_bounds=1.0):
    """
    PSF-fitted differential fluxes at given positions on a difference image.

    The target PSF, ``reference_psf (x) kernel / P`` (`target_psf`), is fitted
    at each position, weighted by the difference image's uncertainty;
    masked, NaN and zero-uncertainty pixels are left out. The flux is then
    divided by the scale factor P to put it on the reference's photometric
    scale (paper section 3.2).

    At fixed positions without a background term the model is linear in
    the fluxes, and the weighted least-squares fluxes are computed directly
    (what `photutils.psf.PSFPhotometry` converges to, in a fraction of its
    time): ``flux = sum(w P d) / sum(w P**2)``, ``flux_err = 1 /
    sqrt(sum(w P**2))`` with ``w = 1 / error**2`` for an isolated source.
    Sources whose fit boxes overlap (a chain of them) are fitted jointly,
    each pixel counted once and each source's PSF included over its own
    box and the boxes that overlap it; their errors come from the inverse
    of the group's normal matrix. Free positions or a background term are
    fitted with `photutils.psf.PSFPhotometry`, each source on its own.

    Parameters
    ----------
    result : `~astro_dia.DifferenceResult` or `~astropy.nddata.CCDData`
        The fit (whose kernel, P and sigma_P are used), or a difference
        image with an uncertainty. The image made by
        `~astro_dia.subtract_reference` records the kernel in its header
        (``DIA_KNUM`` and ``DIAKnnnn`` cards, kept by ``CCDData.write`` and
        ``CCDData.read``), which is then used as the fit's, a spatially
        varying one included; P and sigma_P come from its DIA_P/DIA_PERR
        keywords unless given. Another difference image needs ``kernel=``.
    positions : `~astropy.table.Table`, (N, 2) array_like or `~astropy.coordinates.SkyCoord`
        Where to measure: a table with ``x``/``y`` (or
        ``xcentroid``/``ycentroid``, ``x_0``/``y_0``) columns in 0-based
        pixels (an ``id`` column is kept), ``(x, y)`` pairs, or sky
        positions, converted with the difference image's WCS.
    reference_psf : `astropy.modeling.Model`
        The reference PSF (`gaussian_psf`, `moffat_psf`,
        `build_reference_psf`, or a photutils PSF model).
    fit_shape : int or (int, int), optional
        Odd size of the fitted box (``(ny, nx)``); by default the smallest
        square holding 97% of the target PSF's flux.
    fixed_positions : bool, optional
        Fit the flux only (default), or the position as well, within
        ``position_bounds`` pixels of the given one.
    local_background : bool or `~photutils.background.LocalBackground`, optional
        False (default): no background term, the difference image's
        background having been fitted already. True: fit an additive
        constant with each flux (column ``local_bkg``). A
        `~photutils.background.LocalBackground` estimates it in an annulus
        instead.
    scale_factor, scale_factor_error : float, optional
        Override P and sigma_P.
    kernel : (K, K) array_like, optional
        Override the kernel (and, with a spatially varying fit, use this
        one kernel everywhere). Required with a difference image whose
        header records no kernel; ``kernel=[[1.0]]`` fits ``reference_psf``
        as it is (when it is already the target's PSF).
    oversampling : int, optional
        Oversampling of the rendered target PSF.
    position_bounds : float, optional
        Largest shift (pixels) of a free position.

    Returns
    -------
    table : `~astropy.table.QTable`
        One row per position: ``id``, ``x``, ``y`` (fitted when free),
        ``skycoord`` (for sky positions), ``flux``, ``flux_err`` (in the
        difference's unit), ``flux_ref = flux / P``, ``flux_ref_err``
        (with sigma_P), ``local_bkg`` (with a background term),
        ``reduced_chi2``, ``qfit``, ``cfit`` (photutils' definitions, on
        each source's own fit box and its group's model), ``n_pixels`` and
        ``flags``
        (see ``astro_dia.photometry.PHOTOMETRY_FLAGS``). Rows that could not
        be measured (off the image, fully masked) have NaN fluxes and a
        flag. ``meta`` holds P, sigma_P and the fit shape.

    Raises
    ------
    ValueError
        If P is unknown, the kernel is unknown (a difference image without
        the header cards of `~astro_dia.subtract_reference` and no
        ``kernel=``), the image has no uncertainty, or sky positions are
        given for an image without a WCS.

    Warns
    -----
    astropy.utils.exceptions.AstropyUserWarning
        When sigma_P is unknown (``flux_ref_err`` then leaves it out).

    Examples
    --------
    >>> from astro_dia import DifferenceImager
    >>> from astro_dia.photometry import differential_photometry, gaussian_psf
    >>> from astro_dia.simulate import make_variable_series
    >>> reference, targets, truth = make_variable_series(
    ...     1, n_variables=2, density=100, amplitude=500.0, variable_flux=2000.0, seed=5)
    >>> result = DifferenceImager(kernel_size=9, flat=1, sky=0).fit(reference, targets[0])
    >>> table = differential_photometry(result, truth.variables, gaussian_psf(3.53))
    >>> for row, change in zip(table, truth.flux_change[0]):
    ...     print(f"{row['flux_ref'].value:7.0f} +- {row['flux_ref_err'].value:3.0f}"
    ...           f"  (true {change:.0f})")
       -430 +- 127  (true -466)
       -655 +- 125  (true -473)
    """
    return photometry_prepared(
        result, positions, reference_psf, fit_shape=fit_shape, fixed_positions=fixed_positions,
        local_background=local_background, scale_factor=scale_factor,
        scale_factor_error=scale_factor_error, kernel=kernel, oversampling=oversampling,
        position_bounds=position_bounds)


def photometry_prepared(result, positions, reference_psf, *, pixels=None, target=None,
                        fit_shape=None, fixed_positions=True, local_background=False,
                        scale_factor=None, scale_factor_error=None, kernel=None,
                        oversampling=4, position_bounds=1.0):
    """
    `differential_photometry`, with inputs its caller computed already (private).

    ``pixels`` is ``_pixels(difference)`` of the difference image as it is
    now, ``target`` the target PSF that `differential_photometry` makes,
    ``target_psf(reference_psf, kernel, oversampling=oversampling)`` of the
    kernel it uses (the fit's, or ``kernel``; with a spatially varying
    kernel it sets the box, the local PSFs being made here); a
    ``fit_shape`` of the automatic size gives the same box without
    rendering the PSF again.
    """
    fit, difference, scale_factor, scale_factor_error, kernel, local = _difference_inputs(
        result, scale_factor, scale_factor_error, kernel)
    data, error, bad = _pixels(difference) if pixels is None else pixels
    ids, x, y, skycoord = position_table(positions, getattr(difference, "wcs", None))
    _check_psf_model(reference_psf)
    psf = target_psf(reference_psf, kernel, oversampling=oversampling) if target is None else target
    box = _fit_shape(fit_shape, psf)
    if local:
        scale_factor, scale_factor_error = _local_scale_factors(fit, x, y)
    flags, n_good = _footprints(x, y, data.shape, box, bad)
    n_free = 1 + (0 if fixed_positions else 2) + (1 if local_background is True else 0)
    too_few = (n_good > 0) & (n_good <= n_free)
    flags[too_few] |= PHOTOMETRY_FLAGS["too_few_pixels"]
    measured = np.flatnonzero(n_good > n_free)

    n = x.size
    flux, flux_err = np.full(n, np.nan), np.full(n, np.nan)
    x_out, y_out = x.copy(), y.copy()
    extra = {name: np.full(n, np.nan) for name in ("reduced_chi2", "qfit", "cfit")}
    extra["n_pixels"] = n_good.copy()
    background = np.full(n, np.nan) if local_background is not False else None
    # One photutils fit for all sources, or one per source with its local
    # target PSF when the kernel varies over the image.
    groups = ([(psf, measured)] if not local else
              [(target_psf(reference_psf, fit.kernel_at(x[i], y[i]),
                           oversampling=oversampling), np.array([i])) for i in measured])
    for group_psf, members in groups:
        if not members.size:
            continue
        fitted = _fit_group(group_psf, data, error, bad, x[members], y[members], box,
                            local_background, fixed_positions, position_bounds)
        flux[members] = np.asarray(fitted["flux_fit"], dtype=float)
        flux_err[members] = np.asarray(fitted["flux_err"], dtype=float)
        x_out[members] = np.asarray(fitted["x_fit"], dtype=float)
        y_out[members] = np.asarray(fitted["y_fit"], dtype=float)
        for name in ("reduced_chi2", "qfit", "cfit"):
            extra[name][members] = np.asarray(fitted[name], dtype=float)
        extra["n_pixels"][members] = np.asarray(fitted["n_pixels_fit"], dtype=int)
        flags[members] |= np.asarray(fitted["flags"], dtype=np.int64) & ~_NEGATIVE_FLUX
        if local_background is True:
            background[members] = np.asarray(fitted["amplitude_1_fit"], dtype=float)
        elif background is not None:
            background[members] = np.asarray(getattr(fitted["local_bkg"], "value",
                                                     fitted["local_bkg"]), dtype=float)
    unit = _unit(difference)
    if background is not None:
        extra = {"local_bkg": background * unit, **extra}
    return _table(ids, x_out, y_out, skycoord, flux, flux_err, scale_factor,
                  scale_factor_error, unit, extra, flags,
                  dict(method="psf", fit_shape=box, fixed_positions=bool(fixed_positions)))


def _fit_group(psf, data, error, bad, x, y, box, local_background, fixed_positions,
               position_bounds):
    """PSF photometry of sources that share one PSF model.

    Fixed positions without a background term make a linear fit, solved
    directly (`fit_fixed_positions`, blends jointly); otherwise photutils
    fits each source.
    """
    from photutils.psf import PSFPhotometry

    if fixed_positions and local_background is False:
        fitted = fit_fixed_positions(psf, data, error, bad, x, y, box)
        return {"flux_fit": fitted["flux"], "flux_err": fitted["flux_err"], "x_fit": x,
                "y_fit": y, "n_pixels_fit": fitted["n_pixels"], "flags": fitted["flags"],
                **{name: fitted[name] for name in ("reduced_chi2", "qfit", "cfit")}}

    model = _psf_model(psf, local_background, fixed_positions)
    init = QTable({"x": x, "y": y,
                   "flux": _initial_fluxes(psf, data, error, bad, x, y, box)})
    photometry = PSFPhotometry(
        model, box, xy_bounds=None if fixed_positions else float(position_bounds),
        local_bkg_estimator=(None if isinstance(local_background, bool)
                             else local_background))
    with warnings.catch_warnings():
        # Non-convergence is recorded in the flags (bit 8); a reduced chi^2 on
        # zero degrees of freedom divides by zero and is left NaN.
        warnings.filterwarnings("ignore", category=AstropyUserWarning,
                                message=".*(converge|fit_info).*")
        warnings.filterwarnings("ignore", category=RuntimeWarning,
                                message=".*(divide by zero|invalid value).*")
        return photometry(data, mask=bad, error=error, init_params=init)


def _local_scale_factors(fit, x, y):
    """P and sigma_P at each source position of a spatially varying fit."""
    scale_factor = np.atleast_1d(fit.scale_factor_at(x, y))
    error = fit.scale_factor_error_at(x, y)
    return scale_factor, (None if error is None else np.atleast_1d(error))
