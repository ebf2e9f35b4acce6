"""
Throughput of `astro_dia.batch.fit_many`: in this process against a dask cluster.

Run by hand (not part of the test suite)::

    python benchmarks/bench_batch.py [--frames 8] [--size 128] [--kernel 11] [--workers 2]

It simulates one reference and ``--frames`` targets of one field, writes
them as FITS files to a temporary directory, and differences them three
ways, each writing its results to its own directory:

- ``serial``: ``fit_many`` in this process (one warm-up fit first, so that
  the import and first-call costs of torch are not counted);
- ``dask``: ``fit_many(workers=N)`` on a new ``LocalCluster`` of N worker
  processes, one thread each, timed with the start-up and shut-down of the
  cluster (what ``astro-dia subtract --workers N`` costs);
- ``dask, warm``: the same frames again on an already running cluster
  (``scheduler=client``), the steady-state rate of a long night.

It prints frames per second for each, and checks that the P of every frame
is the same in all three runs.
"""

import argparse
import os
import platform
import tempfile
import time

import torch

from astro_dia import DifferenceImager
from astro_dia.batch import fit_many
from astro_dia.simulate import make_image_pair


def make_frames(directory, n_frames, size):
    paths = []
    for i in range(n_frames):
        reference, target, _ = make_image_pair((size, size), density=60,
                                               scale_factor=0.8 + 0.4 * i / max(n_frames - 1, 1),
                                               seed=1, noise_seed=100 + i)
        path = os.path.join(directory, f"target_{i:03d}.fits")
        target.write(path)
        paths.append(path)
    reference_path = os.path.join(directory, "reference.fits")
    reference.write(reference_path)
    return reference_path, paths


def timed(label, n_frames, function):
    start = time.perf_counter()
    outcomes = function()
    elapsed = time.perf_counter() - start
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        raise RuntimeError(f"{label}: {len(failed)} frames failed: {failed[0].error}")
    print(f"{label:<24} {elapsed:8.2f} s   {n_frames / elapsed:6.3f} frames/s")
    return outcomes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--kernel", type=int, default=11)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from dask.distributed import Client, LocalCluster

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads in this process)")
    print(f"{args.frames} frames of {args.size} x {args.size}, {args.kernel} x {args.kernel} "
          f"kernel, {args.workers} dask workers (1 thread each)")
    imager = DifferenceImager(kernel_size=args.kernel, flat=1, sky=0, device="cpu")
    with tempfile.TemporaryDirectory() as directory:
        reference, targets = make_frames(directory, args.frames, args.size)
        out = os.path.join(directory, "{}")
        fit_many(imager, reference, targets[:1], progress=False)  # warm-up
        serial = timed("serial", args.frames, lambda: fit_many(
            imager, reference, targets, output_dir=out.format("serial"), progress=False,
            keep_results=False))
        cold = timed("dask (with start-up)", args.frames, lambda: fit_many(
            imager, reference, targets, output_dir=out.format("cold"), workers=args.workers,
            progress=False))
        with LocalCluster(n_workers=args.workers, threads_per_worker=1,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            fit_many(imager, reference, targets[:args.workers], output_dir=out.format("warm-up"),
                     scheduler=client, progress=False)
            warm = timed("dask, warm", args.frames, lambda: fit_many(
                imager, reference, targets, output_dir=out.format("warm"), scheduler=client,
                progress=False))
    same = all(a.scale_factor == b.scale_factor == c.scale_factor
               for a, b, c in zip(serial, cold, warm))
    print(f"identical P in all runs: {same}")


if __name__ == "__main__":
    main()
