"""
astro_dia against HOTPANTS and an independent flux ratio on real frame pairs.

The pairs are those of ``benchmarks/real_pairs.py``: the aligned ProperImage
pair (gain 1 e-/adu, read noise 10 e-, saturation 60000 adu, given here)
and six pyDIA pairs of a crowded bulge field (reference AKB13475I0028,
PFWHM 4.73 px, night 56481; targets of night 56507 with PFWHM 4.69 to 7.92
px; GAIN 1.9, RDNOISE 5 e- from the headers, saturation 65300 adu),
registered by the whole part of their offset and cropped to the overlap.

For every pair it runs

- ``default``: ``DifferenceImager(kernel_size=19, gain=..., read_noise=...,
  flat=1, saturation=...)`` plus the ``--settings``;
- ``clip=None``: the same without outlier rejection;
- ``hotpants``: HOTPANTS (``bright_stars.run_hotpants``) with the same
  kernel size (``-r 9``), constant kernel and background (``-ko 0 -bgo
  0``), saturation, gain and read noise, and ``round(size / 128)`` stamps
  per side;
- ``flux ratio``: `astro_dia.metrics.flux_ratio`, the target / reference
  flux ratio of bright isolated unsaturated stars (no kernel fit), in
  apertures of 3 times the larger FWHM; a note line gives it at 2 and 4.

and prints, per method: P (and sigma_P), ``std D``: the robust (MAD) std
of D in adu over the pixels valid for every method, ``std z``: the same
of astro_dia's own D / sigma, ``near``: the rms of D / sigma_T within 2.5
target FWHM of the 20 brightest unsaturated stars, with the common
sigma_T = sqrt(rn^2 + gain * max(target, 0)) / gain (target noise only, so
the noise floor is above 1) and the pixels within 6 FWHM of a pixel at 90%
of saturation left out, the rejected pixels, the fit time, where the fit looked (astro_dia's
``result.fit_region``; HOTPANTS fits stamps), the warnings,
and the astro_dia / HOTPANTS ratios of ``std D`` and ``near``. On the
ProperImage default fit it also counts the unflagged candidates of
`astro_dia.detection.find_transients`.

Run from the root of the source tree, with that tree importable::

    PYTHONPATH=. python benchmarks/validate_real_data.py
    PYTHONPATH=. python benchmarks/validate_real_data.py --settings clip=None
    PYTHONPATH=. python benchmarks/validate_real_data.py --pairs properimage pydia-0090 \\
        --json real.json --hotpants /work/hotpants-bin/hotpants

``--settings`` values are read with `ast.literal_eval` (bare words are
strings). The whole run (7 pairs) takes about 50 s with
``OMP_NUM_THREADS=1`` on 2 shared cores (astro_dia's fits 1-6 s each,
HOTPANTS under 1 s, a flux ratio about 1 s). Without ``PYTHONPATH=.`` the
installed astro_dia is measured; the first line of the output says which.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
from astropy import units as u
from astropy.stats import mad_std, sigma_clipped_stats
from scipy import ndimage

import astro_dia
from astro_dia import DifferenceImager
from astro_dia.detection import find_transients
from astro_dia.metrics import flux_ratio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bright_stars import parse_settings, run_hotpants  # noqa: E402
from real_pairs import PAIR_NAMES, default_data_dir, load_pair  # noqa: E402

KERNEL_SIZE = 19
N_BRIGHT = 20           # stars whose surroundings make the "near" zone
NEAR_RADIUS = 2.5       # target FWHM
SATURATION_GUARD = 6.0  # FWHM around pixels at 90% of saturation left out
APERTURE_CURVE = (2.0, 4.0)
RELAXED = {"neighbour_fraction": 0.5}


# -- methods --------------------------------------------------------------------
def fit_astro_dia(pair, settings):
    """One astro_dia fit: the result, its D (NaN where masked), time and warnings."""
    settings = {"kernel_size": KERNEL_SIZE, **settings}
    imager = DifferenceImager(gain=pair.gain * u.electron / u.adu,
                              read_noise=pair.read_noise * u.electron, flat=1,
                              saturation=pair.saturation, **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        result = imager.fit(pair.reference, pair.target)
        elapsed = time.perf_counter() - start
    difference = np.where(result.difference.mask, np.nan, result.difference.data)
    z = difference / result.difference.uncertainty.array
    return dict(result=result, difference=difference, z=z, scale_factor=result.scale_factor,
                scale_factor_error=result.scale_factor_error, n_rejected=result.n_outliers,
                region=result.fit_region,
                time=elapsed, warnings=[f"{type(w.message).__name__}: {w.message}"
                                        for w in caught])


def hotpants_frame(image, pair):
    """A copy with the header cards `run_hotpants` reads (the sky was not subtracted)."""
    out = image.copy()
    out.meta = image.header.copy()
    out.header["GAIN"] = pair.gain
    out.header["RDNOISE"] = pair.read_noise
    out.header["SKYLEVEL"] = 0.0
    out.header["SATURATE"] = pair.saturation
    return out


def fit_hotpants(pair, binary, n_stamps):
    """HOTPANTS, -ko 0 -bgo 0 -r (kernel_size // 2), in a scratch directory."""
    workdir = tempfile.mkdtemp(prefix="validate_real_")
    try:
        output = run_hotpants(binary, hotpants_frame(pair.reference, pair),
                              hotpants_frame(pair.target, pair), None, 0, workdir,
                              half_width=KERNEL_SIZE // 2, bgo=0, n_stamps=n_stamps)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return dict(difference=output["difference"], scale_factor=output["scale_factor"],
                scale_factor_error=None, n_rejected=None, time=output["time"], warnings=[],
                region="stamps")


def measure_flux_ratio(pair):
    """
    The independent P, and P at the other aperture radii (curve of growth).

    Where the defaults find too few stars (a crowded field in bad seeing),
    neighbours up to half as bright are accepted (``relaxed`` says so).
    """
    start = time.perf_counter()
    relaxed = {}
    try:
        measured = flux_ratio(pair.reference, pair.target, saturation=pair.saturation)
    except ValueError:
        relaxed = RELAXED
        measured = flux_ratio(pair.reference, pair.target, saturation=pair.saturation,
                              **relaxed)
    elapsed = time.perf_counter() - start
    curve = {}
    for radius in APERTURE_CURVE:
        try:
            other = flux_ratio(pair.reference, pair.target, saturation=pair.saturation,
                               fwhm=measured.fwhm, aperture_radius=radius,
                               annulus_radii=(radius + 1, radius + 3), **relaxed)
            curve[radius] = (other.ratio, other.ratio_err, other.n_stars)
        except ValueError as error:
            curve[radius] = str(error)
    return measured, curve, elapsed, relaxed


# -- zones and metrics ----------------------------------------------------------
def saturated_surroundings(pair, fwhm):
    """Pixels within SATURATION_GUARD FWHM of a pixel at 90% of saturation in either frame."""
    hot = ((pair.reference.data >= 0.9 * pair.saturation)
           | (pair.target.data >= 0.9 * pair.saturation))
    return ndimage.distance_transform_edt(~hot) <= SATURATION_GUARD * fwhm


def near_star_zone(pair, fwhm, excluded):
    """Discs of NEAR_RADIUS target FWHM around the N_BRIGHT brightest unsaturated stars."""
    from photutils.detection import DAOStarFinder

    _, median, std = sigma_clipped_stats(pair.reference.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sources = DAOStarFinder(20 * std, fwhm[0], exclude_border=True)(
            pair.reference.data - median)
    x, y = np.asarray(sources["x_centroid"]), np.asarray(sources["y_centroid"])
    iy, ix = np.round(y).astype(int), np.round(x).astype(int)
    ok = ~excluded[iy, ix]
    order = np.argsort(-np.asarray(sources["peak"])[ok])[:N_BRIGHT]
    yy, xx = np.indices(pair.target.shape)
    zone = np.zeros(pair.target.shape, bool)
    for sx, sy in zip(x[ok][order], y[ok][order]):
        zone |= np.hypot(xx - sx, yy - sy) <= NEAR_RADIUS * fwhm[1]
    return zone & ~excluded, len(order)


def common_sigma(pair):
    """sqrt(rn^2 + gain * max(target, 0)) / gain: the same sigma for every method (adu)."""
    electrons = pair.gain * np.maximum(pair.target.data, 0)
    return np.sqrt(pair.read_noise ** 2 + electrons) / pair.gain


def method_metrics(output, common, zone, sigma):
    """std D, std z (astro_dia), near-star rms of D / sigma on the common pixels."""
    difference = output["difference"]
    metrics = dict(std_d=float(mad_std(difference[common])),
                   near=float(np.sqrt(np.mean((difference / sigma)[zone & common] ** 2))))
    if "z" in output:
        metrics["std_z"] = float(mad_std(output["z"][common]))
    return metrics


# -- one pair -------------------------------------------------------------------
def run_pair(pair, settings, binary, n_stamps):
    """Every method on one pair; returns the numbers to print and save."""
    outputs = {"default": fit_astro_dia(pair, settings),
               "clip=None": fit_astro_dia(pair, {**settings, "clip": None})}
    if binary:
        outputs["hotpants"] = fit_hotpants(pair, binary, n_stamps)
    measured, curve, ratio_time, relaxed = measure_flux_ratio(pair)
    common = np.logical_and.reduce([np.isfinite(o["difference"]) for o in outputs.values()])
    excluded = saturated_surroundings(pair, max(measured.fwhm))
    zone, n_bright = near_star_zone(pair, measured.fwhm, excluded)
    sigma = common_sigma(pair)
    rows = {}
    for name, output in outputs.items():
        rows[name] = dict(scale_factor=output["scale_factor"],
                          scale_factor_error=output["scale_factor_error"],
                          n_rejected=output["n_rejected"], time=output["time"],
                          region=output["region"],
                          warnings=output["warnings"],
                          **method_metrics(output, common, zone, sigma))
    if "hotpants" in rows:
        for name in ("default", "clip=None"):
            rows[name]["std_d_ratio"] = rows[name]["std_d"] / rows["hotpants"]["std_d"]
            rows[name]["near_ratio"] = rows[name]["near"] / rows["hotpants"]["near"]
    rows["flux ratio"] = dict(scale_factor=measured.ratio,
                              scale_factor_error=measured.ratio_err, n_stars=measured.n_stars,
                              scatter=measured.scatter, time=ratio_time,
                              aperture_radius=measured.aperture_radius, relaxed=relaxed,
                              curve={str(k): v for k, v in curve.items()})
    info = dict(shape=list(pair.target.shape), offset=list(pair.offset),
                shift=list(pair.shift), fwhm=list(measured.fwhm), n_bright=n_bright,
                n_near=int((zone & common).sum()), n_common=int(common.sum()))
    result = outputs["default"]["result"]
    if pair.name == "properimage" and np.isfinite(result.scale_factor_error or 0.0):
        # detection needs a finite sigma_P (a fit whose errors failed has none)
        candidates = find_transients(result)
        info["candidates"] = int(len(candidates))
        info["unflagged_candidates"] = int((np.asarray(candidates["flags"]) == 0).sum())
    return dict(info=info, rows=rows)


# -- printing -------------------------------------------------------------------
def fmt(value, spec, width):
    return f"{'-':>{width}s}" if value is None else f"{value:{width}{spec}}"


def print_pair(name, record):
    info, rows = record["info"], record["rows"]
    print(f"\n## {name}: {info['shape'][0]}x{info['shape'][1]} px, offset "
          f"({info['offset'][0]:+.2f}, {info['offset'][1]:+.2f}) -> shift "
          f"({info['shift'][0]}, {info['shift'][1]}), FWHM"
          f" ref {info['fwhm'][0]:.2f} tgt {info['fwhm'][1]:.2f} px; {info['n_common']} common"
          f" pixels, {info['n_near']} near {info['n_bright']} bright stars")
    header = (f"{'method':11s} {'P':>8s} {'sigma_P':>8s} {'std D':>7s} {'std z':>6s} "
              f"{'near':>6s} {'n_rej':>6s} {'time/s':>6s} {'D/HP':>5s} {'near/HP':>7s} {'region':>6s}"
              f"  warnings")
    print(header)
    for method, row in rows.items():
        if method == "flux ratio":
            continue
        warned = sorted({w.split(":")[0] for w in row["warnings"]}) or ["-"]
        print(f"{method:11s} {row['scale_factor']:8.4f} "
              f"{fmt(row['scale_factor_error'], '.4f', 8)} {row['std_d']:7.2f} "
              f"{fmt(row.get('std_z'), '.3f', 6)} {row['near']:6.2f} "
              f"{fmt(row['n_rejected'], 'd', 6)} {row['time']:6.1f} "
              f"{fmt(row.get('std_d_ratio'), '.3f', 5)} {fmt(row.get('near_ratio'), '.2f', 7)}"
              f" {row['region']:>6s}  {' '.join(warned)}")
    flux = rows["flux ratio"]
    curve = "; ".join(f"{r}: {v[0]:.4f} +- {v[1]:.4f} ({v[2]} stars)" if isinstance(v, tuple)
                      else f"{r}: {v[:40]}..." for r, v in flux["curve"].items())
    relaxed = f" ({flux['relaxed']})" if flux["relaxed"] else ""
    print(f"{'flux ratio':11s} {flux['scale_factor']:8.4f} {flux['scale_factor_error']:8.4f}"
          f"   {flux['n_stars']} stars{relaxed}, aperture {flux['aperture_radius']:.1f} px, "
          f"extra scatter {flux['scatter']:.4f}, {flux['time']:.1f} s")
    print(f"{'':11s} at other aperture radii (FWHM) {curve}")
    if "candidates" in info:
        print(f"find_transients on the default fit: {info['candidates']} candidates, "
              f"{info['unflagged_candidates']} unflagged")


def print_summary(records):
    print("\n## P of each method against the flux ratio: (P - P_flux) / sigma_flux")
    print(f"{'pair':12s} {'P_flux':>16s} {'default':>16s} {'clip=None':>16s} {'hotpants':>16s}")
    for name, record in records.items():
        rows = record["rows"]
        flux = rows["flux ratio"]
        cells = []
        for method in ("default", "clip=None", "hotpants"):
            if method not in rows:
                cells.append(f"{'-':>16s}")
                continue
            p = rows[method]["scale_factor"]
            pull = (p - flux["scale_factor"]) / flux["scale_factor_error"]
            cells.append(f"{p:8.4f} ({pull:+5.1f})")
        print(f"{name:12s} {flux['scale_factor']:8.4f}+-{flux['scale_factor_error']:.4f} "
              + " ".join(cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="*", default=[], metavar="KEY=VALUE",
                        help="DifferenceImager settings of the default row (and clip=None row)")
    parser.add_argument("--pairs", nargs="*", default=list(PAIR_NAMES), choices=PAIR_NAMES,
                        help="pairs to run (default: all)")
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--hotpants", default=os.environ.get("HOTPANTS")
                        or "/work/hotpants-bin/hotpants", help="HOTPANTS binary")
    parser.add_argument("--hotpants-stamps", type=int, default=None,
                        help="HOTPANTS -nsx/-nsy (default round(size / 128))")
    parser.add_argument("--data", default=default_data_dir(),
                        help="folder of the real frames (default ../shared/data/real)")
    args = parser.parse_args(argv)
    settings = parse_settings(args.settings)
    binary = args.hotpants if args.hotpants and os.path.exists(args.hotpants) else None
    print(f"# astro_dia {astro_dia.__version__} from {os.path.dirname(astro_dia.__file__)}; "
          f"default settings kernel_size={KERNEL_SIZE} {settings or ''}")
    if binary is None:
        print(f"# no HOTPANTS binary at {args.hotpants!r} (--hotpants / $HOTPANTS): "
              "HOTPANTS columns skipped")
    records = {}
    start = time.perf_counter()
    for name in args.pairs:
        pair = load_pair(name, args.data)
        records[name] = run_pair(pair, settings, binary, args.hotpants_stamps)
        print_pair(name, records[name])
        sys.stdout.flush()
    print_summary(records)
    print(f"\n# std D: MAD std of D (adu) on the pixels valid for every method; std z: of "
          f"astro_dia's D/sigma; near: rms of D/sigma_T within {NEAR_RADIUS} target FWHM of the"
          f" {N_BRIGHT} brightest unsaturated stars, sigma_T = target noise only; D/HP, near/HP: "
          f"astro_dia over HOTPANTS. Total {time.perf_counter() - start:.0f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": {k: repr(v) for k, v in settings.items()},
                       "astro_dia": astro_dia.__version__, "pairs": records}, f, indent=1)
    return records


if __name__ == "__main__":
    main()
