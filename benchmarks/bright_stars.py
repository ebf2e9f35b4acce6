"""
Residuals next to bright stars: astro_dia against HOTPANTS on simulated survey pairs.

Issue 15 ("bright stars"): on real sky-subtracted cutout pairs with a
single-epoch reference, astro_dia's rms next to bright stars was 1.04-1.28x
the best of HOTPANTS/SFFT, and ``loss='huber'`` much worse. This script
makes such pairs reproducibly and measures every method the same way.

Simulation (per frame, fixed seeds; nothing here is tuned to any method):

- stars: the field of `astro_dia.simulate.make_star_field` (paper section
  3.1 fluxes, 30 stars per 100 x 100 pixels) plus ``--n-bright`` bright stars
  of 1e5-1e6 e- (peaks below saturation) and ``--n-saturated`` stars of
  3e6-6e6 e- whose cores saturate (SATURATE keyword written);
- PSF: elliptical Moffat profiles (beta 2.5-3, the target's no larger than
  the reference's), pixel-integrated by 5 x 5 sub-sampling; the FWHM varies
  by ~16 % corner to corner along a random direction and the ellipticity
  (0.03-0.08) and its angle vary across the field, independently in the two
  frames; the target's seeing is 1.25-1.45x the reference's;
- the target has photometric scale P in [0.85, 1.1] and a sub-pixel shift;
- noise: CCD (gain 1.5 e-/adu, read noise 6 e-), the reference a single
  epoch as deep as the target; skies of 300-1000 e- are subtracted and
  recorded in SKYLEVEL (which is what astro_dia's noise model reads);
- data in adu, without an ``uncertainty`` (as survey cutouts come).

The exact matching kernel is not in any method's model space (Moffat
profiles of different width, beta and ellipticity), as with real data.

Metrics, on the pixels valid for *every* method of the frame (common mask):

- ``core``: rms of D / sigma within 2 FWHM (target FWHM at the star) of the
  unsaturated bright stars; ``ring``: the same from 2 to 6 FWHM;
  ``rms D`` the rms of D itself (adu) in the same pixels. The stars within
  6 FWHM of a saturated star are left out, and so are the pixels within
  6 FWHM of a saturated star;
- ``far``: robust (MAD) std of D / sigma on pixels where the noiseless star
  light of both frames is below 0.1 sky sigma;
- sigma is the same for every method: the true target variance plus the
  true reference variance convolved with the square of a Gaussian
  approximation of the matching kernel (P, width from the two FWHMs).
  1.0 is the noise floor.

``ratio`` columns are per-frame ratios of a method's rms to the best
method's rms on that frame, averaged over frames (min-max in brackets).

Run from the root of the source tree (HOTPANTS is optional; build it with
``benchmarks/build_hotpants.sh``)::

    python benchmarks/bright_stars.py --hotpants /work/hotpants/bin/hotpants
    python benchmarks/bright_stars.py --study          # what costs the most
    python benchmarks/bright_stars.py --imager clip=3  # extra DifferenceImager
                                                       # settings for every
                                                       # astro_dia configuration
    python benchmarks/bright_stars.py --configs d0 d1 hotpants-ko0 \\
        --add "d0-clip: clip=3.0 loss='gaussian'"

``--imager`` values are parsed with `ast.literal_eval` (bare words are
strings: ``loss=huber``); they are applied to every astro_dia configuration
before that configuration's own settings, so ``--imager kernel_size=25``
does not change the ``K15``/``K25`` rows. ``--add "name: k=v k=v"`` adds a
configuration. The default run (3 frames of 512 x 512, the table
configurations) takes about 5 minutes on 2 idle CPU cores (the
``kernel_degree=1`` and ``huber`` fits dominate); on a loaded machine
several times longer.
"""

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.stats import mad_std
from astropy.table import QTable

from astro_dia import DifferenceImager
from astro_dia.simulate import make_star_field

GAIN = 1.5          # e-/adu
READ_NOISE = 6.0    # e-
FULL_WELL = 9.0e4   # e-, the level (sky included) at which pixels saturate
OVERSAMPLE = 5
FAR_THRESHOLD = 0.1  # star light below this many sky sigmas counts as "far"
BRIGHT_FLUX = 1e5   # e-: stars above this (in the reference) are "bright"


# -- simulation -----------------------------------------------------------------
def moffat_alpha(fwhm, beta):
    """Moffat core width alpha for a FWHM and beta."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def draw_psf_field(rng, fwhm0, beta):
    """
    A PSF that varies across the frame: returns ``psf(x, y) -> (fwhm, q, theta)``.

    The FWHM changes linearly along a random direction by +-8 % between
    opposite corners; ellipticity ``1 - q`` goes from ``e0`` at the centre
    to ``e0 + e1`` at the corners, its angle turns smoothly with the position.
    """
    direction = rng.uniform(0, 2 * np.pi)
    gradient = 0.08
    e0, e1 = rng.uniform(0.03, 0.05), rng.uniform(0.0, 0.03)
    theta0 = rng.uniform(0, np.pi)

    def psf(x, y, shape):
        ny, nx = shape
        u = (np.asarray(x, float) - (nx - 1) / 2) / ((nx - 1) / 2)
        v = (np.asarray(y, float) - (ny - 1) / 2) / ((ny - 1) / 2)
        along = (u * np.cos(direction) + v * np.sin(direction)) / (
            abs(np.cos(direction)) + abs(np.sin(direction)))
        fwhm = fwhm0 * (1.0 + gradient * along)
        q = 1.0 - (e0 + e1 * (u ** 2 + v ** 2) / 2)
        theta = theta0 + 0.3 * u - 0.2 * v
        return fwhm, q, theta

    psf.settings = dict(fwhm0=fwhm0, beta=beta, gradient=gradient, direction=direction,
                        e0=e0, e1=e1, theta0=theta0)
    return psf


def render_moffat(shape, x, y, flux, fwhm, q, theta, beta, *, floor=1e-3):
    """
    Pixel-integrated elliptical Moffat stars (0-based pixel centres).

    ``fwhm`` is the geometric-mean FWHM, ``q`` the axis ratio, ``theta`` the
    major-axis angle; each star is drawn out to where its surface
    brightness falls below ``floor`` (image units per pixel).
    """
    ny, nx = shape
    image = np.zeros(shape)
    sub = (np.arange(OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5
    for xs, ys, f, w, qq, th in zip(x, y, flux, fwhm, q, theta):
        alpha = moffat_alpha(w, beta)
        a, b = alpha / np.sqrt(qq), alpha * np.sqrt(qq)
        norm = f * (beta - 1) / (np.pi * a * b)
        # radius (along the major axis) where the profile drops below floor
        ratio = max(norm / floor, 1.0)
        radius = a * np.sqrt(max(ratio ** (1 / beta) - 1, 0.0))
        radius = int(np.clip(np.ceil(radius), 3 * w, 150))
        x0, x1 = max(0, int(np.floor(xs)) - radius), min(nx, int(np.floor(xs)) + radius + 2)
        y0, y1 = max(0, int(np.floor(ys)) - radius), min(ny, int(np.floor(ys)) + radius + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = (np.arange(x0, x1)[:, None] + sub[None, :]).ravel() - xs
        gy = (np.arange(y0, y1)[:, None] + sub[None, :]).ravel() - ys
        dx, dy = np.meshgrid(gx, gy)
        c, s = np.cos(th), np.sin(th)
        u = (c * dx + s * dy) / a
        v = (-s * dx + c * dy) / b
        values = norm * (1 + u * u + v * v) ** (-beta)
        values = values.reshape(y1 - y0, OVERSAMPLE, x1 - x0, OVERSAMPLE).mean(axis=(1, 3))
        image[y0:y1, x0:x1] += values
    return image


def simulate_pair(seed, size, *, n_bright=12, n_saturated=2):
    """One reference/target pair (CCDData in adu) and what it was made from."""
    rng = np.random.default_rng(seed)
    shape = (size, size)
    field = make_star_field(shape, density=30.0, seed=rng, bright_star_center=False)
    field_flux = np.asarray(field["flux"]) * 0.5            # 500 e- .. 5e5 e-
    margin = 20
    bx = rng.uniform(margin, size - 1 - margin, n_bright + n_saturated)
    by = rng.uniform(margin, size - 1 - margin, n_bright + n_saturated)
    bflux = np.concatenate([10 ** rng.uniform(5, 6, n_bright),
                            10 ** rng.uniform(np.log10(3e6), np.log10(6e6), n_saturated)])
    x = np.concatenate([np.asarray(field["x"]), bx])
    y = np.concatenate([np.asarray(field["y"]), by])
    flux = np.concatenate([field_flux, bflux])              # reference flux, e-

    ref_fwhm0 = rng.uniform(2.8, 3.4)
    seeing_ratio = rng.uniform(1.25, 1.45)
    ref_beta = rng.uniform(2.7, 3.0)
    tgt_beta = rng.uniform(2.5, ref_beta)
    ref_psf = draw_psf_field(rng, ref_fwhm0, ref_beta)
    tgt_psf = draw_psf_field(rng, ref_fwhm0 * seeing_ratio, tgt_beta)
    scale = rng.uniform(0.85, 1.1)
    shift = rng.uniform(-0.5, 0.5, 2)                         # (dy, dx)
    ref_sky, tgt_sky = rng.uniform(300, 1000, 2)              # e-

    rw, rq, rt = ref_psf(x, y, shape)
    tx, ty = x + shift[1], y + shift[0]
    tw, tq, tt = tgt_psf(tx, ty, shape)
    ref_stars = render_moffat(shape, x, y, flux, rw, rq, rt, ref_beta)          # e-
    tgt_stars = render_moffat(shape, tx, ty, scale * flux, tw, tq, tt, tgt_beta)

    images, variances = [], []
    for stars, sky in ((ref_stars, ref_sky), (tgt_stars, tgt_sky)):
        clean = stars + sky
        variance = READ_NOISE ** 2 + clean                    # e-^2
        raw = np.minimum(clean + rng.standard_normal(shape) * np.sqrt(variance), FULL_WELL)
        data = (raw - sky) / GAIN                             # sky-subtracted, adu
        header = fits.Header()
        header["GAIN"] = (GAIN, "e-/adu")
        header["RDNOISE"] = (READ_NOISE, "read noise (e-)")
        header["SKYLEVEL"] = (sky / GAIN, "sky level subtracted (adu)")
        header["SATURATE"] = ((FULL_WELL - sky) / GAIN, "saturation level (adu, sky-subtracted)")
        images.append(CCDData(data, unit="adu", meta=header))
        variances.append(variance / GAIN ** 2)

    # which stars saturate, and the method-independent sigma of D
    saturated = np.zeros(len(x), bool)
    for stars, sky, px, py in ((ref_stars, ref_sky, x, y), (tgt_stars, tgt_sky, tx, ty)):
        ix = np.clip(np.round(px).astype(int), 0, size - 1)
        iy = np.clip(np.round(py).astype(int), 0, size - 1)
        saturated |= stars[iy, ix] + sky > 0.8 * FULL_WELL
    kernel_sigma = np.sqrt(max((ref_fwhm0 * seeing_ratio) ** 2 - ref_fwhm0 ** 2, 0.25)) / 2.3548
    from scipy.signal import fftconvolve
    half = int(np.ceil(4 * kernel_sigma))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * kernel_sigma ** 2))
    g *= scale / g.sum()
    sigma = np.sqrt(variances[1] + fftconvolve(variances[0], g ** 2, mode="same"))
    sky_sigma = np.sqrt(READ_NOISE ** 2 + tgt_sky) / GAIN
    far = ((ref_stars / GAIN < FAR_THRESHOLD * sky_sigma)
           & (tgt_stars / GAIN < FAR_THRESHOLD * sky_sigma))
    stars = QTable({"x": tx, "y": ty, "flux": flux, "fwhm": tw, "saturated": saturated})
    truth = dict(stars=stars, sigma=sigma, far=far, scale_factor=scale, shift=shift,
                 ref_fwhm=ref_fwhm0, tgt_fwhm=ref_fwhm0 * seeing_ratio,
                 ref_beta=ref_beta, tgt_beta=tgt_beta, ref_sky=ref_sky, tgt_sky=tgt_sky,
                 target_variance=variances[1], reference_variance=variances[0])
    return images[0], images[1], truth


def star_zones(truth, shape, *, inner=2.0, outer=6.0):
    """Boolean maps: core (< inner FWHM) and ring (inner-outer FWHM) of bright stars,
    and the pixels near saturated stars (< outer FWHM), which are excluded."""
    stars = truth["stars"]
    ny, nx = shape
    core, ring, near_sat = (np.zeros(shape, bool) for _ in range(3))
    x, y = np.asarray(stars["x"]), np.asarray(stars["y"])
    fwhm, flux = np.asarray(stars["fwhm"]), np.asarray(stars["flux"])
    sat = np.asarray(stars["saturated"])

    def disc(i, radius):
        r = int(np.ceil(radius)) + 1
        x0, x1 = max(0, int(x[i]) - r), min(nx, int(x[i]) + r + 2)
        y0, y1 = max(0, int(y[i]) - r), min(ny, int(y[i]) + r + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        return (slice(y0, y1), slice(x0, x1)), np.hypot(xx - x[i], yy - y[i])

    for i in np.flatnonzero(sat):
        region, d = disc(i, outer * fwhm[i])
        near_sat[region] |= d < outer * fwhm[i]
    for i in np.flatnonzero((flux >= BRIGHT_FLUX) & ~sat):
        region, d = disc(i, outer * fwhm[i])
        core[region] |= d < inner * fwhm[i]
        ring[region] |= (d >= inner * fwhm[i]) & (d < outer * fwhm[i])
    core &= ~near_sat
    ring &= ~near_sat & ~core
    return core, ring, near_sat


# -- methods --------------------------------------------------------------------
def parse_settings(items):
    """``['kernel_size=19', 'loss=huber', 'clip=None']`` -> dict (ast.literal_eval values)."""
    settings = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"imager setting {item!r} is not key=value")
        key, value = item.split("=", 1)
        try:
            settings[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            settings[key.strip()] = value.strip()
    return settings


TABLE_CONFIGS = {
    "d0": {},
    "d1": {"kernel_degree": 1},
    "huber": {"loss": "huber"},
    "refnoise": {"reference_noise": True},
    "K15": {"kernel_size": 15},
    "K25": {"kernel_size": 25},
    "hotpants-ko0": {"hotpants": True, "ko": 0},
    "hotpants-ko1": {"hotpants": True, "ko": 1},
}

STUDY_CONFIGS = {
    "d1-K15": {"kernel_degree": 1, "kernel_size": 15},
    "d1-K25": {"kernel_degree": 1, "kernel_size": 25},
    "d1-huber": {"kernel_degree": 1, "loss": "huber"},
    "uniform": {"noise_model": "uniform"},
    "d1-uniform": {"kernel_degree": 1, "noise_model": "uniform"},
    "refnoise-K25": {"reference_noise": True, "kernel_size": 25},
    "d2": {"kernel_degree": 2},
    "oracle-w": {"oracle_weights": True},
    "d1-oracle-w": {"kernel_degree": 1, "oracle_weights": True},
    "hotpants-ko2": {"hotpants": True, "ko": 2},
}


def run_astro_dia(reference, target, truth, settings):
    settings = dict(settings)
    if settings.pop("oracle_weights", False):
        # fixed weights: the true total variance of D (what no method knows)
        target = target.copy()
        from astropy.nddata import StdDevUncertainty
        target.uncertainty = StdDevUncertainty(truth["sigma"])
        settings["noise_model"] = "uncertainty"
    if settings.get("noise_model", "ccd") in ("ccd", "emccd"):
        settings.setdefault("flat", 1)
    imager = DifferenceImager(**settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        result = imager.fit(reference, target)
        elapsed = time.perf_counter() - start
    notes = sorted({type(w.message).__name__ for w in caught})
    difference = np.where(result.difference.mask, np.nan, result.difference.data)
    return dict(difference=difference, scale_factor=result.scale_factor, time=elapsed,
                notes=notes)


def write_fits(path, data, header=None):
    fits.PrimaryHDU(np.asarray(data, np.float32), header=header).writeto(path, overwrite=True)


def run_hotpants(binary, reference, target, truth, ko, workdir, *, half_width=9, bgo=0,
                 n_stamps=None):
    """
    HOTPANTS with the reference convolved (-c t), normalised to the target (-n i).

    Its defaults are kept except: the valid-data limits (-tu/-iu at the
    SATURATE level, -tl/-il at -10 sky sigma, since the frames are
    sky-subtracted), noise images with the subtracted sky put back (-tni,
    -ini; HOTPANTS would otherwise see no sky noise), and the stamp grid
    (-nsx/-nsy): its default 10 x 10 is meant for ~2k frames; on 512 x 512
    it makes 31-pixel stamps most of which hold no star 20 sigma above the
    sky, and the kernel fails (P off by +25 % on two of the three default
    frames). With 5 x 5 one frame of three still fails the same way (one
    bad stamp); 3 x 3, 4 x 4, 6 x 6 and 8 x 8 all work on the three
    frames. The default is ``n_stamps = round(size / 128)`` per side (4 for
    512 x 512, stamps of ~110 pixels as on a 2k frame with 10 x 10 at
    half the size); ``--hotpants-stamps`` changes it.
    """
    if n_stamps is None:
        n_stamps = max(1, round(min(reference.shape) / 128))
    paths = {name: os.path.join(workdir, f"{name}.fits")
             for name in ("ref", "tgt", "refnoise", "tgtnoise", "diff", "mask")}
    write_fits(paths["ref"], reference.data)
    write_fits(paths["tgt"], target.data)
    limits = []
    for image, noise_name, prefix in ((reference, "refnoise", "t"), (target, "tgtnoise", "i")):
        h = image.header
        gain, rn, sky = h["GAIN"], h["RDNOISE"], h["SKYLEVEL"]
        # the noise HOTPANTS would compute itself if the sky were still there
        noise = np.sqrt(np.maximum(image.data + sky, 0) / gain + (rn / gain) ** 2)
        write_fits(paths[noise_name], noise)
        sky_sigma = np.sqrt(sky / gain + (rn / gain) ** 2)
        limits += [f"-{prefix}u", f"{0.999 * h['SATURATE']:.6g}",
                   f"-{prefix}l", f"{-10 * sky_sigma:.6g}",
                   f"-{prefix}g", f"{gain}", f"-{prefix}r", f"{rn}",
                   f"-{prefix}ni", paths[noise_name]]
    command = [binary, "-inim", paths["tgt"], "-tmplim", paths["ref"], "-outim", paths["diff"],
               *limits, "-r", str(half_width), "-ko", str(ko), "-bgo", str(bgo),
               "-nsx", str(n_stamps), "-nsy", str(n_stamps),
               "-c", "t", "-n", "i", "-omi", paths["mask"], "-v", "0"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or not os.path.exists(paths["diff"]):
        raise RuntimeError(f"hotpants failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    with fits.open(paths["diff"]) as hdul:
        difference = hdul[0].data.astype(float)
        header = hdul[0].header
    with fits.open(paths["mask"]) as hdul:
        mask = hdul[0].data != 0
    bad = mask | ~np.isfinite(difference) | (np.abs(difference) < 1e-20)
    scale = float(header.get("KSUM00", np.nan))
    return dict(difference=np.where(bad, np.nan, difference), scale_factor=scale, time=elapsed,
                notes=[])


# -- metrics --------------------------------------------------------------------
def frame_metrics(difference, truth, zones, common):
    core, ring, _ = zones
    z = difference / truth["sigma"]
    out = {}
    for name, zone in (("core", core), ("ring", ring)):
        use = zone & common
        out[name] = float(np.sqrt(np.mean(z[use] ** 2)))
        out[name + "_D"] = float(np.sqrt(np.mean(difference[use] ** 2)))
        out[name + "_n"] = int(use.sum())
    far = truth["far"] & common
    out["far"] = float(mad_std(z[far]))
    out["far_n"] = int(far.sum())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--n-bright", type=int, default=12)
    parser.add_argument("--n-saturated", type=int, default=2)
    parser.add_argument("--hotpants", default=os.environ.get("HOTPANTS") or
                        shutil.which("hotpants"),
                        help="HOTPANTS binary (default $HOTPANTS or hotpants on the PATH)")
    parser.add_argument("--imager", nargs="*", default=[], metavar="KEY=VALUE",
                        help="DifferenceImager settings for every astro_dia configuration")
    parser.add_argument("--configs", nargs="*", default=None,
                        help=f"configurations to run (default: {' '.join(TABLE_CONFIGS)}; "
                             f"--study adds {' '.join(STUDY_CONFIGS)})")
    parser.add_argument("--study", action="store_true",
                        help="also run the configurations that isolate what costs the most")
    parser.add_argument("--add", action="append", default=[], metavar="'NAME: K=V ...'",
                        help="an extra astro_dia configuration")
    parser.add_argument("--per-frame", action="store_true", help="print each frame's numbers")
    parser.add_argument("--hotpants-stamps", type=int, default=None,
                        help="HOTPANTS -nsx/-nsy (default round(size / 128))")
    parser.add_argument("--json", help="write the per-frame metrics to this JSON file")
    args = parser.parse_args(argv)

    base = parse_settings(args.imager)
    available = {**TABLE_CONFIGS, **STUDY_CONFIGS}
    names = list(args.configs) if args.configs else list(TABLE_CONFIGS)
    if args.study and not args.configs:
        names += list(STUDY_CONFIGS)
    configs = {}
    for name in names:
        if name not in available:
            raise SystemExit(f"unknown configuration {name!r}; choose from {list(available)}")
        configs[name] = available[name]
    for spec in args.add:
        name, _, rest = spec.partition(":")
        configs[name.strip()] = parse_settings(rest.split())
    if not args.hotpants or not os.path.exists(args.hotpants):
        dropped = [n for n, c in configs.items() if c.get("hotpants")]
        if dropped:
            print(f"# no HOTPANTS binary (--hotpants / $HOTPANTS): skipping {dropped}",
                  file=sys.stderr)
        configs = {n: c for n, c in configs.items() if not c.get("hotpants")}

    print(f"# {args.frames} frames of {args.size}x{args.size}, seed {args.seed}; "
          f"astro_dia base settings {base or '{}'}")
    results = {name: [] for name in configs}
    workdir = tempfile.mkdtemp(prefix="bright_stars_")
    try:
        for frame in range(args.frames):
            reference, target, truth = simulate_pair(
                args.seed + frame, args.size, n_bright=args.n_bright,
                n_saturated=args.n_saturated)
            stars = truth["stars"]
            n_bright = int(((np.asarray(stars["flux"]) >= BRIGHT_FLUX)
                            & ~np.asarray(stars["saturated"])).sum())
            print(f"# frame {frame}: FWHM ref {truth['ref_fwhm']:.2f} tgt {truth['tgt_fwhm']:.2f}"
                  f" px, beta {truth['ref_beta']:.2f}/{truth['tgt_beta']:.2f}, P "
                  f"{truth['scale_factor']:.4f}, shift ({truth['shift'][0]:+.2f}, "
                  f"{truth['shift'][1]:+.2f}), {len(stars)} stars, {n_bright} bright, "
                  f"{int(np.asarray(stars['saturated']).sum())} saturated", flush=True)
            outputs = {}
            for name, config in configs.items():
                if config.get("hotpants"):
                    outputs[name] = run_hotpants(args.hotpants, reference, target, truth,
                                                 config["ko"], workdir,
                                                 n_stamps=args.hotpants_stamps)
                else:
                    outputs[name] = run_astro_dia(reference, target, truth,
                                                  {**base, **config})
            common = np.logical_and.reduce([np.isfinite(o["difference"])
                                            for o in outputs.values()])
            zones = star_zones(truth, reference.shape)
            for name, output in outputs.items():
                metrics = frame_metrics(output["difference"], truth, zones, common)
                metrics.update(scale_error=output["scale_factor"] / truth["scale_factor"] - 1,
                               time=output["time"], notes=output["notes"])
                results[name].append(metrics)
                if args.per_frame:
                    print(f"#   {name:14s} core {metrics['core']:.3f} ring {metrics['ring']:.3f}"
                          f" far {metrics['far']:.3f} dP {metrics['scale_error']:+.4f} "
                          f"t {metrics['time']:.1f}s {' '.join(metrics['notes'])}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "results": results}, f, indent=1)
    print_table(results, args.frames)
    return results


def print_table(results, n_frames):
    names = list(results)
    core = np.array([[m["core"] for m in results[n]] for n in names])
    ring = np.array([[m["ring"] for m in results[n]] for n in names])
    core_ratio = core / core.min(axis=0)
    ring_ratio = ring / ring.min(axis=0)
    npix = results[names[0]][0]
    print(f"\n# near-star pixels per frame (frame 0): core {npix['core_n']}, ring "
          f"{npix['ring_n']}; far-from-star pixels {npix['far_n']}")
    header = (f"{'config':14s} {'ring ratio':>18s} {'core ratio':>18s} {'ring':>6s} "
              f"{'core':>6s} {'ringD':>6s} {'coreD':>6s} {'far':>6s} {'P/Ptrue-1':>10s} "
              f"{'time/s':>7s}  notes")
    print(header)
    print("-" * len(header))
    for i, name in enumerate(names):
        rows = results[name]
        notes = sorted({n for m in rows for n in m["notes"]})
        print(f"{name:14s} {ring_ratio[i].mean():6.3f} [{ring_ratio[i].min():.2f}-"
              f"{ring_ratio[i].max():.2f}] {core_ratio[i].mean():6.3f} "
              f"[{core_ratio[i].min():.2f}-{core_ratio[i].max():.2f}] "
              f"{ring[i].mean():6.3f} {core[i].mean():6.3f} "
              f"{np.mean([m['ring_D'] for m in rows]):6.2f} "
              f"{np.mean([m['core_D'] for m in rows]):6.2f} "
              f"{np.mean([m['far'] for m in rows]):6.3f} "
              f"{np.mean([m['scale_error'] for m in rows]):+10.4f} "
              f"{np.mean([m['time'] for m in rows]):7.1f}  {' '.join(notes)}")
    print("\n# ring/core: rms of D/sigma within 2-6 / 0-2 FWHM of unsaturated stars above "
          f"{BRIGHT_FLUX:.0e} e- (1 = noise); ratio: to the best configuration of each frame, "
          f"mean [min-max] over {n_frames} frames; ringD/coreD: rms D (adu); far: MAD std of "
          "D/sigma far from stars.")


if __name__ == "__main__":
    main()
