"""
Fit times, peak device memory and accuracy of each solver on one GPU.

Run by hand on a machine with a CUDA build of PyTorch (not part of the
test suite)::

    python benchmarks/bench_gpu.py [--sizes 1000 2000 4000] [--kernel 19]
                                   [--solvers auto direct cg] [--device cuda]
                                   [--cpu-reference-max 2000] [--budget 220]
                                   [--out FILE]

For each size it simulates one S10-like pair (`astro_dia.simulate.make_image_pair`,
100 stars per 100 x 100 pixels, CCD noise) and fits it on ``--device``
with each solver in float32, without and with errors
(``compute_errors=False`` / ``True``), after one small warm-up fit per
process (CUDA context, kernels, one-off imports). Each fit is timed from
its call to its return, with ``torch.cuda.synchronize()`` on both sides.

Columns: ``seconds``; ``peak GiB``, ``torch.cuda.max_memory_allocated``
during that fit (reset before it; ``nan`` on the CPU); ``P`` and its
relative difference from the float64 answer: a ``solver='cg'``
float64 fit on the CPU up to ``--cpu-reference-max`` pixels on a side,
above that the same fit on the device (marked ``dev``), since a CPU
float64 fit of a 4000 x 4000 frame alone can take minutes; ``sigma_P``
where errors were computed.

The whole run aims at under four minutes on one GPU; once ``--budget``
seconds have passed, the remaining rows are skipped (and listed). With no
GPU, ``--device cpu`` runs the same script as a dry run (small sizes,
e.g. ``--sizes 200 400``).
"""

import argparse
import json
import math
import sys
import time
import warnings


def synchronize(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def reset_peak(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    import torch
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return math.nan


def timed_fit(imager, reference, target, device):
    """One fit, synchronized on both sides; (seconds, result)."""
    from astro_dia import ConvergenceWarning
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = imager.fit(reference, target)
    synchronize(device)
    return time.perf_counter() - start, result


def reference_scale(reference, target, kernel, device, size, cpu_max):
    """P of the float64 matrix-free fit: on the CPU up to ``cpu_max``, else on the device."""
    from astro_dia import DifferenceImager
    where = "cpu" if size <= cpu_max else device
    imager = DifferenceImager(kernel, flat=1, sky=0, solver="cg", dtype="float64",
                              device=where, compute_errors=False)
    _, result = timed_fit(imager, reference, target, where)
    return result.scale_factor, ("cpu" if where == "cpu" else "dev")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--kernel", type=int, default=19)
    parser.add_argument("--solvers", nargs="+", default=["auto", "direct", "cg"])
    parser.add_argument("--device", default=None,
                        help="default: 'cuda' when available, else 'cpu' (a dry run)")
    parser.add_argument("--cpu-reference-max", type=int, default=2000)
    parser.add_argument("--budget", type=float, default=220.0,
                        help="seconds after which the remaining rows are skipped")
    parser.add_argument("--out", help="also write the rows as JSON lines to this file")
    args = parser.parse_args(argv)

    import torch
    from astro_dia import DifferenceImager
    from astro_dia.simulate import make_image_pair

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    begun = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"# {name}, torch {torch.__version__}, kernel {args.kernel}")
    warm = make_image_pair(shape=(4 * args.kernel,) * 2, seed=1, density=100)
    DifferenceImager(args.kernel, flat=1, sky=0, device=device).fit(*warm[:2])

    rows, skipped = [], []
    header = (f"{'size':>5} {'solver':>7} {'errors':>6} {'seconds':>8} {'peak GiB':>8} "
              f"{'P':>10} {'dP/P':>9} {'ref':>4} {'sigma_P':>9}")
    print(header)
    for size in args.sizes:
        reference, target, _ = make_image_pair(shape=(size, size), seed=size, density=100)
        if time.perf_counter() - begun > args.budget:
            skipped.append(f"{size}: all")
            continue
        truth, where = reference_scale(reference, target, args.kernel, device, size,
                                       args.cpu_reference_max)
        for solver in args.solvers:
            for errors in (False, True):
                if time.perf_counter() - begun > args.budget:
                    skipped.append(f"{size} {solver} errors={errors}")
                    continue
                imager = DifferenceImager(args.kernel, flat=1, sky=0, solver=solver,
                                          device=device, compute_errors=errors)
                seconds, result = timed_fit(imager, reference, target, device)
                p = result.scale_factor
                row = dict(size=size, solver=solver, errors=errors, seconds=seconds,
                           peak_gib=peak_gib(device), p=p, dp=abs(p - truth) / truth,
                           reference=where,
                           sigma_p=result.scale_factor_error if errors else math.nan)
                rows.append(row)
                print(f"{size:5d} {solver:>7} {str(errors):>6} {seconds:8.3f} "
                      f"{row['peak_gib']:8.2f} {p:10.6f} {row['dp']:9.1e} {where:>4} "
                      f"{row['sigma_p']:9.2e}", flush=True)
    print(f"# total {time.perf_counter() - begun:.0f} s")
    if skipped:
        print(f"# skipped after the {args.budget:.0f} s budget: {'; '.join(skipped)}")
    if args.out:
        with open(args.out, "w") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
