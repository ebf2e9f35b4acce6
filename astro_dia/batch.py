"""
Difference many target frames against one reference, in turn or on a dask cluster.

`fit_many` applies one configured `~astro_dia.DifferenceImager` to a night
of frames: `~astropy.nddata.CCDData` objects, FITS paths or a
`ccdproc.ImageFileCollection`. The reference is read and validated once.
A frame that cannot be differenced does not stop the batch: its
`FrameOutcome` holds the error message instead of a result.
`summary_table` puts the outcomes in one table.

With ``workers=N`` or ``scheduler=ADDRESS`` the frames are spread over a
`dask.distributed <https://distributed.dask.org>`_ cluster (an optional
dependency: ``pip install "astro_dia[dask]"``). The workers then read the
reference and the targets from their paths and write the results to
``output_dir`` themselves; only file names and a few numbers per frame
travel through the client.
"""

import functools
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
from astropy.nddata import NDData
from astropy.table import QTable
from astropy.utils.console import ProgressBar

from .result.io import read_image, write_result

__all__ = ["FrameOutcome", "fit_many", "summary_table", "RESULT_SUFFIX", "PLOT_SUFFIX"]

log = logging.getLogger(__name__)

#: Ending of the result file written for each target (``night1_042_diff.fits``).
RESULT_SUFFIX = "_diff.fits"

#: Ending of the diagnostic figure written for each target with ``plots=True``.
PLOT_SUFFIX = "_diff.png"

_DASK_HINT = 'pip install "astro_dia[dask]"'


@dataclass
class FrameOutcome:
    """
    What became of one target frame in `fit_many`.

    Attributes
    ----------
    name : str
        The target's file name, or ``'frame N'`` (0-based) for an in-memory
        image.
    target : str or None
        Path of the target file, None for an in-memory image.
    output : str or None
        Path of the result file written by `~astro_dia.io.write_result`,
        None if none was written.
    plot : str or None
        Path of the diagnostic figure, None if none was written.
    result : `~astro_dia.DifferenceResult` or None
        The fit result, when the fit ran in this process and
        ``keep_results`` was true; read it back from ``output`` otherwise.
    error : str or None
        ``'ExceptionType: message'`` if the frame failed, else None.
    scale_factor, scale_factor_err : float
        P and sigma_P (NaN for a failure, or sigma_P without errors).
    background_offset, background_offset_err : float
        B0 and sigma_B0 in ``unit``.
    unit : str
        Unit of the target data (and of B0).
    n_iterations : int
        Solver iterations (-1 for a failure).
    converged : bool
        Whether the solver converged.
    fit_time : float
        Seconds spent fitting.
    """

    name: str
    target: object = None
    output: object = None
    plot: object = None
    result: object = field(default=None, repr=False)
    error: object = None
    scale_factor: float = np.nan
    scale_factor_err: float = np.nan
    background_offset: float = np.nan
    background_offset_err: float = np.nan
    unit: str = ""
    n_iterations: int = -1
    converged: bool = False
    fit_time: float = np.nan

    @property
    def ok(self):
        """True if the frame was differenced."""
        return self.error is None


def fit_many(imager, reference, targets, *, output_dir=None, overwrite=False, plots=False,
             unit=None, keep_results=True, progress=True, workers=None, scheduler=None,
             cluster_options=None):
    """
    Difference many targets against one reference with one imager.

    Parameters
    ----------
    imager : `~astro_dia.DifferenceImager`
        The configured imager; its settings apply to every frame.
    reference : `~astropy.nddata.CCDData` or str or path-like
        The reference image, or its FITS file. It is read and validated
        once, before any target; a bad reference raises at once.
    targets : iterable of `~astropy.nddata.CCDData` or paths, or `ccdproc.ImageFileCollection`
        The target frames: images, FITS paths, or a collection (its
        current selection, e.g. after ``collection.filter(imagetyp='light')``).
    output_dir : str or path-like, optional
        Directory (created if needed) for one result file per target,
        ``<name>_diff.fits`` (see `~astro_dia.io.write_result`), and the
        figures of ``plots``. Required with ``workers`` or ``scheduler``.
    overwrite : bool, optional
        Replace existing result files. Without it an existing file makes
        that frame fail.
    plots : bool, optional
        Also write a diagnostic PNG per target, ``<name>_diff.png`` (see
        `~astro_dia.plotting.plot_result`; needs matplotlib and
        ``output_dir``).
    unit : `~astropy.units.Unit` or str, optional
        Unit of FITS files without a BUNIT keyword.
    keep_results : bool, optional
        Keep each `~astro_dia.DifferenceResult` in its outcome (default).
        Set it false for long series written to ``output_dir``, to bound
        the memory used. Results computed on a cluster are never kept.
    progress : bool or file-like, optional
        Show an `astropy.utils.console.ProgressBar` on standard output
        (True, the default; it is silent when the output is not a
        terminal), on the given file, or not at all (False).
    workers : int, optional
        Run on a new ``dask.distributed.LocalCluster`` of this many workers.
    scheduler : str or ``dask.distributed.Client``, optional
        Run on an existing dask cluster: a scheduler address such as
        ``'tcp://10.0.0.1:8786'``, or a connected Client. The workers must
        see the same paths as this process.
    cluster_options : dict, optional
        Keyword arguments of ``dask.distributed.LocalCluster`` (default:
        one thread per worker, worker processes, no dashboard).

    Returns
    -------
    outcomes : list of `FrameOutcome`
        One per target, in the order of ``targets``; failed frames have
        ``error`` set and no result.

    Raises
    ------
    TypeError
        If ``imager`` is not a DifferenceImager (has no ``fit`` method), or
        a target is neither an image nor a path.
    ValueError
        If there are no targets, two targets would write the same result
        file, or a cluster is asked for without ``output_dir`` or with
        in-memory images.
    OSError
        If the reference file is missing or unreadable.
    ImportError
        If a cluster is asked for and dask.distributed is not installed.

    See Also
    --------
    summary_table : the outcomes as a table.

    Examples
    --------
    >>> from astro_dia import DifferenceImager
    >>> from astro_dia.batch import fit_many, summary_table
    >>> from astro_dia.simulate import make_image_pair
    >>> reference, target, truth = make_image_pair(shape=(48, 48), density=100, seed=4)
    >>> imager = DifferenceImager(kernel_size=7, flat=1, sky=0)
    >>> outcomes = fit_many(imager, reference, [target, "missing.fits"], progress=False)
    >>> [outcome.ok for outcome in outcomes]
    [True, False]
    >>> outcomes[1].error
    "OSError: the target file '...missing.fits' does not exist"
    >>> print(f"{summary_table(outcomes)['scale_factor'][0]:.1f}")
    1.0
    """
    # Recognised by its fit method, not by its class: the imager's fit_many calls this
    # function, so importing the imager here would close an import cycle.
    if not callable(getattr(imager, "fit", None)):
        raise TypeError(f"imager must be a DifferenceImager, got {type(imager).__name__}")
    items = _target_items(targets)
    distributed = workers is not None or scheduler is not None
    if plots and output_dir is None:
        raise ValueError("plots=True writes PNG files, so it needs output_dir")
    if distributed:
        if output_dir is None:
            raise ValueError("on a dask cluster the workers write the results to files: "
                             "give output_dir")
        if not isinstance(reference, (str, os.PathLike)) or any(
                path is None for _, path, _ in items):
            raise ValueError("on a dask cluster the workers read the frames from files: give "
                             "the reference and the targets as FITS paths")
    if output_dir is not None:
        output_dir = os.fspath(output_dir)
        os.makedirs(output_dir, exist_ok=True)
    jobs = _jobs(items, output_dir, plots)
    if distributed:
        reference_path = os.path.abspath(os.fspath(reference))
        _validate_reference(_cached_reference(*_file_key(reference_path), unit))
        return _run_dask(imager, reference_path, jobs, unit, overwrite, progress,
                         workers, scheduler, cluster_options)
    if isinstance(reference, NDData):
        reference_image = reference
    else:
        reference_image = read_image(reference, unit=unit, what="reference")
    _validate_reference(reference_image)
    outcomes = []
    with _progress_bar(len(jobs), progress) as bar:
        for job in jobs:
            outcomes.append(_process(imager, reference_image, job, unit, overwrite,
                                     keep_results))
            bar.update()
    return outcomes


def summary_table(outcomes):
    """
    The outcomes of `fit_many` as a table, one row per frame.

    Parameters
    ----------
    outcomes : list of `FrameOutcome`

    Returns
    -------
    table : `~astropy.table.QTable`
        Columns ``name``, ``ok``, ``scale_factor``, ``scale_factor_err``,
        ``background_offset``, ``background_offset_err``, ``unit``,
        ``n_iterations``, ``converged``, ``fit_time`` (s), ``output`` and
        ``error`` (empty for a success).
    """
    outcomes = list(outcomes)
    for outcome in outcomes:
        if not isinstance(outcome, FrameOutcome):
            raise TypeError(f"outcomes must be FrameOutcome objects from fit_many, got "
                            f"{type(outcome).__name__}")
    columns = ("scale_factor", "scale_factor_err", "background_offset",
               "background_offset_err", "fit_time")
    table = QTable()
    table["name"] = [outcome.name for outcome in outcomes]
    table["ok"] = np.array([outcome.ok for outcome in outcomes], dtype=bool)
    for column in columns:
        table[column] = np.array([getattr(outcome, column) for outcome in outcomes], float)
    table["unit"] = [outcome.unit for outcome in outcomes]
    table["n_iterations"] = np.array([outcome.n_iterations for outcome in outcomes], int)
    table["converged"] = np.array([outcome.converged for outcome in outcomes], dtype=bool)
    table["output"] = [outcome.output or "" for outcome in outcomes]
    table["error"] = [outcome.error or "" for outcome in outcomes]
    return table


# -- the work of one frame -----------------------------------------------------

@dataclass
class _Job:
    index: int
    name: str
    image: object
    path: object
    output: object
    plot: object


def _target_items(targets):
    """``[(name, path or None, image or None)]`` from images, paths or a collection."""
    if hasattr(targets, "files_filtered") and hasattr(targets, "location"):
        files = targets.files
        if files is None:
            files = []
        targets = [os.path.join(targets.location, name) for name in files]
    elif isinstance(targets, (str, os.PathLike, NDData)):
        targets = [targets]
    items = []
    for index, target in enumerate(targets):
        if isinstance(target, NDData):
            items.append((f"frame {index}", None, target))
        elif isinstance(target, (str, os.PathLike)):
            path = os.fspath(target)
            items.append((os.path.basename(path), os.path.abspath(path), None))
        else:
            raise TypeError(f"each target must be a CCDData or a FITS path, got "
                            f"{type(target).__name__} at position {index}")
    if not items:
        raise ValueError("there are no targets to difference")
    return items


def _jobs(items, output_dir, plots):
    jobs, outputs = [], {}
    for index, (name, path, image) in enumerate(items):
        output = plot = None
        if output_dir is not None:
            stem = _stem(name) if path is not None else f"frame_{index:04d}"
            output = os.path.abspath(os.path.join(output_dir, stem + RESULT_SUFFIX))
            if output in outputs:
                raise ValueError(f"targets {outputs[output]!r} and {name!r} would both write "
                                 f"{output!r}; give the targets distinct file names")
            outputs[output] = name
            if path is not None and output == path:
                raise ValueError(f"the result file of {name!r} would overwrite it; choose "
                                 "another output_dir")
            if plots:
                plot = os.path.join(output_dir, stem + PLOT_SUFFIX)
        jobs.append(_Job(index, name, image, path, output, plot))
    return jobs


def _stem(name):
    for ending in (".fits.gz", ".fits.fz", ".fits", ".fit", ".fts"):
        if name.lower().endswith(ending):
            return name[:-len(ending)]
    return os.path.splitext(name)[0]


def _validate_reference(reference):
    """Fail before the first frame if the reference itself is unusable."""
    from .fitting._validation import as_image

    as_image(reference, "reference")


def _process(imager, reference, job, unit, overwrite, keep_result):
    """Fit one frame; never raises for a problem of that frame."""
    outcome = FrameOutcome(name=job.name, target=job.path)
    try:
        target = job.image
        if target is None:
            target = read_image(job.path, unit=unit, what="target")
        if job.output is not None and os.path.exists(job.output) and not overwrite:
            raise OSError(f"{job.output!r} exists; pass overwrite=True (--overwrite) to "
                          "replace it")
        result = imager.fit(reference, target)
        if job.output is not None:
            write_result(result, job.output, overwrite=overwrite)
            outcome.output = job.output
        if job.plot is not None:
            _write_plot(result, reference, target, job.plot)
            outcome.plot = job.plot
    except Exception as exc:  # a failed frame is recorded, not fatal
        outcome.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        log.info("%s failed: %s", job.name, outcome.error)
        return outcome
    data_unit = result.difference.unit
    outcome.scale_factor = float(result.scale_factor)
    outcome.background_offset = float(result.background_offset.to_value(data_unit))
    if result.scale_factor_error is not None:
        outcome.scale_factor_err = float(result.scale_factor_error)
        outcome.background_offset_err = float(result.background_error[0].to_value(data_unit))
    outcome.unit = data_unit.to_string()
    outcome.n_iterations = int(result.n_iterations)
    outcome.converged = bool(result.converged)
    outcome.fit_time = float(result.fit_time)
    if keep_result:
        outcome.result = result
    log.info("%s: P = %.5f, B0 = %.3f %s", job.name, outcome.scale_factor,
             outcome.background_offset, outcome.unit)
    return outcome


def _write_plot(result, reference, target, path):
    from .plotting import plot_result

    figure = plot_result(result, reference=reference, target=target)
    figure.savefig(path, dpi=80)


# -- dask ----------------------------------------------------------------------

def _file_key(path):
    """``(path, mtime, size)``: a cache key that changes when the file does."""
    status = os.stat(path)
    return path, status.st_mtime_ns, status.st_size


@functools.lru_cache(maxsize=4)
def _cached_reference(path, mtime_ns, size, unit):
    """The reference, read once per process (each dask worker keeps its own copy)."""
    return read_image(path, unit=unit, what="reference")


def _process_on_worker(imager, reference_path, job, unit, overwrite):
    """Task run by a dask worker: read, fit, write; return the outcome without the result."""
    try:
        reference = _cached_reference(*_file_key(reference_path), unit)
    except Exception as exc:
        return FrameOutcome(name=job.name, target=job.path,
                            error=f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    return _process(imager, reference, job, unit, overwrite, keep_result=False)


def _run_dask(imager, reference_path, jobs, unit, overwrite, progress, workers, scheduler,
              cluster_options):
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise ImportError("running fit_many on a cluster (workers= or scheduler=) needs "
                          f"dask.distributed: {_DASK_HINT}") from exc
    if workers is not None and scheduler is not None:
        raise ValueError("give workers (a new local cluster) or scheduler (an existing "
                         "one), not both")
    cluster = None
    if scheduler is None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) \
                or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        options = dict(n_workers=int(workers), threads_per_worker=1, processes=True,
                       dashboard_address=None)
        options.update(cluster_options or {})
        cluster = LocalCluster(**options)
        client = Client(cluster)
    elif isinstance(scheduler, Client):
        client = scheduler
    else:
        client = Client(scheduler)
    try:
        futures = {client.submit(_process_on_worker, imager, reference_path, job, unit,
                                 overwrite, pure=False): job for job in jobs}
        outcomes = {}
        with _progress_bar(len(jobs), progress) as bar:
            for future in as_completed(futures):
                job = futures[future]
                if future.status == "finished":
                    outcomes[job.index] = future.result()
                else:  # the worker itself failed (killed, out of memory, ...)
                    exc = future.exception()
                    outcomes[job.index] = FrameOutcome(
                        name=job.name, target=job.path,
                        error=f"{type(exc).__name__}: {' '.join(str(exc).split())}")
                bar.update()
    finally:
        if client is not scheduler:
            client.close()
        if cluster is not None:
            cluster.close()
    return [outcomes[job.index] for job in jobs]


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, value=None):
        pass


def _progress_bar(total, progress):
    if progress is False or progress is None:
        return _NoProgress()
    return ProgressBar(total, file=sys.stdout if progress is True else progress)
