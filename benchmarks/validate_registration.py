"""
Validate `astro_dia.registration` and `astro_dia.reference` on the shared pyDIA series.

Registration: ``--n-frames`` frames of pyDIA's crowded bulge field
(KB13475, 512 x 512, translations up to 47 px, no WCS), spread over the
series, are registered with ``register`` (method 'auto', so star matching
alone) onto AKB13475I0028 (PFWHM 4.73 px). Each frame gets an uncertainty
from its GAIN and RDNOISE (Poisson noise of the pixels plus read noise).
Per frame the table gives the matched stars, the model, the translation and
rotation, the rms of the matched stars, and three checks independent of the
registration (photutils only, ``tests/registration/checks.py``):

- ``med dx``, ``med dy``, ``rms``: 2-D Gaussian centroids of the
  reference's bright isolated stars in the registered frame minus the
  reference's (pixels); ``n`` stars, ``lost`` those whose centroid fit
  landed on a neighbour (more than 1 px away), left out of the rms;
- ``flux``: median aperture flux ratio of those stars, registered frame
  over original frame (radius 2 PFWHM, local sky);
- ``noise in``, ``noise out``: sky scatter (stars masked, slow sky
  removed) over the propagated uncertainty, before and after registration.

Reference: ``build_reference`` on the 34 frames of nights 56470-56482
(the frames the series offers for a reference), default settings: the
frames chosen, the FWHM, NCOMBINE and the time.

Run from the root of the source tree (about a minute)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/validate_registration.py
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from astro_dia.reference import build_reference  # noqa: E402
from astro_dia.registration import find_transform, register  # noqa: E402
from real_pairs import PYDIA_DIR, PYDIA_REFERENCE, PYDIA_SATURATION, default_data_dir  # noqa: E402
from tests.registration import checks  # noqa: E402


def read(path):
    """A pyDIA frame as CCDData (adu) with a GAIN/RDNOISE uncertainty."""
    with fits.open(path) as hdul:
        data = np.asarray(hdul[0].data, float)
        header = hdul[0].header.copy()
    gain, read_noise = float(header["GAIN"]), float(header["RDNOISE"])
    sigma = np.sqrt(np.maximum(data, 0) / gain + (read_noise / gain) ** 2)
    header["FILENAME"] = os.path.basename(path)
    return CCDData(data, unit="adu", meta=header, uncertainty=StdDevUncertainty(sigma))


def in_image(transform, xy, shape, margin=15):
    image_xy = transform.inverse(xy)
    return ((image_xy[:, 0] > margin) & (image_xy[:, 0] < shape[1] - 1 - margin)
            & (image_xy[:, 1] > margin) & (image_xy[:, 1] < shape[0] - 1 - margin))


def register_series(folder, names, reference):
    stars = checks.bright_isolated(reference, reference.header["PFWHM"],
                                   saturation=PYDIA_SATURATION, isolation=2.5, min_peak=10.0)
    rows = []
    for name in names:
        image = read(os.path.join(folder, name))
        start = time.perf_counter()
        alignment = find_transform(image, reference, saturation=PYDIA_SATURATION)
        registered = register(image, reference, alignment=alignment)
        seconds = time.perf_counter() - start
        fwhm = image.header["PFWHM"]
        offsets = checks.centroid_offsets(registered, reference, stars, max(fwhm, 4.73))
        inside = stars[in_image(alignment.transform, stars, image.shape)]
        flux, _ = checks.flux_ratio(registered, image, inside, alignment.transform, 2 * fwhm)
        # A 2-D centroid that lands on a neighbour (> 1 px) is the check failing,
        # not the registration: counted (``lost``) and left out of the rms.
        lost = np.hypot(*offsets.T) > 1.0
        offsets = offsets[~lost]
        rows.append(dict(name=name[9:13], fwhm=fwhm, n=alignment.n_stars, model=alignment.model,
                         dx=alignment.translation[0], dy=alignment.translation[1],
                         rot=alignment.rotation, rms=alignment.rms, n_check=len(offsets),
                         lost=int(lost.sum()),
                         med_x=np.median(offsets[:, 0]), med_y=np.median(offsets[:, 1]),
                         c_rms=np.sqrt(np.mean(np.sum(offsets ** 2, axis=1))), flux=flux,
                         noise_in=checks.sky_noise_ratio(image)[0],
                         noise_out=checks.sky_noise_ratio(registered)[0], seconds=seconds))
    return rows


def print_registration(rows):
    head = (f"{'frame':>5} {'PFWHM':>5} {'stars':>5} {'model':>11} {'dx':>8} {'dy':>7} "
            f"{'rot deg':>8} {'rms':>5} | {'n':>2} {'lost':>4} {'med dx':>6} {'med dy':>6} "
            f"{'rms':>5} "
            f"{'flux':>6} {'noise in':>8} {'noise out':>9} {'time s':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:>5} {r['fwhm']:5.2f} {r['n']:5d} {r['model']:>11} {r['dx']:8.2f} "
              f"{r['dy']:7.2f} {r['rot']:8.4f} {r['rms']:5.3f} | {r['n_check']:2d} {r['lost']:4d} "
              f"{r['med_x']:+6.3f} {r['med_y']:+6.3f} {r['c_rms']:5.3f} {r['flux']:6.4f} "
              f"{r['noise_in']:8.2f} {r['noise_out']:9.2f} {r['seconds']:6.2f}")
    keys = ("med_x", "med_y", "c_rms", "flux", "seconds")
    worst = {k: max(abs(r[k] - (1 if k == "flux" else 0)) for r in rows) for k in keys}
    print(f"worst: |med dx| {worst['med_x']:.3f}, |med dy| {worst['med_y']:.3f}, "
          f"rms {worst['c_rms']:.3f} px, |flux - 1| {worst['flux']:.4f}, "
          f"time {worst['seconds']:.2f} s")
    ratio = np.array([r["noise_out"] / r["noise_in"] for r in rows])
    print(f"noise out / noise in: median {np.median(ratio):.2f} "
          f"(range {ratio.min():.2f}-{ratio.max():.2f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=default_data_dir(), help="folder of the real frames")
    parser.add_argument("--n-frames", type=int, default=15, help="frames to register")
    args = parser.parse_args(argv)
    folder = os.path.join(args.data, PYDIA_DIR)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".fits"))
    reference = read(os.path.join(folder, PYDIA_REFERENCE))
    others = [n for n in names if n != PYDIA_REFERENCE]
    step = max(1, len(others) // args.n_frames)
    chosen = others[::step][:args.n_frames]
    print(f"Registration onto {PYDIA_REFERENCE} (PFWHM {reference.header['PFWHM']:.2f} px), "
          "method='auto' (no WCS: stars), resample=True\n")
    print_registration(register_series(folder, chosen, reference))

    early = [read(os.path.join(folder, n)) for n in names
             if fits.getval(os.path.join(folder, n), "MJD-OBS") < 56500]
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = build_reference(early, saturation=PYDIA_SATURATION)
    seconds = time.perf_counter() - start
    header = built.header
    used = [header[f"REFFR{k:03d}"][9:13] for k in range(1, header["NCOMBINE"] + 1)]
    fwhm = [header[f"REFFW{k:03d}"] for k in range(1, header["NCOMBINE"] + 1)]
    scales = [header[f"REFSC{k:03d}"] for k in range(1, header["NCOMBINE"] + 1)]
    print(f"\nbuild_reference on the {len(early)} frames of nights 56470-56482 "
          "(default settings)")
    print(f"  chosen (best first): {' '.join(used)}")
    print(f"  their FWHM (px): {' '.join(f'{f:.2f}' for f in fwhm)}")
    print(f"  their flux scales: {' '.join(f'{s:.3f}' for s in scales)}")
    print(f"  NCOMBINE {header['NCOMBINE']}, effective FWHM {header['REFFWHM']:.2f} px, "
          f"masked {np.mean(built.mask):.1%}, noise ratio "
          f"{checks.sky_noise_ratio(built)[0]:.2f}, {seconds:.1f} s, "
          f"{len(caught)} warnings")


if __name__ == "__main__":
    main()
