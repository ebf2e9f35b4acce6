"""
Every bad input gets a clear answer: one table of cases (issue 9).

Each row gives an action on a small simulated pair and what must happen:

- ``Raises(type, phrase)``: the exception type and a key phrase of its
  message (the problem, and where there is one, the fix);
- ``Warns(category, phrase, check)``: the warning, and a ``check`` that
  the result is usable and correctly masked;
- ``Works(check)``: no warning at all (pytest turns stray warnings into
  errors) and a ``check`` of the result;
- ``Exits(phrase)``: the ``astro-dia`` command exits with status 2 and one
  line on standard error.

Saturated pixels are not in the table: saturation masking belongs to the
``saturation`` option of `~astro_dia.DifferenceImager` and is tested with
it.
"""

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, NDData, StdDevUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from numpy.testing import assert_allclose

from astro_dia import ConvergenceWarning, DIAError, DifferenceImager
from astro_dia.cli import main
from astro_dia.exceptions import FitQualityWarning
from astro_dia.simulate import make_image_pair

from ..conftest import simple_wcs

SHAPE = (40, 40)
KERNEL = 7
HALF = KERNEL // 2
SMALL = dict(kernel_size=KERNEL, flat=1, sky=0)


# -- the data every case starts from ------------------------------------------------------
@pytest.fixture(scope="module")
def pair():
    reference, target, _ = make_image_pair(shape=SHAPE, density=60, seed=0)
    return reference, target


@dataclass
class Context:
    reference: CCDData
    target: CCDData
    tmp_path: object
    capsys: object


def _copy(image, *, data=None, unit=None, meta=None, **extra):
    """A new CCDData from ``image`` with some parts replaced."""
    return CCDData(np.array(image.data if data is None else data, copy=True),
                   unit=image.unit if unit is None else unit,
                   meta=dict(image.meta) if meta is None else meta, **extra)


def _without(meta, *keys):
    return {key: value for key, value in dict(meta).items() if key not in keys}


def _wcs(crpix=(20.0, 20.0)):
    return simple_wcs(crpix)


def _one_pixel(where=(20, 21)):
    data = np.zeros(SHAPE, bool)
    data[where] = True
    return data


def _fit(ctx, reference=None, target=None, **settings):
    settings = dict(SMALL, **settings)
    return DifferenceImager(**settings).fit(
        ctx.reference if reference is None else reference,
        ctx.target if target is None else target)


def _cli(ctx, *argv, write=True, **replace):
    """Write the pair to FITS files and run ``astro-dia diff`` on them."""
    paths = {}
    for name in ("reference", "target"):
        image = replace.get(name, getattr(ctx, name))
        paths[name] = ctx.tmp_path / f"{name}.fits"
        if write and isinstance(image, CCDData):
            image.write(paths[name])
        elif write:
            _write_nddata(image, paths[name])
    argv = [str(paths["reference"]), str(paths["target"]), "--kernel-size", str(KERNEL),
            "--flat", "1", "--sky", "0", "--out", str(ctx.tmp_path / "difference.fits"),
            *argv]
    return main(["diff", *argv])


# -- expectations --------------------------------------------------------------------------
@dataclass
class Raises:
    error: type
    phrase: str


@dataclass
class Warns:
    category: type
    phrase: str
    check: object


@dataclass
class Works:
    check: object


@dataclass
class Exits:
    phrase: str


# -- checks of usable, correctly masked results --------------------------------------------
def _usable(result, ctx):
    """Shape and unit of the target, finite wherever unmasked, fitted pixels unmasked."""
    diff = result.difference
    assert diff.shape == ctx.target.shape and diff.unit == ctx.target.unit
    assert np.isfinite(diff.data[~diff.mask]).all()
    assert np.isfinite(diff.uncertainty.array[~diff.mask]).all()
    assert not diff.mask[result.fit_mask].any()
    assert np.isfinite(result.scale_factor) and 0.9 < result.scale_factor < 1.1


def _masked_at(*pixels):
    def check(result, ctx):
        _usable(result, ctx)
        for pixel in pixels:
            assert result.difference.mask[pixel]
            assert not result.fit_mask[pixel]
    return check


def _footprint_masked(centre):
    def check(result, ctx):
        _usable(result, ctx)
        y, x = centre
        box = (slice(y - HALF, y + HALF + 1), slice(x - HALF, x + HALF + 1))
        assert result.difference.mask[box].all()
        assert not result.fit_mask[box].any()
        assert np.isnan(result.model.data[box]).all()
        # ... and only there (plus the border)
        inner = np.ones(SHAPE, bool)
        inner[:HALF], inner[-HALF:], inner[:, :HALF], inner[:, -HALF:] = (False,) * 4
        inner[box] = False
        assert not result.difference.mask[inner].any()
    return check


def _same_as_plain_fit(result, ctx):
    _usable(result, ctx)
    plain = _fit(ctx)
    assert_allclose(result.scale_factor, plain.scale_factor, rtol=1e-5)
    assert_allclose(result.background_offset.value, plain.background_offset.value,
                    rtol=1e-5, atol=1e-3)


def _constant_target(result, ctx):
    assert abs(result.scale_factor) < 1e-3
    # B0 sits 1 / (2 G F) = 0.5 adu below the data (the sum(ln sigma) term; see
    # DifferenceImager's Notes).
    assert_allclose(result.background_offset.value, 300.0 - 0.5, atol=0.05)
    assert np.isfinite(result.difference.data[result.fit_mask]).all()


def _float16_mix(result, ctx):
    _usable(result, ctx)
    rounded = _copy(ctx.reference, data=ctx.reference.data.astype(np.float16).astype(float))
    assert_allclose(result.scale_factor, _fit(ctx, reference=rounded).scale_factor,
                    rtol=1e-6)


def _not_converged(result, ctx):
    assert result.converged is False
    assert result.difference.header["DIA_CONV"] is False
    assert np.isfinite(result.difference.data[result.fit_mask]).all()


def _with_wcs(result, ctx):
    _usable(result, ctx)
    assert result.difference.wcs is not None


def _nan_sigma(ctx):
    sigma = np.array(ctx.target.uncertainty.array, copy=True)
    sigma[20, 21] = np.nan
    sigma[25, 10] = 0.0
    return _copy(ctx.target, uncertainty=StdDevUncertainty(sigma))


def _flat_with_holes():
    flat = np.ones(SHAPE)
    flat[20, 21] = 0.0
    flat[25, 10] = np.nan
    flat[12, 30] = -1.0
    return flat


def _with_pixel(image, value, where=(20, 21)):
    data = np.array(image.data, copy=True)
    data[where] = value
    return _copy(image, data=data)


CUDA_ABSENT = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")

# -- the table -----------------------------------------------------------------------------
CASES = [
    # what arrives
    pytest.param(lambda c: _fit(c, reference=c.reference.data),
                 Raises(TypeError, "wrap an array as CCDData"), id="reference-is-ndarray"),
    pytest.param(lambda c: _fit(c, target=c.target.data.tolist()),
                 Raises(TypeError, "target must be a CCDData or NDData, got list"),
                 id="target-is-list"),
    pytest.param(lambda c: _fit(c, reference=CCDData(np.ones((2, *SHAPE)), unit="adu")),
                 Raises(ValueError, "reference must be a 2-D image, got data of shape (2, 40, 40)"),
                 id="data-3d"),
    pytest.param(lambda c: _fit(c, target=NDData(np.ones((0, 40)), unit="adu")),
                 Raises(ValueError, "target is empty"), id="data-empty"),
    pytest.param(lambda c: _fit(c, reference=NDData(c.reference.data.astype(complex),
                                                    unit="adu", meta=c.reference.meta)),
                 Raises(TypeError, "data must be numeric, got dtype complex128"),
                 id="data-complex"),
    pytest.param(lambda c: _fit(c, target=NDData(c.target.data > 300, unit="adu")),
                 Raises(TypeError, "data must be numeric, got dtype bool"), id="data-bool"),
    pytest.param(lambda c: _fit(c, reference=c.reference[:36, :40]),
                 Raises(ValueError, "must be on the same pixel grid, got shapes (36, 40) "
                                    "and (40, 40); resample"), id="shape-mismatch"),
    pytest.param(lambda c: _fit(c, reference=NDData(c.reference.data, unit="adu",
                                                    mask=np.zeros((3, 3), bool))),
                 Raises(ValueError, "reference mask has shape (3, 3) but its data (40, 40)"),
                 id="mask-shape-mismatch"),
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference, unit="electron")),
                 Raises(u.UnitsError, "reference unit electron cannot be converted to the "
                                      "target unit adu"), id="unit-incompatible"),
    pytest.param(lambda c: _fit(c, reference=NDData(c.reference.data, meta=c.reference.meta)),
                 Raises(u.UnitsError, "reference has no unit but the target is in adu; give "
                                      "both images a unit"), id="unit-missing"),
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference, data=c.reference.data / 1000,
                                                   unit=u.Unit(1000 * u.adu))),
                 Works(_same_as_plain_fit), id="unit-compatible-is-converted"),
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference, wcs=_wcs((22.0, 20.0))),
                                target=_copy(c.target, wcs=_wcs())),
                 Raises(ValueError, "WCS disagree by up to 2 pixels (tolerance 0.1)"),
                 id="wcs-mismatch"),
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference, wcs=_wcs((20.05, 20.0))),
                                target=_copy(c.target, wcs=_wcs())),
                 Works(_with_wcs), id="wcs-within-tolerance"),
    # bad, masked, constant pixels
    pytest.param(lambda c: _fit(c, target=_with_pixel(c.target, np.nan)),
                 Warns(AstropyUserWarning, "target has 1 NaN or infinite pixels that are not "
                                           "in its mask", _masked_at((20, 21))),
                 id="nan-in-target"),
    pytest.param(lambda c: _fit(c, reference=_with_pixel(c.reference, np.inf)),
                 Warns(AstropyUserWarning, "reference has 1 NaN or infinite pixels",
                       _footprint_masked((20, 21))), id="inf-in-reference"),
    pytest.param(lambda c: _fit(c, target=_copy(_with_pixel(c.target, -np.inf),
                                                mask=_one_pixel())),
                 Works(_masked_at((20, 21))), id="masked-inf-is-silent"),
    pytest.param(lambda c: _fit(c, target=_copy(c.target, mask=np.ones(SHAPE, bool))),
                 Raises(DIAError, "every pixel of the target is masked"), id="target-all-masked"),
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference, data=np.full(SHAPE, np.nan))),
                 Raises(DIAError, "every pixel of the reference is masked or not finite"),
                 id="reference-all-nan-one-error-no-warning"),
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference, data=np.full(SHAPE, 100.0))),
                 Raises(DIAError, "reference is constant"), id="reference-constant"),
    pytest.param(lambda c: _fit(c, target=_copy(c.target, data=np.full(SHAPE, 300.0))),
                 # noiseless: D/sigma ~ 0, which the fit-quality check reports
                 Warns(FitQualityWarning, "robust standard deviation of", _constant_target),
                 id="target-constant-gives-P-zero"),
    # dtypes and byte order
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference,
                                                   data=np.rint(c.reference.data).astype(np.int16)),
                                target=_copy(c.target, data=np.rint(c.target.data).astype(np.int32))),
                 Works(_usable), id="integer-dtypes"),
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference,
                                                   data=c.reference.data.astype(">f8")),
                                target=_copy(c.target, data=c.target.data.astype(">f4"))),
                 Works(_usable), id="big-endian"),
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference,
                                                   data=c.reference.data.astype(np.float16))),
                 Works(_float16_mix), id="float16-float64-mix"),
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference, data=np.full(SHAPE, np.float16(np.inf)))),
                 Raises(DIAError, "reference is masked or not finite"),
                 id="float16-all-inf"),
    # detector settings
    pytest.param(lambda c: _fit(c, gain=0.0), Raises(ValueError, "gain must be positive and "
                                                                 "finite, got 0.0 electron / adu"),
                 id="gain-zero"),
    pytest.param(lambda c: _fit(c, gain=np.nan * u.electron / u.adu),
                 Raises(ValueError, "gain must be positive and finite"), id="gain-nan"),
    pytest.param(lambda c: _fit(c, gain=2 * u.electron),
                 Raises(u.UnitsError, "gain must be in units convertible to electron / adu, "
                                      "got electron"), id="gain-wrong-unit"),
    pytest.param(lambda c: _fit(c, read_noise=-1 * u.electron),
                 Raises(ValueError, "read_noise must be non-negative and finite"),
                 id="read-noise-negative"),
    pytest.param(lambda c: _fit(c, read_noise=np.inf),
                 Raises(ValueError, "read_noise must be non-negative and finite"),
                 id="read-noise-inf"),
    pytest.param(lambda c: _fit(c, noise_model="emccd", em_gain=0.0),
                 Raises(ValueError, "em_gain must be positive and finite"), id="em-gain-zero"),
    pytest.param(lambda c: _fit(c, noise_model="emccd", em_gain=np.nan),
                 Raises(ValueError, "em_gain must be positive and finite"), id="em-gain-nan"),
    pytest.param(lambda c: _fit(c, target=_copy(c.target, meta=dict(c.target.meta, GAIN=0.0))),
                 Raises(ValueError, "gain must be positive and finite, got 0.0 electron / adu "
                                    "(from header keyword GAIN)"), id="header-gain-zero"),
    pytest.param(lambda c: _fit(c, target=_copy(c.target, meta=dict(c.target.meta, GAIN="high"))),
                 Raises(ValueError, "header keyword GAIN should give the gain (e-/ADU) as a "
                                    "finite number, got 'high'"), id="header-gain-not-a-number"),
    pytest.param(lambda c: _fit(c, target=_copy(c.target, meta=_without(c.target.meta, "GAIN"))),
                 Raises(ValueError, "none of the header keywords GAIN, EGAIN or CCDGAIN is set; "
                                    "pass gain="), id="header-gain-missing"),
    pytest.param(lambda c: _fit(c, target=_copy(c.target,
                                                meta=_without(c.target.meta, "RDNOISE"))),
                 Raises(ValueError, "RDNOISE, READNOIS, RON or READNOISE is set; pass "
                                    "read_noise="), id="header-read-noise-missing"),
    pytest.param(lambda c: _fit(c, noise_model="emccd"),
                 Raises(ValueError, "EMCCDGAI, GAINEM, EMCCDGAIN or EM GAIN is set; "
                                    "pass em_gain="),
                 id="header-em-gain-missing"),
    pytest.param(lambda c: _fit(c, flat=None),
                 Raises(ValueError, "flat=1 for a flat-fielded image"), id="flat-missing"),
    pytest.param(lambda c: _fit(c, target=_copy(c.target,
                                                meta=dict(c.target.meta, SKYLEVEL="n/a")),
                                sky=None),
                 Raises(ValueError, "header keyword SKYLEVEL should give the subtracted sky "
                                    "level as a finite number"), id="header-sky-not-a-number"),
    pytest.param(lambda c: _fit(c, flat=_flat_with_holes()),
                 Works(_masked_at((20, 21), (25, 10), (12, 30))), id="flat-zero-nan-negative"),
    pytest.param(lambda c: _fit(c, flat=np.zeros(SHAPE)),
                 Raises(ValueError, "flat has no positive finite pixel"), id="flat-all-zero"),
    pytest.param(lambda c: _fit(c, flat=np.ones((20, 20))),
                 Raises(ValueError, "flat must have the image shape (40, 40), got (20, 20)"),
                 id="flat-wrong-shape"),
    pytest.param(lambda c: _fit(c, reference=_copy(c.reference, unit="adu / s"),
                                target=_copy(c.target, unit="adu / s")),
                 Raises(u.UnitsError, "needs data in counts (adu or electron), but the image "
                                      "unit is adu / s"), id="rate-unit-with-ccd-model"),
    pytest.param(lambda c: _fit(c, target=_nan_sigma(c), noise_model="uncertainty", flat=None,
                                sky=None),
                 Works(_masked_at((20, 21), (25, 10))), id="uncertainty-nan-and-zero"),
    pytest.param(lambda c: _fit(c, target=_copy(c.target), noise_model="uncertainty",
                                flat=None, sky=None),
                 Raises(ValueError, "target has no uncertainty; attach one"),
                 id="uncertainty-missing"),
    # kernel and unknowns
    pytest.param(lambda c: _fit(c, kernel_size=4), Raises(ValueError, "kernel_size must be odd, "
                                                                      "got 4"), id="kernel-even"),
    pytest.param(lambda c: _fit(c, kernel_size=0),
                 Raises(ValueError, "kernel_size must be positive, got 0"), id="kernel-zero"),
    pytest.param(lambda c: _fit(c, kernel_size=-3),
                 Raises(ValueError, "kernel_size must be positive, got -3"), id="kernel-negative"),
    pytest.param(lambda c: _fit(c, kernel_size=7.0),
                 Raises(TypeError, "kernel_size must be an odd integer, got 7.0"),
                 id="kernel-float"),
    pytest.param(lambda c: _fit(c, kernel_size=41),
                 Raises(ValueError, "kernel_size 41 does not fit the image of shape (40, 40)"),
                 id="kernel-larger-than-image"),
    pytest.param(lambda c: _fit(c, kernel_size=25),
                 Raises(DIAError, "only 256 usable pixels for 626 unknowns; use a smaller "
                                  "kernel_size"), id="too-few-pixels"),
    pytest.param(lambda c: _fit(c, target=_copy(c.target, mask=np.arange(1600).reshape(SHAPE)
                                                % 20 != 0)),
                 Raises(DIAError, "usable pixels for 50 unknowns"),
                 id="too-few-pixels-after-masking"),
    pytest.param(lambda c: _fit(c, loss="huber", max_iter=1,
                                target=_with_pixel(_with_pixel(c.target, 5e4, (15, 15)),
                                                   -3e3, (25, 22))),
                 Warns(ConvergenceWarning, "without converging (maximum number of iterations "
                                         "reached); raise max_iter",
                       _not_converged), id="non-convergence"),
    # settings
    pytest.param(lambda c: _fit(c, dtype="float16"),
                 Raises(ValueError, "dtype must be 'float32' or 'float64', got 'float16'"),
                 id="dtype-float16"),
    pytest.param(lambda c: _fit(c, device="cuda"),
                 Raises(ValueError, "no CUDA device is available; use device='cpu'"),
                 id="cuda-unavailable", marks=CUDA_ABSENT),
    pytest.param(lambda c: _fit(c, device="tpu"), Raises(ValueError, "device must be 'auto', "
                                                                     "'cpu', 'cuda'"),
                 id="device-unknown"),
    pytest.param(lambda c: _fit(c, regularization=np.nan),
                 Raises(ValueError, "regularization must be non-negative and finite"),
                 id="regularization-nan"),
    # the command line
    pytest.param(lambda c: _cli(c, write=False),
                 Exits("reference file '.*reference.fits' does not exist"), id="cli-missing-file"),
    pytest.param(lambda c: _cli(c, "--kernel-size", "8"),
                 Exits("kernel_size must be odd, got 8"), id="cli-kernel-even"),
    pytest.param(lambda c: _cli(c, target=NDData(c.target.data)),
                 Exits("target file '.*target.fits' has no BUNIT keyword; give its unit with "
                       "--unit"), id="cli-no-bunit"),
    pytest.param(lambda c: _cli(c, "--out", str(c.tmp_path / "target.fits"), "--overwrite"),
                 Exits("is an input file; choose another name"), id="cli-out-is-an-input"),
    pytest.param(lambda c: _cli(c, "--flat", "nonesuch"),
                 Exits("--flat 'nonesuch' is neither a number nor an existing FITS file"),
                 id="cli-flat-not-found"),
    pytest.param(lambda c: _cli(c, "--gain", "-2"),
                 Exits("gain must be positive and finite"), id="cli-gain-negative"),
    pytest.param(lambda c: _cli(c, reference=_copy(c.reference, unit="electron")),
                 Exits("reference unit electron cannot be converted to the target unit adu"),
                 id="cli-unit-mismatch"),
]


def _write_nddata(image, path):
    """NDData has no ``write``: the CLI cases write plain FITS through this."""
    fits.PrimaryHDU(np.asarray(image.data)).writeto(path)


@pytest.mark.parametrize("action, outcome", CASES)
def test_bad_input(pair, tmp_path, capsys, action, outcome):
    reference, target = pair
    ctx = Context(reference, target, tmp_path, capsys)
    if isinstance(outcome, Raises):
        with pytest.raises(outcome.error, match=re.escape(outcome.phrase)):
            action(ctx)
    elif isinstance(outcome, Warns):
        with pytest.warns(outcome.category, match=re.escape(outcome.phrase)):
            result = action(ctx)
        outcome.check(result, ctx)
    elif isinstance(outcome, Works):
        outcome.check(action(ctx), ctx)
    else:
        capsys.readouterr()
        status = action(ctx)
        out, err = capsys.readouterr()
        assert status == 2
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert re.match(r"astro-dia: error: .*" + outcome.phrase, lines[0]), lines[0]
        assert not (tmp_path / "difference.fits").exists()


def test_the_table_is_large_enough():
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("value, error, message", [
    (0, ValueError, "width must be a positive number"),
    (-2.5, ValueError, "width must be a positive number"),
    (float("nan"), ValueError, "width must be a positive number"),
    (float("inf"), ValueError, "width must be a positive number"),
    ("wide", TypeError, "width must be a number, got 'wide'"),
    (True, TypeError, "width must be a number, got True"),
    (None, TypeError, "width must be a number, got None")])
def test_positive_number_names_the_problem(value, error, message):
    from astro_dia.fitting._validation import positive_number

    with pytest.raises(error, match=message):
        positive_number(value, "width")


def test_positive_number_returns_a_float():
    from astro_dia.fitting._validation import positive_number

    assert positive_number(np.float32(2.5), "width") == 2.5
    assert isinstance(positive_number(3, "width"), float)
