"""
`astro_dia.reference.build_reference` on simulated frames of one field.

Five frames of one star field (`tests.registration.simulated.star_pair`),
shifted by known amounts, with different seeing, sky and transparency; the
truth is how they were drawn.
"""

import numpy as np
import pytest
from astropy.nddata import CCDData, StdDevUncertainty

from astro_dia.reference import ReferenceWarning, build_reference, frame_statistics
from astro_dia.registration import RegistrationError

from ..registration import checks
from ..registration.simulated import observe, render, star_field

SHAPE = (140, 140)
#: Per frame: shift (x, y), FWHM, sky, transparency.
FRAMES = [((0.0, 0.0), 3.4, 300.0, 1.0), ((2.3, -1.6), 3.6, 350.0, 0.9),
          ((-3.4, 0.7), 3.5, 280.0, 1.1), ((1.1, 2.9), 3.7, 320.0, 1.0),
          ((-0.6, -2.2), 5.5, 310.0, 1.0), ((0.4, 0.3), 3.6, 1500.0, 1.0)]


def make_frames(seed=0):
    rng = np.random.default_rng(seed)
    x, y, flux = star_field(rng, SHAPE, 90, margin=10)
    frames = []
    for (dx, dy), fwhm, sky, transparency in FRAMES:
        model = render(SHAPE, x - dx, y - dy, flux * transparency, fwhm)
        frames.append(observe(model, rng, sky))
    return frames


@pytest.fixture(scope="module")
def frames():
    return make_frames()


@pytest.fixture(scope="module")
def reference(frames):
    frames = [f.copy() for f in frames]
    frames[2].data[:, 70] += 3000.0          # a bad column in one frame
    return build_reference(frames, n_frames=4, names=[f"f{k}" for k in range(len(frames))])


def test_frames_chosen_by_seeing_and_sky(frames):
    table = frame_statistics(frames)
    assert np.argmin(table["fwhm"]) == 0
    assert table["fwhm"][4] > 1.3 * table["fwhm"][0]
    assert table["sky"][5] > 4 * table["sky"][0]


def test_header(reference):
    header = reference.header
    assert header["NCOMBINE"] == 4
    assert header["REFBEST"] == "f0"
    # The blurred frame 4 and the bright-sky frame 5 are left out.
    assert sorted(header[f"REFFR{k:03d}"] for k in range(1, 5)) == ["f0", "f1", "f2", "f3"]
    assert 3.2 < header["REFFWHM"] < 4.2
    scales = {header[f"REFFR{k:03d}"]: header[f"REFSC{k:03d}"] for k in range(1, 5)}
    assert abs(scales["f1"] - 1 / 0.9) < 0.02 and abs(scales["f2"] - 1 / 1.1) < 0.02


def test_bad_column_rejected(reference, frames):
    """Frame 2's column 70 (+3000 adu) lands at reference x = 66.6: it must not show."""
    clean = build_reference(frames, n_frames=4, names=[f"f{k}" for k in range(len(frames))])
    band = (slice(10, -10), slice(64, 70))
    difference = reference.data[band] - clean.data[band]
    sigma = clean.uncertainty.array[band]
    # Registered, the defect is at least 0.4 * 3000 adu in each of two columns.
    # Left out, it changes the star cores it crosses by the PSF difference
    # of one frame (a few percent of the peak), and the sky by noise.
    assert np.all(np.abs(np.nanmedian(difference / sigma, axis=0)) < 0.5)
    assert np.nanmax(np.abs(difference)) < 300


def test_uncertainty_propagated_and_agrees_with_scatter(reference, frames):
    sigma = reference.uncertainty.array
    single = frames[0].uncertainty.array
    good = ~reference.mask
    # Four frames: about half the single frame's noise (less from resampling).
    assert 0.3 < np.median(sigma[good] / single[good]) < 0.6
    ratio, _ = checks.sky_noise_ratio(reference)
    assert abs(ratio - 1) < 0.1


def test_mask_where_too_many_inputs_are_bad(frames):
    frames = [f.copy() for f in frames[:4]]
    for k in range(3):
        frames[k].mask = np.zeros(SHAPE, bool)
        frames[k].mask[20:30, 100:110] = True
    frames[0].mask[50:60, 20:30] = True
    reference = build_reference(frames, n_frames=4, background="offset")
    # After the shifts, the three masked boxes share x 103-106, y 21-28.
    assert reference.mask[22:28, 104:106].all()      # bad in 3 of 4
    assert not reference.mask[52:58, 22:28].any()    # bad in 1 of 4
    assert reference.header["NCOMBINE"] == 4


def test_few_frames_warn_and_errors(frames):
    with pytest.warns(ReferenceWarning, match="fewer than three"):
        reference = build_reference(frames[:2], n_frames=2)
    assert reference.header["NCOMBINE"] == 2
    with pytest.raises(RegistrationError, match="at least one"):
        build_reference([])
    mixed = [frames[0], CCDData(frames[1].data, unit="adu")]
    with pytest.raises(RegistrationError, match="uncertainty"):
        build_reference(mixed)
    with pytest.raises(ValueError, match="background"):
        build_reference(frames[:3], background="median")


def test_inputs_untouched(frames):
    copies = [f.data.copy() for f in frames[:3]]
    build_reference(frames[:3], sigma=None)
    for frame, data in zip(frames[:3], copies):
        np.testing.assert_array_equal(frame.data, data)
        assert frame.mask is None and isinstance(frame.uncertainty, StdDevUncertainty)


def test_a_frame_without_stars_is_never_chosen(frames):
    # A blank (clouded-out) frame: its star finder finds nothing, and a FWHM
    # measured on nothing must not make it the "sharpest" frame.
    rng = np.random.default_rng(3)
    blank = CCDData(rng.normal(300.0, 17.0, SHAPE), unit=frames[0].unit,
                    uncertainty=StdDevUncertainty(np.full(SHAPE, 17.0)))
    table = frame_statistics([blank] + list(frames[:2]))
    assert table["n_stars"][0] < 5
    with pytest.warns(ReferenceWarning, match="only 2 frame"):
        reference = build_reference([blank] + list(frames[:2]), names=["blank", "f0", "f1"])
    assert reference.header["REFBEST"] == "f0"
    assert "blank" not in [reference.header[f"REFFR{k:03d}"]
                           for k in range(1, reference.header["NCOMBINE"] + 1)]
