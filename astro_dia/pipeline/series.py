"""
A night of frames, from calibrated frames to light curves: `process_series`.

The frames are registered to a reference (built from the sharpest of them
with `~astro_dia.reference.build_reference`, or given), differenced
against it (`~astro_dia.batch.fit_many`, on dask with ``workers``),
searched for what changed (`~astro_dia.detection.find_transients`, grouped
across epochs, with a stacked significance), and measured by PSF
photometry with the reference's effective PSF at the reference's stars and
at the candidates. Everything is written to one folder; `SeriesResult`
holds the tables. See :ref:`night`.
"""

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy.table import QTable, vstack
from astropy.utils.exceptions import AstropyUserWarning

from ..batch import fit_many
from ..exceptions import KernelFitWarning, NoiseModelWarning, SaturationWarning
from ..detection.candidates import transients_in
from ..detection.significance import compute_significance
from ..photometry.measure import photometry_prepared
from ..reference import build_reference
from ..result.io import read_result
from ._across_epochs import StackedSignificance, group_candidates
from ._epochs import read_frames, register_frames
from ._line_defects import mask_line_defects
from ..photometry._psf_stars import reference_sources
from ._light_curves import (apply_ensemble_scale, ensemble_error_scale, ensemble_scale,
                            rank_variability, reference_fluxes, reference_sky, series_psf,
                            variability)

__all__ = ["process_series", "SeriesResult"]

#: Fewest epochs without a defect flag for a candidate to get a light curve.
MIN_CLEAN_EPOCHS = 2
#: A reference star peaking above this fraction of ``saturation`` counts as saturated: the
#: reference averages its frames, and a sharper frame's core peaks higher (on the pyDIA
#: night, 3.9 px frames against a 4.6 px reference: 1.4 times; a star at 88% of the level
#: in the reference left residuals of 2e6 adu in its light curve).
SATURATED_FRACTION = 0.5
#: Sources within this many FWHM of a star saturated in the reference are near_saturated.
SATURATED_RADIUS = 4.0


@dataclass
class SeriesResult:
    """
    What `process_series` made, and where it wrote it.

    Attributes
    ----------
    output_dir : str
        The folder of the outputs.
    reference : `~astropy.nddata.CCDData`
        The reference (``reference.fits``).
    frames : `~astropy.table.QTable`
        One row per frame (``frames.ecsv``): ``epoch``, ``name``, ``time``
        (MJD), the registration (``reg_nstars``, ``reg_rms``, ``shift_x``,
        ``shift_y``), the fit (``scale_factor``, ``scale_factor_err``,
        ``output``), ``ensemble_scale`` and ``ensemble_scale_err`` (the
        epoch's scale error measured on the reference's stars, corrected in
        the light curves), ``error_scale`` (the factor on its photometric
        errors from the same stars' scatter), ``line_defects`` (rows and
        columns of the difference masked for a band across the image: a
        smear from a saturated star, a bad row or column of the frame),
        ``quality`` (the fit-quality causes the guard found,
        see :ref:`fit_quality`, and ``UNCONVERGED`` for a fit that stopped at
        its iteration limit; their warnings are not repeated per frame)
        and ``error`` (empty for a frame that went through).
    candidates : `~astropy.table.QTable`
        The sources of change (``candidates.ecsv``), one row per source:
        see ``astro_dia.pipeline._across_epochs.group_candidates``, plus
        ``id`` (the light curve's: a reference star's when it is on one;
        0, no light curve, for a candidate seen at fewer than two epochs
        without a defect flag) and ``on_star``.
    light_curves : `~astropy.table.QTable`
        One row per source and epoch (``light_curves.ecsv``): ``id``,
        ``kind`` (``'star'`` or ``'candidate'``), ``x``, ``y`` (reference
        pixels), ``epoch``, ``time`` (MJD), ``flux``, ``flux_err``
        (differential, on the reference's photometric scale, recalibrated on
        the reference's stars, see :ref:`night`), ``ensemble_scale``,
        ``flags``
        (``astro_dia.photometry.PHOTOMETRY_FLAGS``), ``reference_flux``,
        ``reference_flux_err`` (the source in the reference, by the same
        PSF): total flux = ``reference_flux + flux``.
    variability : `~astropy.table.QTable`
        Per source (``variability.ecsv``): ``id``, ``kind``,
        ``n_good``, ``mean_flux``, ``chi2_dof`` (about the weighted mean),
        ``chi2_robust`` (without the most deviant epoch), ``amplitude`` and
        ``near_saturated`` (within 4 FWHM of a star saturated in the
        reference: its light curve holds that star's residuals) and
        ``mostly_masked`` (clean at fewer than half the epochs), most
        variable (by ``chi2_robust``) first, then the mostly masked, those
        near saturated stars last.
    psf_kind : str
        ``'epsf'`` (built from the reference) or ``'gaussian'``.
    """

    output_dir: str
    reference: object = field(repr=False)
    frames: object = field(repr=False)
    candidates: object = field(repr=False)
    light_curves: object = field(repr=False)
    variability: object = field(repr=False)
    psf_kind: str = "epsf"


#: In ``frames['quality']``: the fit stopped at its iteration limit (``DIA_CONV`` false).
UNCONVERGED = "UNCONVERGED"


def _detect(outcomes, psf, threshold, shape, frames):
    """Candidates of every differenced epoch and their stacked significance.

    Also copies each fit's fit-quality causes (and `UNCONVERGED`) into ``frames['quality']``,
    and returns for the photometry the line defects masked at each epoch
    (`mask_line_defects`) and its matched filter (whose target PSF the
    photometry fits).
    """
    stack = StackedSignificance(shape)
    tables = []
    lines, filters = {}, {}
    for epoch, outcome in outcomes:
        result = read_result(outcome.output, wcs=False)
        causes = list((getattr(result, "quality", None) or {}).get("causes", ()))
        if not result.converged:
            causes.append(UNCONVERGED)    # its ConvergenceWarning is not repeated per frame
        frames["quality"][epoch] = ",".join(causes)
        lines[epoch] = mask_line_defects(result)
        frames["line_defects"][epoch] = sum(len(found) for found in lines[epoch])
        with warnings.catch_warnings():
            # The scatter of S is said once for the series (frames.ecsv), not per frame.
            warnings.simplefilter("ignore", AstropyUserWarning)
            # The significance image, computed once for the stack and the search.
            computed = compute_significance(result, psf)
            table = transients_in(result, computed, threshold)
        stack.add(computed.significance)
        filters[epoch] = computed.psf_filter
        keep = [name for name in ("x", "y", "snr", "flags", "sign") if name in table.colnames]
        table = QTable(table[keep])
        table["epoch"] = np.full(len(table), epoch)
        tables.append(table)
    detections = (vstack(tables, metadata_conflicts="silent") if tables
                  else QTable({"x": [], "y": [], "snr": [], "flags": [], "epoch": []}))
    return detections, stack, lines, filters


def _sources(stars, candidates, radius, saturated_radius):
    """
    Light-curve sources: the stars, then the candidates seen at two clean epochs on no star.

    A candidate within ``radius`` of a star is that star. A candidate seen
    at fewer than ``MIN_CLEAN_EPOCHS`` epochs without a defect flag gets no
    light curve of its own (``id`` 0): one cosmic ray, one satellite. A
    source within ``saturated_radius`` of a star saturated in the reference
    is marked ``near_saturated``: its light curve holds the saturated
    star's residuals.
    """
    star_x, star_y = np.asarray(stars["x"], float), np.asarray(stars["y"], float)
    saturated = np.asarray(stars["saturated"], bool)
    x, y = list(star_x), list(star_y)
    kind = ["star"] * len(x)
    ids, on_star = [], []
    for cx, cy, clean in zip(np.asarray(candidates["x"], float),
                             np.asarray(candidates["y"], float),
                             np.asarray(candidates["n_clean"], int)):
        distance = np.hypot(star_x - cx, star_y - cy)
        if len(distance) and distance.min() <= radius:
            ids.append(int(np.argmin(distance)) + 1)
            on_star.append(True)
        elif clean >= MIN_CLEAN_EPOCHS:
            x.append(cx)
            y.append(cy)
            kind.append("candidate")
            ids.append(len(x))
            on_star.append(False)
        else:
            ids.append(0)
            on_star.append(False)
    x, y = np.array(x), np.array(y)
    near = np.zeros(len(x), bool)
    for sx, sy in zip(star_x[saturated], star_y[saturated]):
        near |= np.hypot(x - sx, y - sy) <= saturated_radius
    sources = QTable({"id": np.arange(1, len(x) + 1), "x": x, "y": y, "kind": kind,
                      "near_saturated": near})
    return sources, np.array(ids, int), np.array(on_star, bool)


def _measure(outcomes, frames, sources, psf, reference_flux, reference_flux_err, lines,
             filters):
    """
    PSF photometry of every source on every differenced epoch, one long table.

    As `~astro_dia.photometry.differential_photometry` measures them;
    ``filters``: each epoch's matched filter from `_detect`, whose target
    PSF (``psf`` convolved with the epoch's kernel) is the photometry's.
    """
    rows = []
    for epoch, outcome in outcomes:
        result = read_result(outcome.output, model=False, wcs=False)
        mask_line_defects(result, lines[epoch])
        target = filters[epoch].photometry_target
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            table = photometry_prepared(
                result, sources[["id", "x", "y"]], psf, target=target,
                fit_shape=None if target is None else filters[epoch].fit_box)
        out = QTable()
        out["id"] = np.asarray(sources["id"])
        out["kind"] = sources["kind"]
        out["x"] = np.asarray(sources["x"])
        out["y"] = np.asarray(sources["y"])
        out["epoch"] = np.full(len(sources), epoch)
        out["time"] = np.full(len(sources), frames["time"][epoch])
        out["flux"] = np.asarray(getattr(table["flux_ref"], "value", table["flux_ref"]), float)
        out["flux_err"] = np.asarray(getattr(table["flux_ref_err"], "value",
                                             table["flux_ref_err"]), float)
        out["flags"] = np.asarray(table["flags"], np.int64)
        out["reference_flux"] = reference_flux
        out["reference_flux_err"] = reference_flux_err
        rows.append(out)
    if not rows:
        return QTable({"id": [], "kind": [], "x": [], "y": [], "epoch": [], "time": [],
                       "flux": [], "flux_err": [], "flags": [], "reference_flux": [],
                       "reference_flux_err": []})
    table = vstack(rows, metadata_conflicts="silent")
    table.sort(["id", "epoch"])
    return table


def process_series(frames, output_dir, *, reference=None, imager=None, unit=None,
                   n_reference_frames=None, registration="auto", saturation=None,
                   workers=None, threshold=5.0, max_sources=300, match_radius=None,
                   plots=True, n_plots=6, overwrite=False, progress=True):
    """
    From a series of calibrated frames to a reference, difference images and light curves.

    Parameters
    ----------
    frames : sequence of `~astropy.nddata.CCDData` or FITS paths
        Calibrated frames of one field, each with an observation time
        (``DATE-OBS`` or ``MJD-OBS``); they need not be aligned.
    output_dir : str or path-like
        Folder for the outputs (created): ``reference.fits``,
        ``registered/`` (the frames on the reference's grid),
        ``differences/`` (one result file per frame),
        ``frames.ecsv``, ``candidates.ecsv``, ``light_curves.ecsv``,
        ``variability.ecsv`` and, with ``plots``, ``light_curves.png``.
    reference : `~astropy.nddata.CCDData` or path, optional
        The reference; by default built from the frames with
        `~astro_dia.reference.build_reference` (``n_reference_frames``).
    imager : `~astro_dia.DifferenceImager`, optional
        The configured imager (default ``DifferenceImager()``: gain and read
        noise from the headers).
    unit : str or `~astropy.units.Unit`, optional
        Unit of FITS files without BUNIT.
    n_reference_frames : int, optional
        Frames combined into the reference (see ``build_reference``).
    registration : {'auto', 'wcs', 'stars'}, optional
        Registration method (`~astro_dia.registration.register`). A frame
        that is a translation of the reference is shifted by whole pixels
        (the rest is left to the kernel); others are resampled.
    saturation : float, optional
        Saturation level in the frames' unit, for star selection and the
        reference (the imager has its own ``saturation``).
    workers : int, optional
        Difference on a local dask cluster of this many workers.
    threshold : float, optional
        Detection threshold on ``|S/N|`` at each epoch.
    max_sources : int, optional
        Reference stars measured (the brightest).
    match_radius : float, optional
        Detections closer than this (pixels) are one source; by default the
        reference's FWHM.
    plots : bool, optional
        Plot the ``n_plots`` most variable light curves (needs matplotlib).
    overwrite : bool, optional
        Replace the outputs of an earlier run.
    progress : bool, optional
        Show progress bars.

    Returns
    -------
    `SeriesResult`

    Raises
    ------
    ValueError
        For no frames, a frame without an observation time, or no frame
        left after registration.
    """
    from ..core import DifferenceImager

    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    imager = DifferenceImager() if imager is None else imager
    epochs = read_frames(frames, unit)
    reference_path = os.path.join(output_dir, "reference.fits")
    if reference is None:
        reference = build_reference([epoch.image for epoch in epochs],
                                    n_frames=n_reference_frames, method=registration,
                                    names=[epoch.name for epoch in epochs],
                                    saturation=saturation)
    elif not hasattr(reference, "data"):
        from ..result.io import read_image
        reference = read_image(reference, unit=unit, what="reference")
    reference.write(reference_path, overwrite=overwrite)
    table, reference_stars = register_frames(
        epochs, reference, os.path.join(output_dir, "registered"), method=registration,
        overwrite=overwrite, progress=progress)
    registered = [epoch for epoch in epochs if epoch.error is None]
    if not registered:
        table.write(os.path.join(output_dir, "frames.ecsv"), overwrite=True)
        raise ValueError(f"no frame could be registered to the reference (the first error: "
                         f"{table['error'][0]}); see {os.path.join(output_dir, 'frames.ecsv')}")
    with warnings.catch_warnings():
        # Said once per series, not per frame: each result file records the
        # guard's causes (DIA_QUAL), copied into the frames table below.
        warnings.simplefilter("ignore", KernelFitWarning)
        warnings.simplefilter("ignore", NoiseModelWarning)
        warnings.simplefilter("ignore", SaturationWarning)
        outcomes = fit_many(imager, reference_path,
                            [epoch.registered for epoch in registered],
                            output_dir=os.path.join(output_dir, "differences"),
                            overwrite=overwrite, unit=unit, keep_results=False,
                            progress=progress, workers=workers)
    done = []
    for epoch, outcome in zip(registered, outcomes):
        row = epoch.index
        table["scale_factor"][row] = outcome.scale_factor
        table["scale_factor_err"][row] = outcome.scale_factor_err
        table["output"][row] = outcome.output or ""
        if outcome.ok:
            done.append((row, outcome))
        else:
            table["error"][row] = outcome.error
    table.write(os.path.join(output_dir, "frames.ecsv"), overwrite=True)
    if not done:
        first = next(error for error in table["error"] if error)
        raise ValueError(f"no frame could be differenced (the first error: {first}); see "
                         f"{os.path.join(output_dir, 'frames.ecsv')}")

    fwhm = (float(reference.header.get("REFFWHM", 0) or 0)
            or _measured_fwhm(reference, reference_stars))
    stars = reference_sources(reference, fwhm, max_sources=max_sources, saturation=saturation,
                              saturated_fraction=SATURATED_FRACTION)
    sky = reference_sky(reference)
    psf, psf_kind = series_psf(reference, stars, fwhm, sky=sky)
    table["quality"] = np.array([""] * len(table), dtype=object)
    table["line_defects"] = np.zeros(len(table), int)
    detections, stack, lines, filters = _detect(done, psf, threshold, reference.shape, table)
    table.write(os.path.join(output_dir, "frames.ecsv"), overwrite=True)
    candidates = group_candidates(detections, fwhm if match_radius is None else match_radius,
                                  stack)
    sources, candidate_ids, on_star = _sources(stars, candidates, fwhm,
                                               SATURATED_RADIUS * fwhm)
    candidates["id"] = candidate_ids
    candidates["on_star"] = on_star
    flux, flux_err = reference_fluxes(reference, sources["x"], sources["y"], psf, fwhm, sky=sky)
    light_curves = _measure(done, table, sources, psf, flux, flux_err, lines, filters)
    calibrators = sources["id"][(sources["kind"] == "star") & ~sources["near_saturated"]]
    scale, scale_err = ensemble_scale(light_curves, np.asarray(calibrators), len(table))
    apply_ensemble_scale(light_curves, scale, scale_err)
    factor = ensemble_error_scale(light_curves, np.asarray(calibrators), len(table))
    light_curves["flux_err"] = light_curves["flux_err"] * factor[np.asarray(
        light_curves["epoch"], int)]
    table["ensemble_scale"] = scale
    table["ensemble_scale_err"] = scale_err
    table["error_scale"] = factor
    table.write(os.path.join(output_dir, "frames.ecsv"), overwrite=True)
    summary = variability(light_curves, np.asarray(sources["id"]))
    summary["kind"] = sources["kind"]
    summary["near_saturated"] = sources["near_saturated"]
    summary = rank_variability(summary, len(table))
    for name, output in (("candidates", candidates), ("light_curves", light_curves),
                         ("variability", summary)):
        output.meta["psf"] = psf_kind
        output.write(os.path.join(output_dir, f"{name}.ecsv"), overwrite=True)
    if plots:
        from ._series_plots import plot_light_curves

        plot_light_curves(light_curves, summary, os.path.join(output_dir, "light_curves.png"),
                          n_plots=n_plots)
    return SeriesResult(output_dir=output_dir, reference=reference, frames=table,
                        candidates=candidates, light_curves=light_curves,
                        variability=summary, psf_kind=psf_kind)


def _measured_fwhm(reference, reference_stars=None):
    """
    The reference's FWHM as `~astro_dia.reference.frame_statistics` measures it.

    The registration's `~astro_dia.registration.ReferenceStars` measured it
    already, with the same star finder and settings, unless the reference's
    saturation level differs between them (a SATLEVEL card without
    SATURATE, which only the registration reads).
    """
    meta = reference.meta or {}
    if reference_stars is not None and ("SATURATE" in meta or "SATLEVEL" not in meta):
        return float(reference_stars.fwhm)
    from ..reference import frame_statistics

    return float(frame_statistics([reference])["fwhm"][0])
