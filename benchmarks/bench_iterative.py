"""
Time the iterative solver against the paper's scheme and a numpy baseline.

Run by hand (not part of the test suite)::

    python benchmarks/bench_iterative.py [--sizes 142 256] [--kernel 19] [--repeat 3]

For each image size it simulates one S10-like pair and times, in the same
process and run:

- ``numpy B08``: weighted normal equations with numpy/scipy (the tests'
  independent reference solver), fixed weights from the data;
- ``astro_dia``: ``DifferenceImager`` with the default preconditioned
  L-BFGS (float32 and float64);
- ``paper``: ``preconditioner='diagonal'`` with 200 Adam steps first, the
  scheme of Hitchcock et al. (2021) section 2.10 (float32).

Speeds are reported as ratios to the numpy baseline timed in the same run,
because the machine is shared and absolute times are noisy.
"""

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import reference_solver as rs  # noqa: E402

from astro_dia import ConvergenceWarning, DifferenceImager  # noqa: E402
from astro_dia.simulate import make_image_pair  # noqa: E402


def best_time(function, repeat):
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[142, 256, 512])
    parser.add_argument("--kernel", type=int, default=19)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import torch
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'size':>5} {'method':<22} {'seconds':>8} {'x numpy':>8} {'P':>10} {'iter':>5}")
    h = args.kernel // 2
    for size in args.sizes:
        reference, target, truth = make_image_pair(shape=(size, size), seed=size, density=100)
        weights = 1.0 / np.maximum(25.0 + target.data[h:-h, h:-h], 25.0)
        base, (kernel, *_rest) = best_time(
            lambda: rs.solve_weighted(reference.data, target.data, weights, args.kernel),
            args.repeat)
        print(f"{size:>5} {'numpy B08 (fixed w)':<22} {base:8.3f} {1.0:8.2f} "
              f"{kernel.sum():10.6f} {'-':>5}")
        runs = [("astro_dia float32", dict(dtype="float32")),
                ("astro_dia float64", dict(dtype="float64")),
                ("paper Adam+diag f32", dict(dtype="float32", preconditioner="diagonal",
                                             max_adam_iter=200, max_iter=3000))]
        for label, settings in runs:
            imager = DifferenceImager(args.kernel, flat=1, sky=0, **settings)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                seconds, result = best_time(lambda: imager.fit(reference, target),
                                            1 if "paper" in label else args.repeat)
            flag = "" if result.converged else " (not converged)"
            print(f"{size:>5} {label:<22} {seconds:8.3f} {seconds / base:8.2f} "
                  f"{result.scale_factor:10.6f} {result.n_iterations:>5}{flag}")


if __name__ == "__main__":
    main()
