"""
A fit's time alone and beside another CPU-bound process, for several thread settings.

Run by hand (not part of the test suite)::

    python benchmarks/bench_threads.py [--size 1000] [--kernel-size 19] [--runs 3]
                                       [--settings default omp1 set1 omp2]

It simulates one S10-like pair (`astro_dia.simulate.make_image_pair`, CCD
noise, gain 1, read noise 5 adu, 100 stars per 100 x 100 pixels), writes
it as FITS, and times the default fit, ``DifferenceImager(kernel_size=19,
flat=1).fit(reference, target)``, each time in a fresh Python process
(whole-process paired runs: the settings take turns, A B C D A B C D ...,
so that a drift of the machine's speed is shared), for these settings:

``default``
    torch's own default: as many threads as cores (``OMP_NUM_THREADS``
    unset);
``omp1``
    ``OMP_NUM_THREADS=1`` in the environment;
``set1``
    ``torch.set_num_threads(1)`` called before the fit (environment as
    for ``default``);
``omp2``
    ``OMP_NUM_THREADS=2``.

First with the machine otherwise idle, then with one other CPU-bound
process (``python -c "while True: pass"``) started beside it (and ended
after). It prints, per setting and condition, the median of the whole
process's wall time and of the fit's own time (measured in the process),
and the ratio busy / alone. The issue's bound: a fit beside one busy
process at most 2 times its time alone.

Wait for a quiet machine first (``cat /proc/loadavg``).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

SETTINGS = {
    "default": ({}, None),
    "omp1": ({"OMP_NUM_THREADS": "1"}, None),
    "set1": ({}, 1),
    "omp2": ({"OMP_NUM_THREADS": "2"}, None),
}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "OMP_WAIT_POLICY")


def write_pair(folder, size, seed):
    from astropy.io import fits

    from astro_dia.simulate import make_image_pair

    reference, target, truth = make_image_pair((size, size), density=100, seed=seed)
    paths = []
    for name, image in (("ref", reference), ("tgt", target)):
        header = image.header.copy()
        header["BUNIT"] = "adu"
        path = os.path.join(folder, f"{name}.fits")
        fits.writeto(path, np.asarray(image.data, np.float32), header, overwrite=True)
        paths.append(path)
    return paths


def child(reference_path, target_path, kernel_size, set_threads):
    """The timed process: import, read, fit once, print the fit's own time."""
    import torch

    from astro_dia import DifferenceImager
    from astro_dia.result.io import read_image

    if set_threads:
        torch.set_num_threads(set_threads)
    reference = read_image(reference_path)
    target = read_image(target_path)
    imager = DifferenceImager(kernel_size=kernel_size, flat=1)
    start = time.perf_counter()
    result = imager.fit(reference, target)
    fit = time.perf_counter() - start
    print(json.dumps({"fit": fit, "threads": torch.get_num_threads(),
                      "P": float(result.scale_factor)}))


def run_once(name, paths, kernel_size):
    extra, set_threads = SETTINGS[name]
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    env.update(extra)
    command = [sys.executable, os.path.abspath(__file__), "--child", *paths,
               "--kernel-size", str(kernel_size)]
    if set_threads:
        command += ["--set-threads", str(set_threads)]
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: the fit process failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return wall, out["fit"], out["threads"]


def measure(settings, paths, kernel_size, runs, busy):
    hog = None
    if busy:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
    try:
        times = {name: [] for name in settings}
        threads = {}
        for _ in range(runs):
            for name in settings:
                wall, fit, n = run_once(name, paths, kernel_size)
                times[name].append((wall, fit))
                threads[name] = n
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return times, threads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--kernel-size", type=int, default=19)
    parser.add_argument("--runs", type=int, default=3, help="runs per setting and condition")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("REF", "TGT"), help=argparse.SUPPRESS)
    parser.add_argument("--set-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.kernel_size, args.set_threads)
        return

    scratch = tempfile.mkdtemp(prefix="bench_threads_")
    try:
        paths = write_pair(scratch, args.size, args.seed)
        print(f"# {platform.node()}, {os.cpu_count()} cores, load "
              f"{open('/proc/loadavg').read().split()[:3]}; {args.size}x{args.size}, kernel "
              f"{args.kernel_size}, {args.runs} runs per setting and condition, medians")
        results = {}
        for busy in (False, True):
            results[busy] = measure(args.settings, paths, args.kernel_size, args.runs, busy)
        print(f"# load after: {open('/proc/loadavg').read().split()[:3]}")
        print(f"{'setting':<10} {'threads':>7} {'process alone':>13} {'busy':>8} "
              f"{'fit alone':>9} {'busy':>8} {'fit busy/alone':>14}")
        for name in args.settings:
            alone = np.median(np.array(results[False][0][name]), axis=0)
            loaded = np.median(np.array(results[True][0][name]), axis=0)
            print(f"{name:<10} {results[False][1][name]:7d} {alone[0]:12.2f}s {loaded[0]:7.2f}s "
                  f"{alone[1]:8.2f}s {loaded[1]:7.2f}s {loaded[1] / alone[1]:14.2f}")
        print("all runs (wall, fit) s:")
        for busy in (False, True):
            for name in args.settings:
                runs = ", ".join(f"({w:.1f}, {f:.1f})" for w, f in results[busy][0][name])
                print(f"  {'busy' if busy else 'alone':<5} {name:<8} {runs}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
