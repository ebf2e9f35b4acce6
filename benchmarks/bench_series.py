"""
Throughput of ``astro-dia series`` against whole-process HOTPANTS runs.

Run by hand (not part of the test suite)::

    python benchmarks/bench_series.py [--n-frames 100] [--size 1000] [--shift 3]
                                      [--hotpants PATH] [--workdir DIR] [--keep]
                                      [--profile]

It simulates one star field observed ``--n-frames`` times
(`astro_dia.simulate.make_variable_series`: seeing, transparency and sky
change from frame to frame, the pointing moves by up to ``--shift`` pixels
in x and y, five stars vary) and writes the frames (float32 FITS with
DATE-OBS, MJD-OBS, GAIN, RDNOISE and BUNIT) and the simulated reference to
a scratch folder. Then it times, each as whole processes:

- ``series``: one run of ::

      astro-dia series FRAME... --reference ref.fits --out DIR \\
          --kernel-size 19 --flat 1 --no-plots

  (one process, no dask workers): every frame is read, registered to the
  reference (a whole-pixel shift here), written, differenced, searched
  and measured. The process is started with a ``sitecustomize`` module on
  its path that wraps the pipeline's steps in ``time.perf_counter`` calls
  (a few microseconds a call) and writes the sums when ``process_series`` returns: the
  breakdown.
- ``hotpants``: one HOTPANTS process per frame, on the same reference and
  the frames *as registered by the series run* (``DIR/registered/``, the
  very files our fits read), with the settings of
  ``bright_stars.run_hotpants``: kernel half-width ``K // 2`` (9), constant
  kernel and background (``-ko 0 -bgo 0``), the reference convolved
  (``-c t -n i``), gain and read noise of each image, a stamp grid of
  ``round(size / 128)`` per side. The frames keep their sky, so HOTPANTS
  computes its noise images itself (no ``-tni/-ini``); the upper limits
  ``-tu/-iu`` are raised above the brightest star (nothing is saturated).
  Each run is timed from start to exit (reading and writing FITS
  included); HOTPANTS's time excludes registration.

It prints total and per-frame seconds of both, their ratio, the CPU time
of each (user + system: above the wall time means more than one core was
busy) and the series' breakdown. ``--profile`` also runs
`astro_dia.pipeline.process_series` once in this process under cProfile
(a second full run) and prints the 30 most expensive functions.

Wait for a quiet machine first (``cat /proc/loadavg``); the figures are
for a shared 2-core machine, see ``docs/performance.rst``.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Loaded into the series process when ASTRO_DIA_BENCH_STEPS names a file:
# sums of time.perf_counter around the pipeline's steps, written at exit.
SITECUSTOMIZE = r'''
import os
if os.environ.get("ASTRO_DIA_BENCH_STEPS"):
    import functools, json, time
    _start = time.perf_counter()
    _sums, _counts = {}, {}
    _each = {"register": [], "DifferenceImager.fit": [], "differential_photometry": [],
             "photometry_prepared": [], "read_result": [], "_read_result_pixels": []}

    def _wrap(owner, name, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                _sums[label] = _sums.get(label, 0.0) + elapsed
                _counts[label] = _counts.get(label, 0) + 1
                if label in _each:
                    _each[label].append(elapsed)
        setattr(owner, name, timed)

    _sums["import"] = 0.0
    _t0 = time.perf_counter()
    import astro_dia.pipeline
    import astro_dia.pipeline.series as series
    import astro_dia.pipeline._epochs as epochs
    import astro_dia.batch as batch
    import astro_dia.core as core
    _sums["import"] = time.perf_counter() - _t0
    _wrap(astro_dia.pipeline, "process_series", "process_series")
    _timed_series = astro_dia.pipeline.process_series

    def _dumped(*args, **kwargs):
        # the console entry point leaves by os._exit (no atexit): write here
        try:
            return _timed_series(*args, **kwargs)
        finally:
            _dump()
    astro_dia.pipeline.process_series = _dumped
    for _name in ("read_frames", "register_frames", "fit_many", "reference_sources",
                  "reference_sky", "series_psf", "_detect", "group_candidates",
                  "reference_fluxes", "_measure", "variability", "read_result",
                  "_read_result_pixels", "compute_significance", "transients_in",
                  "differential_photometry", "photometry_prepared"):
        if hasattr(series, _name):     # the names of this version of the pipeline
            _wrap(series, _name, _name)
    _wrap(epochs, "_register_one", "register")
    _wrap(epochs, "_reference_stars", "registration reference stars")
    _wrap(batch, "read_image", "fit_many.read_image")
    _wrap(batch, "write_result", "fit_many.write_result")
    _wrap(core.DifferenceImager, "fit", "DifferenceImager.fit")

    def _dump():
        _sums["process (from startup)"] = time.perf_counter() - _start
        with open(os.environ["ASTRO_DIA_BENCH_STEPS"], "w") as handle:
            json.dump({"seconds": _sums, "calls": _counts, "each": _each}, handle)
'''


def simulate(folder, n_frames, size, shift, seed):
    """Write the frames and the reference; return (reference path, frame paths, truth)."""
    from astropy.io import fits

    from astro_dia.simulate import make_variable_series

    reference, targets, truth = make_variable_series(
        n_frames, shape=(size, size), n_variables=5, variable_flux=5000.0, amplitude=3000.0,
        shift=shift, kernel_sigma=(0.5, 2.0), scale_factor=(0.8, 1.2), seed=seed)
    os.makedirs(folder, exist_ok=True)

    def write(path, image):
        header = image.header.copy()
        header["BUNIT"] = "adu"
        fits.writeto(path, np.asarray(image.data, np.float32), header, overwrite=True)

    reference_path = os.path.join(folder, "ref.fits")
    write(reference_path, reference)
    paths = []
    for k, target in enumerate(targets):
        path = os.path.join(folder, f"frame_{k:03d}.fits")
        write(path, target)
        paths.append(path)
    peak = max(float(np.max(reference.data)), max(float(np.max(t.data)) for t in targets))
    return reference_path, paths, truth, peak


class LoadSampler:
    """The 1-minute load average every 10 s in a thread (the machine is shared)."""

    def __init__(self):
        import threading

        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(10.0):
            with open("/proc/loadavg") as handle:
                self.samples.append(float(handle.read().split()[0]))

    def stop(self):
        self._stop.set()
        self._thread.join()
        values = self.samples or [float("nan")]
        return f"1-min load during it: median {np.median(values):.2f}, max {max(values):.2f}"


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_series(reference_path, frame_paths, out, kernel_size, scratch):
    """One whole ``astro-dia series`` process; (wall s, cpu s, steps)."""
    site = os.path.join(scratch, "site")
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "sitecustomize.py"), "w") as handle:
        handle.write(SITECUSTOMIZE)
    steps_path = os.path.join(scratch, "steps.json")
    env = dict(os.environ, ASTRO_DIA_BENCH_STEPS=steps_path,
               PYTHONPATH=os.pathsep.join([site, REPO, os.environ.get("PYTHONPATH", "")]))
    command = ["astro-dia", "series", *frame_paths, "--reference", reference_path,
               "--out", out, "--kernel-size", str(kernel_size), "--flat", "1", "--no-plots"]
    if shutil.which("astro-dia") is None:
        command = [sys.executable, "-m", "astro_dia", *command[1:]]
    cpu0 = children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu = children_cpu() - cpu0
    print(proc.stdout.strip())
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"astro-dia series exited with {proc.returncode}")
    with open(steps_path) as handle:
        steps = json.load(handle)
    return wall, cpu, steps


def read_gain_rn(path):
    from astropy.io import fits

    header = fits.getheader(path)
    return float(header["GAIN"]), float(header["RDNOISE"])


def run_hotpants(binary, reference_path, frame_paths, out, kernel_size, size, upper):
    """One HOTPANTS process per frame; (total wall s, total cpu s, per-frame walls)."""
    os.makedirs(out, exist_ok=True)
    n_stamps = max(1, round(size / 128))
    tgain, trn = read_gain_rn(reference_path)
    walls, scales = [], []
    cpu0 = children_cpu()
    for path in frame_paths:
        igain, irn = read_gain_rn(path)
        diff = os.path.join(out, "diff_" + os.path.basename(path))
        command = [binary, "-inim", path, "-tmplim", reference_path, "-outim", diff,
                   "-tg", f"{tgain:.6g}", "-tr", f"{trn:.6g}", "-ig", f"{igain:.6g}",
                   "-ir", f"{irn:.6g}", "-tu", f"{upper:.6g}", "-iu", f"{upper:.6g}",
                   "-r", str(kernel_size // 2), "-ko", "0", "-bgo", "0",
                   "-nsx", str(n_stamps), "-nsy", str(n_stamps),
                   "-c", "t", "-n", "i", "-v", "0"]
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0 or not os.path.exists(diff):
            raise RuntimeError(f"hotpants failed on {path} ({proc.returncode}):\n"
                               f"{proc.stderr[-2000:]}")
    cpu = children_cpu() - cpu0
    from astropy.io import fits

    for path in frame_paths:
        header = fits.getheader(os.path.join(out, "diff_" + os.path.basename(path)))
        scales.append(float(header.get("KSUM00", np.nan)))
    return float(np.sum(walls)), cpu, walls, np.array(scales)


def print_breakdown(steps, wall, n_frames):
    seconds = steps["seconds"]

    def s(name):
        return seconds.get(name, 0.0)

    process = s("process (from startup)")
    rows = [
        ("start-up: interpreter, imports, arguments", wall - s("process_series")),
        ("  of which importing astro_dia + torch", s("import")),
        ("read frames (FITS)", s("read_frames")),
        ("registration: the reference's stars (once)", s("registration reference stars")),
        ("register (find stars, match, shift)", s("register")),
        ("write registered frames", s("register_frames") - s("register")
         - s("registration reference stars")),
        ("fit_many: read registered frame", s("fit_many.read_image")),
        ("fit_many: DifferenceImager.fit", s("DifferenceImager.fit")),
        ("fit_many: write result file", s("fit_many.write_result")),
        ("fit_many: rest (reference read, setup)",
         s("fit_many") - s("fit_many.read_image") - s("DifferenceImager.fit")
         - s("fit_many.write_result")),
        ("reference stars (once)", s("reference_sources")),
        ("reference sky (once)", s("reference_sky")),
        ("reference ePSF (once)", s("series_psf")),
        ("detection: read result files (in rest)", None),
        ("detection: significance image", s("compute_significance")),
        ("detection: candidates (find_transients)", s("transients_in")),
        ("detection: rest (stacking, line defects)", s("_detect") - s("compute_significance")
         - s("transients_in")),
        ("group candidates", s("group_candidates")),
        ("reference fluxes", s("reference_fluxes")),
        ("photometry: differential_photometry", s("differential_photometry")
         + s("photometry_prepared")),
        ("photometry: read result files (in rest)", None),
        ("photometry: rest (read results, tables)", s("_measure") - s("differential_photometry")
         - s("photometry_prepared")),
        ("variability", s("variability")),
    ]
    # The result files are read by _detect, then again by _measure: the first half of
    # the calls are the detection's.
    reads = [*steps.get("each", {}).get("read_result", []),
             *steps.get("each", {}).get("_read_result_pixels", [])]
    n_read = len(reads)
    labels = [label for label, _ in rows]
    rows[labels.index("detection: read result files (in rest)")] = (
        "detection: read result files (in rest)", float(np.sum(reads[:n_read // 2])))
    rows[labels.index("photometry: read result files (in rest)")] = (
        "photometry: read result files (in rest)", float(np.sum(reads[n_read // 2:])))
    accounted = sum(value for label, value in rows
                    if value is not None and not label.startswith(" ")
                    and "(in rest)" not in label)
    rows.append(("other (writing tables, reference copy)", wall - accounted))
    print(f"\nbreakdown of the series process ({wall:.1f} s wall; the steps' own clock "
          f"saw {process:.1f} s from start-up):")
    print(f"{'step':<44} {'s':>8} {'s/frame':>8} {'share':>6}")
    for label, value in rows:
        print(f"{label:<44} {value:8.1f} {value / n_frames:8.3f} {100 * value / wall:5.1f}%")
    for label, values in steps.get("each", {}).items():
        if values and label in ("register", "DifferenceImager.fit", "differential_photometry",
                                "photometry_prepared"):
            print(f"{label}: per frame median {np.median(values):.3f} s, min {min(values):.3f}, "
                  f"max {max(values):.3f} (a wide spread: the machine was busy for part of "
                  "the run)" if max(values) > 2 * np.median(values) else
                  f"{label}: per frame median {np.median(values):.3f} s, min {min(values):.3f}, "
                  f"max {max(values):.3f}")
    print(f"(result files: {n_read} reads, the first half in detection and the second in "
          "photometry; each counted in its step's 'rest')")


def profile(reference_path, frame_paths, out, kernel_size):
    import cProfile
    import pstats

    from astro_dia import DifferenceImager
    from astro_dia.pipeline import process_series

    imager = DifferenceImager(kernel_size=kernel_size, flat=1)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    process_series(frame_paths, out, reference=reference_path, imager=imager, plots=False,
                   overwrite=True, progress=False)
    profiler.disable()
    print(f"\ncProfile of process_series in this process: {time.perf_counter() - start:.1f} s")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=1000, help="side of the frames (pixels)")
    parser.add_argument("--shift", type=float, default=3.0,
                        help="largest pointing offset per axis (pixels; default %(default)s)")
    parser.add_argument("--kernel-size", type=int, default=19)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--hotpants", default=os.environ.get("HOTPANTS")
                        or "/work/hotpants-bin/hotpants", help="HOTPANTS binary")
    parser.add_argument("--workdir", help="scratch folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--profile", action="store_true",
                        help="also profile process_series in this process (a second run)")
    args = parser.parse_args(argv)

    scratch = args.workdir or tempfile.mkdtemp(prefix="bench_series_")
    os.makedirs(scratch, exist_ok=True)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[:3]}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"# {args.n_frames} frames of {args.size}x{args.size}, shifts up to "
          f"{args.shift} px, kernel {args.kernel_size}; scratch {scratch}")
    try:
        start = time.perf_counter()
        reference_path, frame_paths, truth, peak = simulate(
            os.path.join(scratch, "frames"), args.n_frames, args.size, args.shift, args.seed)
        print(f"# simulated and written in {time.perf_counter() - start:.1f} s; "
              f"largest |shift| {np.abs(truth.shift).max():.2f} px")

        out = os.path.join(scratch, "series")
        sampler = LoadSampler()
        wall, cpu, steps = run_series(reference_path, frame_paths, out, args.kernel_size,
                                      scratch)
        series_load = sampler.stop()
        registered = sorted(os.path.join(out, "registered", name)
                            for name in os.listdir(os.path.join(out, "registered")))
        print(f"series:   {wall:8.1f} s  {wall / args.n_frames:6.2f} s/frame  "
              f"cpu {cpu:8.1f} s ({cpu / wall:.2f} cores); {series_load}")
        hp_wall = None
        if args.hotpants and os.access(args.hotpants, os.X_OK):
            sampler = LoadSampler()
            hp_wall, hp_cpu, walls, hp_scale = run_hotpants(
                args.hotpants, reference_path, registered, os.path.join(scratch, "hotpants"),
                args.kernel_size, args.size, upper=10 * peak)
            hp_load = sampler.stop()
            print(f"hotpants: {hp_wall:8.1f} s  {hp_wall / len(walls):6.2f} s/frame  "
                  f"cpu {hp_cpu:8.1f} s ({hp_cpu / hp_wall:.2f} cores); "
                  f"{len(walls)} runs on the series' registered frames, per run "
                  f"min {min(walls):.2f} median {np.median(walls):.2f} max {max(walls):.2f} s; "
                  f"{hp_load}")
            print(f"series / hotpants: {wall / hp_wall:.2f}")
            from astropy.table import QTable

            ours = np.asarray(QTable.read(os.path.join(out, "frames.ecsv"))["scale_factor"])
            true = np.asarray(truth.scale_factor)
            print("# sanity, median |P / true P - 1|: series "
                  f"{np.nanmedian(np.abs(ours / true - 1)):.4f}, hotpants "
                  f"{np.nanmedian(np.abs(hp_scale / true - 1)):.4f}")
        else:
            print(f"# no HOTPANTS binary at {args.hotpants!r}: hotpants skipped")
        print(f"# load after: {open('/proc/loadavg').read().split()[:3]}")
        print_breakdown(steps, wall, args.n_frames)
        if args.profile:
            profile(reference_path, frame_paths, os.path.join(scratch, "series_profile"),
                    args.kernel_size)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
