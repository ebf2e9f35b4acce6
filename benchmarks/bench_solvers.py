"""
Time every solver side by side, with a numpy Bramich (2008) baseline.

Run by hand (not part of the test suite)::

    python benchmarks/bench_solvers.py [--sizes 142 512 1000 2000] [--kernels 19 25]
                                       [--paper-max 1000] [--numpy-max 1000] [--out FILE]

For each image size and kernel size it simulates one S10-like pair (CCD
noise, gain 1, read noise 5 adu, 100 stars per 100 x 100 pixels) and fits
it, each fit in a fresh subprocess so that its peak memory (``ru_maxrss``)
is its own:

- ``numpy B08``: the tests' independent numpy/scipy normal-equation solver
  (``tests/reference_solver.py``) with fixed weights from the data, float64:
  the baseline every speed is divided by;
- ``iterative``: ``solver='iterative'`` (whitened L-BFGS, the default
  before the direct solver existed), float32;
- ``paper``: the same with ``preconditioner='diagonal'`` and 200 Adam steps,
  the scheme of Hitchcock et al. (2021), float32 (only up to ``--paper-max``);
- ``direct`` and ``cg`` in float32 and float64.

All astro_dia fits use the CCD noise model with the Gaussian likelihood of
eq. 8 (a model-dependent variance) to full convergence, with
``compute_errors=False`` (the error computation is the same for every
solver: one float64 normal-matrix assembly, timed separately in the row
``direct+errors``). P agreement is relative to the direct float64 fit
(for the ``d=1`` and ``d=2`` rows, fits of a spatially varying kernel to the
same pair, P at the image centre of a different model). Select rows with
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
]


def simulate(size):
    from astro_dia.simulate import make_image_pair
    return make_image_pair(shape=(size, size), seed=size, density=100)


def run_one(size, kernel, label):
    """Fit one configuration in this process; print a JSON line."""
    settings = dict(RUNS)[label]
    reference, target, _ = simulate(size)
    if settings is None:
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # GiB (Linux: KiB)
    print(json.dumps(dict(seconds=seconds, p=p, iterations=iterations, peak_gib=peak)))


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
    parser.add_argument("--out", help="also write the table (rst) to this file")
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "KERNEL", "LABEL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(int(args.one[0]), int(args.one[1]), args.one[2])
        return

    import torch
    header = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{time.strftime('%Y-%m-%d')}")
    print("#", header)
    rows = []
    columns = f"{'size':>5} {'K':>3} {'method':<18} {'seconds':>8} {'x numpy':>8} " \
              f"{'x iter':>7} {'dP/P vs direct f64':>19} {'iter':>5} {'peak GiB':>8}"
    print(columns)
    for size in args.sizes:
        for kernel in args.kernels:
            found = {}
            for label, _ in RUNS:
                if args.only and label not in args.only:
                    continue
                if label == "numpy B08" and size > args.numpy_max:
                    continue
                if label.startswith("paper") and (size > args.paper_max or kernel != 19):
                    continue
                if label.startswith("iterative") and kernel != 19 and size > 512:
                    continue
                out = subprocess.run(
                    [sys.executable, __file__, "--one", str(size), str(kernel), label],
                    capture_output=True, text=True, env=dict(os.environ,
                                                             OMP_WAIT_POLICY="PASSIVE"))
                lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
                if out.returncode or not lines:
                    print(f"{size:>5} {kernel:>3} {label:<18} failed: "
                          f"{out.stderr.strip().splitlines()[-1:]}")
                    continue
                found[label] = json.loads(lines[-1])
                print(f"  ({size} {kernel} {label}: {found[label]['seconds']:.2f} s)",
                      flush=True)
            base = found.get("numpy B08", {}).get("seconds")
            iterative = found.get("iterative f32", {}).get("seconds")
            exact = found.get("direct f64", {}).get("p")
            for label, row in found.items():
                ratio = f"{row['seconds'] / base:8.2f}" if base else f"{'-':>8}"
                ratio_it = f"{row['seconds'] / iterative:7.3f}" if iterative else f"{'-':>7}"
                agree = f"{abs(row['p'] - exact) / abs(exact):19.1e}" if exact else f"{'-':>19}"
                line = (f"{size:>5} {kernel:>3} {label:<18} {row['seconds']:8.2f} {ratio} "
                        f"{ratio_it} {agree} {row['iterations']:>5} {row['peak_gib']:8.2f}")
                print(line, flush=True)
                rows.append(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"Measured on {header}.\n\n")
            f.write(".. code-block:: text\n\n")
            f.write("    " + columns + "\n")
            for line in rows:
                f.write("    " + line + "\n")

if __name__ == "__main__":
    main()
