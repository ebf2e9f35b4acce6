"""
Time every solver side by side, with a numpy Bramich (2008) baseline and optional peers.

Run by hand (not part of the test suite)::

    python benchmarks/bench_solvers.py [--sizes 142 512 1000 2000] [--kernels 19 25]
                                       [--paper-max 1000] [--numpy-max 1000] [--out FILE]
                                       [--repeat N] [--hotpants PATH] [--only LABEL ...]
                                       [--wait-policy ACTIVE|PASSIVE]

For each image size and kernel size it simulates one S10-like pair (CCD
noise, gain 1, read noise 5 adu, 100 stars per 100 x 100 pixels, skies of
100 and 300 adu not subtracted) and fits it, each fit in a fresh subprocess
so that its peak memory (``ru_maxrss``) is its own:

- ``numpy B08``: the tests' independent numpy/scipy normal-equation solver
  (``tests/reference_solver.py``) with fixed weights from the data, float64:
  the baseline every speed is divided by;
- ``iterative``: ``solver='iterative'`` (whitened L-BFGS, the default
  before the direct solver existed), float32;
- ``paper``: the same with ``preconditioner='diagonal'`` and 200 Adam steps,
  the scheme of Hitchcock et al. (2021), float32 (only up to ``--paper-max``);
- ``direct`` and ``cg`` in float32 and float64;
- ``default+errors``: ``DifferenceImager(kernel, flat=1, sky=0)`` with every
  other setting at its default (errors, clipping, ``solver='auto'``,
  float32): what a user runs;
- ``diff CLI``: the whole ``astro-dia diff --flat 1 --sky 0`` process on the
  pair written to FITS beforehand (writing not timed; start-up, reading and
  writing the difference timed), as a user runs it from a shell;
- ``hotpants`` (only with a binary: ``--hotpants PATH``, default
  ``$HOTPANTS`` or ``hotpants`` on PATH; ``benchmarks/build_hotpants.sh``
  builds one): the whole HOTPANTS process, command built by
  ``bright_stars.run_hotpants`` (noise images, gain, read noise, limits,
  stamp grid), half-width ``K // 2``, constant kernel and background
  (``-ko 0 -bgo 0``), the reference convolved (``-c t -n i``); P is its
  KSUM00 card;
- ``sfft numpy`` (only when ``import sfft`` works; PyPI ``sfft`` 1.7.x, its
  pyFFTW/numba dependencies leave numpy, scipy, astropy, torch and photutils
  as they are): ``Customized_Packet.CP`` with the numpy backend, the
  reference convolved, constant kernel and background, no pixel masked; its
  numba compilation is excluded by a first call on the same pair.

All astro_dia fits except ``default+errors`` and ``diff CLI`` use the CCD
noise model with the Gaussian likelihood of eq. 8 (a model-dependent
variance) to full convergence, with ``compute_errors=False`` (the errors
are the same for every solver: sigma_P and sigma_B0 from matrix-free solves
preconditioned by what the solver left, ``astro_dia.fitting._matrix_free_errors``,
timed in ``direct+errors f32`` and ``default+errors``).

Columns: ``seconds`` (the median of ``--repeat N`` runs made round-robin,
A B C A B C ..., so that a change in the machine's load hits every row),
its ratio to ``numpy B08``, ``iterative f32`` and ``hotpants`` at the same
size and kernel; ``P`` (at the image centre); its agreement with the direct
float64 fit (``cg f64`` where ``direct f64`` was not run; for the ``d=1``
and ``d=2`` rows, fits of a spatially varying kernel to the same pair, P at
the image centre of a different model);
``MFV``, the mean fit variance (paper eq. 30, `astro_dia.metrics`) of the
difference on the fitted pixels (astro_dia: ``fit_mask``, or the CLI's
MASK extension 0; HOTPANTS: its unmasked pixels; SFFT: all pixels), at
least ``K // 2`` from the edge, with the same sigma for every method (true
target variance plus true reference variance convolved with the square of
the true kernel); ``iter`` (negative: not converged) and ``peak GiB`` (for
``diff CLI`` and ``hotpants``, that of their process). Select rows with
``--only``, e.g. ``--only "numpy B08" "direct f32" "cg f32" "direct d=1 f32"``.
Absolute times on a shared machine are noisy; compare the ratios.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

RUNS = [
    ("numpy B08", None),
    ("iterative f32", dict(solver="iterative", dtype="float32")),
    ("paper f32", dict(solver="iterative", dtype="float32", preconditioner="diagonal",
                       max_adam_iter=200, max_iter=3000)),
    ("direct f32", dict(solver="direct", dtype="float32")),
    ("direct f64", dict(solver="direct", dtype="float64")),
    ("cg f32", dict(solver="cg", dtype="float32")),
    ("cg f64", dict(solver="cg", dtype="float64")),
    ("direct+errors f32", dict(solver="direct", dtype="float32", compute_errors=True)),
    # Spatially varying kernels (issue 10): the same pair, kernel_degree 1 and 2.
    ("direct d=1 f32", dict(solver="direct", dtype="float32", kernel_degree=1)),
    ("cg d=1 f32", dict(solver="cg", dtype="float32", kernel_degree=1)),
    ("direct d=2 f32", dict(solver="direct", dtype="float32", kernel_degree=2)),
    ("cg d=2 f32", dict(solver="cg", dtype="float32", kernel_degree=2)),
    # What a user runs (issue 17): every setting at its default (errors, clip, solver 'auto',
    # float32), in-process and as the whole `astro-dia diff` process.
    ("default+errors", {}),
    ("diff CLI", "cli"),
    # Peers, each only when available: a HOTPANTS binary (--hotpants), the sfft package.
    ("hotpants", "hotpants"),
    ("sfft numpy", "sfft"),
]
PEERS = ("diff CLI", "hotpants", "sfft numpy")


def simulate(size):
    from astro_dia.simulate import make_image_pair
    return make_image_pair(shape=(size, size), seed=size, density=100)


def fit_variance(truth, difference, use):
    """MFV (paper eq. 30) of a difference image on the pixels ``use``.

    sigma is the same for every method: the true target variance plus the true
    reference variance convolved with the square of the true kernel.
    """
    from scipy.signal import fftconvolve
    from astro_dia.metrics import mean_fit_variance
    variance = truth.target_variance + fftconvolve(truth.reference_variance,
                                                   truth.kernel ** 2, mode="same")
    return mean_fit_variance(np.asarray(difference, float), 0.0, np.sqrt(variance),
                             mask=~np.asarray(use, bool))


def interior(shape, kernel):
    """The pixels at least kernel // 2 from the edge (where a convolution is defined)."""
    h = kernel // 2
    use = np.zeros(shape, bool)
    use[h:-h, h:-h] = True
    return use


def run_cli(reference, target, kernel, workdir):
    """`astro-dia diff` as a whole process on the pair written to FITS (writing not timed).

    Returns the seconds, P and iterations (DIA_P, DIA_NIT cards) and the difference
    image with the fitted pixels (MASK extension 0).
    """
    from astropy.io import fits
    paths = [os.path.join(workdir, name) for name in ("ref.fits", "tgt.fits", "diff.fits")]
    reference.write(paths[0], overwrite=True)
    target.write(paths[1], overwrite=True)
    script = os.path.join(os.path.dirname(sys.executable), "astro-dia")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "astro_dia"]
    command += ["diff", paths[0], paths[1], "--out", paths[2], "--kernel-size", str(kernel),
                "--flat", "1", "--sky", "0"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"astro-dia diff failed: {proc.stderr.strip()[-500:]}")
    with fits.open(paths[2]) as hdus:
        header = hdus[0].header
        difference, fitted = hdus[0].data.astype(float), hdus["MASK"].data == 0
    return seconds, header["DIA_P"], header["DIA_NIT"], difference, fitted


def run_peer_hotpants(reference, target, truth, kernel, workdir):
    """HOTPANTS as one process: constant kernel and background, the reference convolved.

    `bright_stars.run_hotpants` builds the command (noise images, gain, read noise,
    valid-data limits, stamp grid) for sky-subtracted frames with SKYLEVEL and SATURATE
    cards. This pair keeps its sky (``make_image_pair`` default ``sky_subtracted=False``)
    and has no saturation, so it gets SKYLEVEL = 0 (its noise images are then the CCD noise
    of the data as they are, and the lower limits -10 read-noise sigma, below every valid
    pixel) and SATURATE above its brightest pixel.
    """
    from astropy.nddata import CCDData
    sys.path.insert(0, HERE)
    from bright_stars import run_hotpants
    top = 2.0 * max(float(np.nanmax(reference.data)), float(np.nanmax(target.data)))
    frames = []
    for image in (reference, target):
        header = image.header.copy()
        header["SKYLEVEL"] = (0.0, "no sky subtracted")
        header["SATURATE"] = (top, "above every pixel: nothing saturated")
        frames.append(CCDData(image.data, unit=image.unit, meta=header))
    out = run_hotpants(os.environ["HOTPANTS"], *frames, truth, 0, workdir,
                       half_width=kernel // 2, bgo=0)
    use = np.isfinite(out["difference"]) & interior(target.shape, kernel)
    return out["time"], out["scale_factor"], fit_variance(truth, out["difference"], use)


def run_peer_sfft(reference, target, truth, kernel, workdir):
    """sfft 1.7 Customized_Packet, numpy backend, constant kernel and background.

    The reference is convolved (ForceConv='REF', DIFF = SCI - Conv(REF)); no pixel is
    masked (the "masked" images are the images). SFFT compiles its numba functions for
    each configuration (image and kernel size): that one-off cost is excluded by a first
    call on the same pair, as astro_dia's one-off imports are by a small first fit. P is
    its flux scaling at the image centre (`Realize_FluxScaling`), MFV on the pixels at
    least kernel // 2 from the edge.
    """
    from astropy.io import fits
    from sfft.CustomizedPacket import Customized_Packet
    from sfft.utils.SFFTSolutionReader import Realize_FluxScaling
    paths = {name: os.path.join(workdir, f"{name}.fits") for name in ("ref", "sci", "sol")}
    fits.PrimaryHDU(np.asarray(reference.data, np.float64)).writeto(paths["ref"],
                                                                     overwrite=True)
    fits.PrimaryHDU(np.asarray(target.data, np.float64)).writeto(paths["sci"], overwrite=True)
    import torch

    def fit():
        return Customized_Packet.CP(
            FITS_REF=paths["ref"], FITS_SCI=paths["sci"], FITS_mREF=paths["ref"],
            FITS_mSCI=paths["sci"], ForceConv="REF", GKerHW=kernel // 2,
            FITS_Solution=paths["sol"], KerPolyOrder=0, BGPolyOrder=0, ConstPhotRatio=True,
            BACKEND_4SUBTRACT="Numpy", NUM_CPU_THREADS_4SUBTRACT=torch.get_num_threads(),
            VERBOSE_LEVEL=0)

    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):   # its check-point messages
        fit()
        start = time.perf_counter()
        _, difference = fit()
        seconds = time.perf_counter() - start
    ny, nx = target.shape
    # sfft works on the transposed array (its x is the row index), Fortran coordinates
    p = float(Realize_FluxScaling(np.array([[ny / 2 + 0.5, nx / 2 + 0.5]])).FromFITS(
        paths["sol"])[0])
    difference = np.asarray(difference).T
    return seconds, p, fit_variance(truth, difference, interior(target.shape, kernel))


def run_one(size, kernel, label):
    """Fit one configuration in this process; print a JSON line."""
    settings = dict(RUNS)[label]
    reference, target, truth = simulate(size)
    mfv, iterations = float("nan"), 0
    if label in PEERS:
        import tempfile
        with tempfile.TemporaryDirectory() as workdir:
            if label == "diff CLI":
                seconds, p, iterations, difference, fitted = run_cli(reference, target,
                                                                     kernel, workdir)
                mfv = fit_variance(truth, difference, fitted)
            elif label == "hotpants":
                seconds, p, mfv = run_peer_hotpants(reference, target, truth, kernel, workdir)
            else:
                seconds, p, mfv = run_peer_sfft(reference, target, truth, kernel, workdir)
    elif settings is None:
        sys.path.insert(0, os.path.join(HERE, "..", "tests"))
        import reference_solver as rs
        h = kernel // 2
        weights = 1.0 / np.maximum(25.0 + target.data[h:-h, h:-h], 25.0)
        start = time.perf_counter()
        fitted, *_ = rs.solve_weighted(reference.data, target.data, weights, kernel)
        seconds = time.perf_counter() - start
        p, iterations = float(fitted.sum()), 0
    else:
        from astro_dia import ConvergenceWarning, DifferenceImager
        settings = dict(settings)
        if label != "default+errors":
            settings.setdefault("compute_errors", False)
        imager = DifferenceImager(kernel, flat=1, sky=0, **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            # A small fit first, so that one-off imports (torch._dynamo at the
            # first L-BFGS step) are not timed.
            imager.fit(*simulate((4 if "kernel_degree" not in settings else 8) * kernel)[:2])
            start = time.perf_counter()
            result = imager.fit(reference, target)
            seconds = time.perf_counter() - start
        p, iterations = result.scale_factor, result.n_iterations
        if not result.converged:
            iterations = -iterations
        mfv = fit_variance(truth, result.difference.data, result.fit_mask)
    # GiB (Linux: KiB); for the CLI and HOTPANTS, their own process's peak
    who = resource.RUSAGE_CHILDREN if label in ("diff CLI", "hotpants") else resource.RUSAGE_SELF
    peak = resource.getrusage(who).ru_maxrss / 2 ** 20
    print(json.dumps(dict(seconds=seconds, p=p, mfv=mfv, iterations=iterations,
                          peak_gib=peak)))


def default_hotpants():
    import shutil
    return os.environ.get("HOTPANTS") or shutil.which("hotpants")


def sfft_available():
    try:
        import sfft  # noqa: F401
    except ImportError:
        return False
    return True


def wanted(label, size, kernel, args, have_sfft):
    """Whether to run ``label`` at this size and kernel."""
    if args.only and label not in args.only:
        return False
    if label == "numpy B08" and size > args.numpy_max:
        return False
    if label.startswith("paper") and (size > args.paper_max or kernel != 19):
        return False
    if label.startswith("iterative") and kernel != 19 and size > 512:
        return False
    if label == "hotpants" and not args.hotpants:
        return False
    if label == "sfft numpy" and not have_sfft:
        return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[142, 512, 1000, 2000])
    parser.add_argument("--kernels", type=int, nargs="+", default=[19, 25])
    parser.add_argument("--paper-max", type=int, default=1000,
                        help="largest size for the paper's scheme (slow)")
    parser.add_argument("--numpy-max", type=int, default=1000,
                        help="largest size for the numpy baseline (it builds the whole "
                             "design matrix: 8 N_pix K^2 bytes)")
    parser.add_argument("--only", nargs="+", help="labels to run")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the labels round-robin N times; report the median seconds")
    parser.add_argument("--hotpants", default=default_hotpants(),
                        help="HOTPANTS binary (default: $HOTPANTS, or hotpants on PATH); "
                             "without one the hotpants row is skipped")
    parser.add_argument("--wait-policy", choices=["ACTIVE", "PASSIVE"],
                        help="OMP_WAIT_POLICY of every fit's process (default: as inherited; "
                             "PASSIVE halved astro_dia's speed on an idle 2-core machine)")
    parser.add_argument("--out", help="also write the table (rst) to this file")
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "KERNEL", "LABEL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(int(args.one[0]), int(args.one[1]), args.one[2])
        return
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.only:
        unknown = sorted(set(args.only) - set(dict(RUNS)))
        if unknown:
            parser.error(f"unknown labels {unknown}; known: {[label for label, _ in RUNS]}")
    have_sfft = sfft_available()
    if args.hotpants:
        args.hotpants = os.path.abspath(args.hotpants)
        if not os.access(args.hotpants, os.X_OK):
            parser.error(f"--hotpants {args.hotpants} is not an executable file")
    for label, missing, why in (("hotpants", not args.hotpants, "no HOTPANTS binary "
                                 "(--hotpants, $HOTPANTS or hotpants on PATH)"),
                                ("sfft numpy", not have_sfft, "`import sfft` fails")):
        if missing and (not args.only or label in args.only):
            print(f"# {label}: skipped, {why}")

    import torch
    header = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{time.strftime('%Y-%m-%d')}")
    print("#", header)
    rows = []
    columns = f"{'size':>5} {'K':>3} {'method':<18} {'seconds':>8} {'x numpy':>8} " \
              f"{'x iter':>7} {'x hotpants':>10} {'P':>7} {'dP/P vs f64':>19} " \
              f"{'MFV':>6} {'iter':>5} {'peak GiB':>8}"
    env = dict(os.environ)
    if args.wait_policy:
        env["OMP_WAIT_POLICY"] = args.wait_policy
    if args.hotpants:
        env["HOTPANTS"] = args.hotpants
    for size in args.sizes:
        for kernel in args.kernels:
            labels = [label for label, _ in RUNS
                      if wanted(label, size, kernel, args, have_sfft)]
            runs = {}
            for repeat in range(args.repeat):         # round-robin: A B C A B C ...
                for label in labels:
                    out = subprocess.run(
                        [sys.executable, __file__, "--one", str(size), str(kernel), label],
                        capture_output=True, text=True, env=env)
                    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
                    if out.returncode or not lines:
                        print(f"{size:>5} {kernel:>3} {label:<18} failed: "
                              f"{out.stderr.strip().splitlines()[-1:]}")
                        continue
                    row = json.loads(lines[-1])
                    runs.setdefault(label, []).append(row)
                    print(f"  ({size} {kernel} {label} #{repeat + 1}: {row['seconds']:.2f} s)",
                          flush=True)
            found = {}
            for label, repeats in runs.items():
                found[label] = dict(repeats[-1],
                                    seconds=float(np.median([r["seconds"] for r in repeats])),
                                    peak_gib=max(r["peak_gib"] for r in repeats))
            if args.repeat > 1 and runs:
                print(f"  (median seconds of {args.repeat} round-robin runs)")
            print(columns)
            base = found.get("numpy B08", {}).get("seconds")
            iterative = found.get("iterative f32", {}).get("seconds")
            hotpants = found.get("hotpants", {}).get("seconds")
            exact = found.get("direct f64", found.get("cg f64", {})).get("p")
            for label in labels:
                if label not in found:
                    continue
                row = found[label]
                ratio = f"{row['seconds'] / base:8.2f}" if base else f"{'-':>8}"
                ratio_it = f"{row['seconds'] / iterative:7.3f}" if iterative else f"{'-':>7}"
                ratio_hp = f"{row['seconds'] / hotpants:10.2f}" if hotpants else f"{'-':>10}"
                agree = f"{abs(row['p'] - exact) / abs(exact):19.1e}" if exact else f"{'-':>19}"
                mfv = f"{row['mfv']:6.3f}" if np.isfinite(row.get("mfv", np.nan)) else f"{'-':>6}"
                line = (f"{size:>5} {kernel:>3} {label:<18} {row['seconds']:8.2f} {ratio} "
                        f"{ratio_it} {ratio_hp} {row['p']:7.4f} {agree} {mfv} "
                        f"{row['iterations']:>5} {row['peak_gib']:8.2f}")
                print(line, flush=True)
                rows.append(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"Measured on {header}"
                    + (f", median of {args.repeat} runs" if args.repeat > 1 else "") + ".\n\n")
            f.write(".. code-block:: text\n\n")
            f.write("    " + columns + "\n")
            for line in rows:
                f.write("    " + line + "\n")


if __name__ == "__main__":
    main()
