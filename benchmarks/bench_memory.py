"""
Peak memory and wall time of one large fit.

Run by hand (not part of the test suite)::

    python benchmarks/bench_memory.py [--sizes 2000 4000] [--kernel 19] [--density 20]
                                      [--ceiling 300]

Each size runs in a fresh child process, so that the peak resident set
size of one size does not leak into the next. In the child:

1. a ``size`` x ``size`` S10-like pair is simulated with
   `astro_dia.simulate.make_image_pair` (``density`` stars per 100 x 100
   pixels);
2. the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``,
   Linux) and a background thread samples ``VmRSS`` every 20 ms;
3. ``DifferenceImager(kernel_size, flat=1, sky=0).fit`` runs on the CPU.

Reported per size: simulation time, fit time, the resident set size
before the fit (the two images and the interpreter), the peak during the
fit alone (the larger of the reset ``VmHWM`` and the sampled maximum),
the fit's increment over the baseline, and the process-lifetime peak
``resource.getrusage(RUSAGE_SELF).ru_maxrss``. ``tracemalloc`` is not
used: it does not see torch's allocations.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
import warnings

MiB = 2 ** 20


def _status_kib(field):
    """A ``VmXXX`` field of /proc/self/status, in KiB (None if unavailable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Poll VmRSS in the background and keep the maximum (KiB)."""

    def __init__(self, interval=0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_kib = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.peak_kib = max(self.peak_kib, _status_kib("VmRSS") or 0)
            time.sleep(self.interval)

    def stop(self):
        self._halt.set()
        self.join()
        self.peak_kib = max(self.peak_kib, _status_kib("VmRSS") or 0)


def run_one(size, kernel_size, density, seed, solver="auto", max_memory=None):
    """Simulate and fit one pair in this process; return the measurements."""
    import numpy as np
    import torch

    from astro_dia import DifferenceImager
    from astro_dia.simulate import make_image_pair

    start = time.perf_counter()
    reference, target, truth = make_image_pair(shape=(size, size), density=density,
                                               seed=seed)
    simulate_time = time.perf_counter() - start
    imager = DifferenceImager(kernel_size, flat=1, sky=0, device="cpu", solver=solver,
                              max_memory=max_memory)
    baseline_kib = _status_kib("VmRSS")
    reset = _reset_peak()
    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = imager.fit(reference, target)
    fit_time = time.perf_counter() - start
    sampler.stop()
    hwm_kib = _status_kib("VmHWM") if reset else None
    fit_peak_kib = max(sampler.peak_kib, hwm_kib or 0)
    return dict(
        size=size, kernel_size=kernel_size, density=density, solver=result.solver,
        max_memory=max_memory,
        n_data=int(result.n_data), scale_factor=float(result.scale_factor),
        scale_factor_true=float(truth.scale_factor),
        converged=bool(result.converged), n_iterations=int(result.n_iterations),
        finite=bool(np.isfinite(result.difference.data[~result.difference.mask]).all()),
        warnings=[f"{w.category.__name__}: {w.message}" for w in caught],
        simulate_s=simulate_time, fit_s=fit_time,
        baseline_mib=baseline_kib / 1024,
        fit_peak_mib=fit_peak_kib / 1024,
        fit_increment_mib=(fit_peak_kib - baseline_kib) / 1024,
        peak_reset=reset, sampled_peak_mib=sampler.peak_kib / 1024,
        ru_maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        threads=torch.get_num_threads(),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000])
    parser.add_argument("--kernel", type=int, default=19)
    parser.add_argument("--density", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=4000)
    parser.add_argument("--solver", default="auto")
    parser.add_argument("--max-memory", default=None, help="e.g. 2GB")
    parser.add_argument("--ceiling", type=float, default=300.0,
                        help="MiB per megapixel the fit may add (docs/performance.rst); "
                             "the exit status is 1 if a size exceeds it")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_one(args.child, args.kernel, args.density, args.seed,
                                 args.solver, args.max_memory)))
        return 0

    import torch

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"kernel {args.kernel}, density {args.density}, solver {args.solver}, "
          f"max_memory {args.max_memory}")
    rows = []
    for size in args.sizes:
        completed = subprocess.run(
            [sys.executable, __file__, "--child", str(size), "--kernel", str(args.kernel),
             "--density", str(args.density), "--seed", str(args.seed),
             "--solver", args.solver] + (["--max-memory", args.max_memory]
                                         if args.max_memory else []),
            capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            print(f"# size {size} failed:\n{completed.stderr}", file=sys.stderr)
            continue
        row = json.loads(completed.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"# {size}: {json.dumps(row)}", flush=True)
    header = (f"{'size':>6} {'sim s':>7} {'fit s':>7} {'iter':>5} {'base MiB':>9} "
              f"{'fit peak MiB':>13} {'fit +MiB':>9} {'ru_maxrss MiB':>14} {'P':>8}")
    print(header)
    for row in rows:
        print(f"{row['size']:>6} {row['simulate_s']:>7.1f} {row['fit_s']:>7.1f} "
              f"{row['n_iterations']:>5} {row['baseline_mib']:>9.0f} "
              f"{row['fit_peak_mib']:>13.0f} {row['fit_increment_mib']:>9.0f} "
              f"{row['ru_maxrss_mib']:>14.0f} {row['scale_factor']:>8.4f}")
    over = [row["size"] for row in rows
            if row["fit_increment_mib"] > args.ceiling * row["size"] ** 2 / 1e6]
    print(f"# ceiling {args.ceiling:g} MiB per megapixel: "
          + (f"exceeded at {over}" if over else "met at every size"))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
