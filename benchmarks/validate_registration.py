"""
Validate `astro_dia.registration` and `astro_dia.reference` on the shared pyDIA series.

Registration: ``--n-frames`` frames of pyDIA's crowded bulge field
(KB13475, 512 x 512, translations up to 47 px, no WCS), spread over the
series, are registered with ``register`` (method 'auto', so star matching
alone) onto AKB13475I0028 (PFWHM 4.73 px). Each frame gets an uncertainty
from its GAIN and RDNOISE (Poisson noise of the pixels plus read noise).
Per frame the table gives
the matched stars, the model, the translation and rotation, the rms of the
matched stars, and checks independent of the registration (photutils and
scipy only, ``tests/registration/checks.py``):

- ``med dx``, ``med dy``, ``rms``: 2-D Gaussian centroids (box 2 FWHM wide)
  of the reference's bright isolated stars in the registered frame minus
  the reference's (pixels), after the sharper of the two is convolved with
  the Gaussian that brings it to the other's seeing (PFWHM). Isolated: no
  other peak (`find_peaks`, which keeps blends the star finder drops)
  above 30% of the star's within 2.5 times the broader FWHM; at most 40,
  brightest first. Why: a faint neighbour pulls a star's centroid the more
  the broader the PSF, so between frames of different seeing every blended
  star shows its own offset, the same in every bad-seeing frame whatever
  its transform (per-star offsets correlate at 0.94 between frames 0019
  and 0032). Matching the seeing makes the pull alike in both frames and
  moves no isolated star (a symmetric kernel). ``raw`` is the rms without
  matching the seeing, for comparison. ``n`` stars; ``lost`` those whose
  centroid fit landed on a neighbour (more than 1 px away), left out;
- ``flux``: median aperture flux ratio of those stars, registered frame
  over original frame (radius 2 PFWHM, local sky);
- noise (``checks.resampled_sky_noise``): ``in`` is the input sky's scatter
  over its Poisson-and-read uncertainty; ``rho1`` the correlation of
  neighbouring sky pixels (unresolved stars: the sky is not white). The
  sky residual is registered alone and, on the same sky pixels, ``meas``
  is its rms after over before, ``corr`` that ratio predicted from the
  input's measured correlations, ``prop`` the ratio of the propagated
  uncertainties and ``white`` that of white noise (``sum w**2``).
  ``inj``: white noise of the frame's uncertainty, registered alike, over
  its propagated uncertainty (``checks.injected_noise_ratio``). Registration
  propagates its input right when ``prop`` = ``white`` and ``inj`` = 1; the
  real sky behaves as its correlations say when ``meas`` = ``corr``; a
  per-pixel uncertainty cannot follow correlated noise (``meas`` >
  ``prop``).

Noise between exposures: the sky of this field is not noise (unresolved
stars, the same in every exposure), so the propagated uncertainty is also
compared with the noise itself. For pairs of exposures of the main night
taken minutes apart with the same seeing (``EXPOSURE_PAIRS``), both
registered onto the reference, ``checks.exposure_noise_ratio`` gives the
scatter of ``first - s second`` (the static sky cancels) over
``sqrt(sigma_1**2 + s**2 sigma_2**2)`` on the faintest 20% (``sky``) and
40% of the reference's pixels; ``raw`` is the same on the exposures' own
grid (the same pointing to 0.25 px), the noise model itself; ``rho`` the
raw difference's neighbour correlations (x, y) over its uncertainty, and
``pred`` the registered / raw ratio they predict for bilinear weights
(``checks.resampled_variance``).

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

#: Bright isolated stars: no neighbour peaking above this fraction of the star's
#: peak within ISOLATION times the broader FWHM of the two frames.
ISOLATION, NEIGHBOUR_FRACTION = 2.5, 0.3

#: Exposures of the night MJD 56507 taken 3-6 minutes apart, with PFWHM equal
#: to 0.07 px and flux scales to 3%.
EXPOSURE_PAIRS = (("0084", "0085"), ("0103", "0104"), ("0108", "0109"), ("0112", "0113"),
                  ("0123", "0124"), ("0126", "0127"), ("0131", "0132"), ("0136", "0137"))


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
    reference_fwhm = reference.header["PFWHM"]
    rows = []
    for name in names:
        image = read(os.path.join(folder, name))
        start = time.perf_counter()
        alignment = find_transform(image, reference, saturation=PYDIA_SATURATION)
        registered = register(image, reference, alignment=alignment)
        seconds = time.perf_counter() - start
        fwhm = image.header["PFWHM"]
        broad = max(fwhm, reference_fwhm)
        stars = checks.bright_isolated(reference, reference_fwhm, saturation=PYDIA_SATURATION,
                                       isolation=ISOLATION * broad / reference_fwhm,
                                       min_peak=10.0, fraction=NEIGHBOUR_FRACTION)
        offsets = checks.centroid_offsets(registered, reference, stars, broad,
                                          seeing=(fwhm, reference_fwhm))
        raw = checks.centroid_offsets(registered, reference, stars, broad)
        inside = stars[in_image(alignment.transform, stars, image.shape)]
        flux, _ = checks.flux_ratio(registered, image, inside, alignment.transform, 2 * fwhm)
        # A 2-D centroid that lands on a neighbour (> 1 px) is the check failing,
        # not the registration: counted (``lost``) and left out of the rms.
        lost = np.hypot(*offsets.T) > 1.0
        offsets, raw = offsets[~lost], raw[np.hypot(*raw.T) <= 1.0]
        noise = checks.resampled_sky_noise(image, reference, alignment)
        rows.append(dict(name=name[9:13], fwhm=fwhm, n=alignment.n_stars, model=alignment.model,
                         dx=alignment.translation[0], dy=alignment.translation[1],
                         rot=alignment.rotation, rms=alignment.rms, n_check=len(offsets),
                         lost=int(lost.sum()),
                         med_x=np.median(offsets[:, 0]), med_y=np.median(offsets[:, 1]),
                         c_rms=np.sqrt(np.mean(np.sum(offsets ** 2, axis=1))),
                         raw_rms=np.sqrt(np.mean(np.sum(raw ** 2, axis=1))), flux=flux,
                         noise_in=checks.sky_noise_ratio(image)[0],
                         rho=float(np.mean(noise["rho"][:2])), measured=noise["measured"],
                         propagated=noise["propagated"], white=noise["white"],
                         correlated=noise["correlated"],
                         injected=checks.injected_noise_ratio(image, reference, alignment)[0],
                         seconds=seconds))
    return rows


def print_registration(rows):
    head = (f"{'frame':>5} {'PFWHM':>5} {'stars':>5} {'model':>11} {'dx':>7} {'dy':>6} "
            f"{'rot deg':>7} {'rms':>5} | {'n':>2} {'lost':>4} {'med dx':>6} {'med dy':>6} "
            f"{'rms':>5} {'raw':>5} {'flux':>6} | {'in':>4} {'rho1':>4} {'meas':>5} "
            f"{'corr':>5} {'prop':>5} {'white':>5} {'inj':>5} {'time s':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:>5} {r['fwhm']:5.2f} {r['n']:5d} {r['model']:>11} {r['dx']:7.2f} "
              f"{r['dy']:6.2f} {r['rot']:7.4f} {r['rms']:5.3f} | {r['n_check']:2d} {r['lost']:4d} "
              f"{r['med_x']:+6.3f} {r['med_y']:+6.3f} {r['c_rms']:5.3f} {r['raw_rms']:5.3f} "
              f"{r['flux']:6.4f} | {r['noise_in']:4.2f} {r['rho']:4.2f} {r['measured']:5.3f} "
              f"{r['correlated']:5.3f} {r['propagated']:5.3f} {r['white']:5.3f} "
              f"{r['injected']:5.3f} {r['seconds']:6.2f}")
    keys = ("med_x", "med_y", "c_rms", "raw_rms", "flux", "seconds")
    worst = {k: max(abs(r[k] - (1 if k == "flux" else 0)) for r in rows) for k in keys}
    print(f"worst: |med dx| {worst['med_x']:.3f}, |med dy| {worst['med_y']:.3f}, "
          f"rms {worst['c_rms']:.3f} px (without matching the seeing {worst['raw_rms']:.3f}), "
          f"|flux - 1| {worst['flux']:.4f}, time {worst['seconds']:.2f} s")

    def spread(values):
        values = np.asarray(values)
        return f"median {np.median(values):.3f} (range {values.min():.3f}-{values.max():.3f})"

    print("real sky, registered over input: measured / predicted from its correlations "
          f"{spread([r['measured'] / r['correlated'] for r in rows])}; "
          f"measured / propagated {spread([r['measured'] / r['propagated'] for r in rows])}")
    print("propagated / white-noise prediction "
          f"{spread([r['propagated'] / r['white'] for r in rows])}; injected white noise, "
          f"scatter / propagated {spread([r['injected'] for r in rows])}")


def exposure_noise(folder, reference):
    """The propagated uncertainty against the noise between two exposures (see above)."""
    print(f"\n{'pair':>9} {'PFWHM':>11} | {'sky':>5} {'40%':>5} | {'raw sky':>7} "
          f"{'raw 40%':>7} | {'rho x':>5} {'rho y':>5} {'pred':>5} {'sky/raw':>7}")
    ratios = []
    for first, second in EXPOSURE_PAIRS:
        exposures = [read(os.path.join(folder, f"AKB13475I{n}.fits")) for n in (first, second)]
        alignments = [find_transform(e, reference, saturation=PYDIA_SATURATION)
                      for e in exposures]
        registered = [register(e, reference, alignment=a) for e, a in zip(exposures, alignments)]
        good = ~registered[0].mask & ~registered[1].mask
        row = []
        for fraction in (20, 40):
            sky = reference.data < np.percentile(reference.data, fraction)
            row.append(checks.exposure_noise_ratio(*registered, sky & good)[0])
        raw = exposures[0].data
        for fraction in (20, 40):
            sky = raw < np.percentile(raw, fraction)
            row.append(checks.exposure_noise_ratio(*exposures, sky)[0])
        rho = checks.exposure_noise_correlation(*exposures, raw < np.percentile(raw, 20))
        predicted = np.sqrt(np.mean([
            checks.resampled_variance(a.transform, e.shape, reference.shape, rho)
            / checks.resampled_variance(a.transform, e.shape, reference.shape)
            for e, a in zip(exposures, alignments)]))
        fwhm = [e.header["PFWHM"] for e in exposures]
        print(f"{first}-{second} {fwhm[0]:5.2f} {fwhm[1]:5.2f} | {row[0]:5.3f} {row[1]:5.3f} | "
              f"{row[2]:7.3f} {row[3]:7.3f} | {rho[0]:5.3f} {rho[1]:5.3f} {predicted:5.3f} "
              f"{row[0] / row[2]:7.3f}")
        ratios.append(row)
    ratios = np.array(ratios)
    print(f"registered, scatter / propagated on the sky: {ratios[:, 0].min():.3f}-"
          f"{ratios[:, 0].max():.3f} (40%: {ratios[:, 1].min():.3f}-{ratios[:, 1].max():.3f}); "
          f"raw {ratios[:, 2].min():.3f}-{ratios[:, 2].max():.3f}")


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
    exposure_noise(folder, reference)

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
