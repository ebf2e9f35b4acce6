"""
Inputs are never mutated: data, mask, uncertainty, header/meta, WCS, files (issue 9).

Every public entry point is called on inputs whose arrays are made
read-only (so that an in-place write raises at once) and compared, after
the call, with copies taken before it. Results must not share memory
with the inputs either, so that editing a result cannot reach back.
"""

import copy
import hashlib
import os

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.nddata import CCDData, InverseVariance, NDData, StdDevUncertainty
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS

from astro_dia import DifferenceImager, NoiseModelWarning
from astro_dia.background import background_basis, evaluate_background
from astro_dia.cli import main
from astro_dia.kernels import delta_kernel, gaussian_kernel, kernel_scale
from astro_dia.losses import get_loss, laplacian_penalty
from astro_dia.noise import (CCDNoiseModel, EMCCDNoiseModel, UncertaintyNoiseModel,
                             UniformNoiseModel, VarianceTerms, make_noise_model, refine_sky,
                             uncertainty_variance)
from astro_dia.simulate import make_image_pair

SHAPE = (40, 40)
KERNEL = 7


def _wcs():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [20.0, 20.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    return wcs


def _frozen(array):
    """A read-only copy: any in-place write by the code under test raises."""
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


def _image(image, *, data=None, mask=True, uncertainty=True, wcs=True, cls=CCDData,
           unit=None):
    """A CCDData (or NDData) with read-only data, mask and uncertainty, a WCS and a header."""
    data = _frozen(image.data if data is None else data)
    mask_array = None
    if mask:
        mask_array = np.zeros(data.shape, bool)
        mask_array[3, 5] = True
        mask_array = _frozen(mask_array)
    sigma = None
    if uncertainty:
        sigma = StdDevUncertainty(_frozen(image.uncertainty.array))
    return cls(data, unit=image.unit if unit is None else unit, mask=mask_array,
               uncertainty=sigma, meta=copy.deepcopy(image.meta),
               wcs=_wcs() if wcs else None)


def snapshot(image):
    """Copies of everything an NDData carries."""
    meta = image.meta
    return dict(
        data=np.array(image.data, copy=True), dtype=image.data.dtype,
        mask=None if image.mask is None else np.array(image.mask, copy=True),
        uncertainty=(None if image.uncertainty is None
                     else (type(image.uncertainty), np.array(image.uncertainty.array,
                                                             copy=True),
                           image.uncertainty.unit)),
        meta=[(str(key), repr(meta[key])) for key in meta],
        meta_type=type(meta),
        comments=(list(meta.comments) if hasattr(meta, "comments") else None),
        unit=image.unit,
        wcs=None if image.wcs is None else image.wcs.to_header_string(),
    )


def assert_unchanged(image, before):
    after = snapshot(image)
    np.testing.assert_array_equal(after["data"], before["data"])
    assert after["dtype"] == before["dtype"]
    for key in ("mask",):
        if before[key] is None:
            assert after[key] is None
        else:
            np.testing.assert_array_equal(after[key], before[key])
    if before["uncertainty"] is None:
        assert after["uncertainty"] is None
    else:
        assert after["uncertainty"][0] is before["uncertainty"][0]
        np.testing.assert_array_equal(after["uncertainty"][1], before["uncertainty"][1])
        assert after["uncertainty"][2] == before["uncertainty"][2]
    for key in ("meta", "meta_type", "comments", "unit", "wcs"):
        assert after[key] == before[key], key


def assert_no_shared_memory(result, *inputs):
    outputs = [result.difference.data, result.difference.mask,
               result.difference.uncertainty.array, result.model.data, result.kernel]
    for image in inputs:
        arrays = [image.data] + ([] if image.mask is None else [image.mask]) + (
            [] if image.uncertainty is None else [image.uncertainty.array])
        for out in outputs:
            for array in arrays:
                assert not np.shares_memory(out, array)
        assert result.difference.meta is not image.meta
        assert result.model.meta is not image.meta


@pytest.fixture(scope="module")
def pair():
    reference, target, _ = make_image_pair(shape=SHAPE, density=60, seed=3)
    return reference, target


@pytest.fixture(scope="module")
def subtracted_pair():
    reference, target, _ = make_image_pair(shape=(64, 64), density=30, seed=3,
                                           sky_subtracted=True, record_sky=False)
    return reference, target


def _nan_target(target):
    data = np.array(target.data, copy=True)
    data[10, 12] = np.nan
    return data


# -- DifferenceImager.fit and __call__ -----------------------------------------------------
FIT_CASES = {
    # name: (how to build the inputs, imager settings, expected warning)
    "ccd-masks-nan-reference-noise": (
        lambda r, t: (_image(r), _image(t, data=_nan_target(t))),
        dict(flat=1, sky=0, reference_noise=True), AstropyUserWarning),
    "uncertainty-model": (
        lambda r, t: (_image(r), _image(t)), dict(noise_model="uncertainty"), None),
    "uniform-model-no-uncertainty": (
        lambda r, t: (_image(r, uncertainty=False), _image(t, uncertainty=False)),
        dict(noise_model="uniform"), None),
    "int-and-big-endian-nddata": (
        lambda r, t: (_image(r, data=np.rint(r.data).astype(">i4"), cls=NDData),
                      _image(t, data=t.data.astype(">f8"), cls=NDData)),
        dict(flat=1, sky=0), None),
    "float16-reference-float32-target": (
        lambda r, t: (_image(r, data=r.data.astype(np.float16)),
                      _image(t, data=t.data.astype(np.float32))),
        dict(flat=1, sky=0, dtype="float64"), None),
    "unit-conversion": (
        lambda r, t: (_image(r, data=r.data / 1000, unit=u.Unit(1000 * u.adu)), _image(t)),
        dict(flat=1, sky=0), None),
    "flat-array-and-huber": (
        lambda r, t: (_image(r), _image(t)),
        dict(flat=_frozen(np.full(SHAPE, 2.0)), sky=0, loss="huber"), None),
}


@pytest.mark.parametrize("case, call", [(case, "fit") for case in FIT_CASES] + [
    ("ccd-masks-nan-reference-noise", "__call__"), ("int-and-big-endian-nddata", "__call__")])
def test_fit_never_modifies_its_inputs(pair, case, call):
    build, settings, warning = FIT_CASES[case]
    reference, target = build(*pair)
    before = snapshot(reference), snapshot(target)
    flat = settings.get("flat")
    flat_before = None if np.ndim(flat) == 0 else np.array(flat, copy=True)
    imager = DifferenceImager(KERNEL, **settings)
    method = getattr(imager, call)
    if warning is None:
        output = method(reference, target)
    else:
        with pytest.warns(warning):
            output = method(reference, target)
    assert_unchanged(reference, before[0])
    assert_unchanged(target, before[1])
    if flat_before is not None:
        np.testing.assert_array_equal(flat, flat_before)
    if call == "fit":
        assert_no_shared_memory(output, reference, target)
        # Editing the result does not reach the inputs.
        output.difference.meta["EDITED"] = True
        output.difference.mask[...] = True
        assert "EDITED" not in target.meta
        assert_unchanged(target, before[1])
    else:
        assert isinstance(output, CCDData)


def test_fit_with_estimated_sky_never_modifies_its_inputs(subtracted_pair):
    reference, target = (_image(image) for image in subtracted_pair)
    before = snapshot(reference), snapshot(target)
    with pytest.warns(NoiseModelWarning, match="looks sky-subtracted"):
        DifferenceImager(KERNEL, flat=1).fit(reference, target)
    assert_unchanged(reference, before[0])
    assert_unchanged(target, before[1])


def test_imager_can_be_reused_and_is_not_changed_by_a_fit(pair):
    reference, target = (_image(image) for image in pair)
    imager = DifferenceImager(KERNEL, flat=1, sky=0)
    settings = repr(imager), dict(vars(imager.noise_model))
    first = imager.fit(reference, target)
    second = imager.fit(reference, target)
    assert (repr(imager), dict(vars(imager.noise_model))) == settings
    np.testing.assert_array_equal(first.kernel, second.kernel)


# -- noise models --------------------------------------------------------------------------
NOISE_MODELS = {
    "ccd": lambda: CCDNoiseModel(flat=_frozen(np.full(SHAPE, 1.5)), sky=None),
    "ccd-quantities": lambda: CCDNoiseModel(gain=2 * u.electron / u.adu,
                                            read_noise=3 * u.electron, flat=1, sky=5 * u.adu),
    "emccd": lambda: EMCCDNoiseModel(em_gain=300, flat=1, sky=0, read_noise=1.0),
    "uniform": lambda: UniformNoiseModel(),
    "uncertainty": lambda: UncertaintyNoiseModel(),
}


@pytest.mark.parametrize("name", list(NOISE_MODELS))
@pytest.mark.filterwarnings("ignore:the target's uncertainty gives a variance")
def test_variance_terms_never_modify_image_or_mask(pair, name):
    _, target = pair
    image = _image(target)
    image.meta["EMGAIN"] = 300.0
    mask = _frozen(np.arange(image.data.size).reshape(SHAPE) % 7 == 0)
    before, mask_before = snapshot(image), mask.copy()
    model = NOISE_MODELS[name]()
    model_before = repr(vars(model))
    terms = model.variance_terms(image, mask=mask)
    assert_unchanged(image, before)
    np.testing.assert_array_equal(mask, mask_before)
    assert repr(vars(model)) == model_before
    for value in (terms.constant, terms.slope, terms.minimum):
        assert not np.shares_memory(value, image.data)
        if image.uncertainty is not None:
            assert not np.shares_memory(value, image.uncertainty.array)
    # Evaluating and cropping the terms does not touch the model image either.
    model_image = _frozen(image.data)
    terms.variance(model_image)
    terms.cropped((slice(2, -2), slice(2, -2)))
    np.testing.assert_array_equal(model_image, before["data"])


@pytest.mark.parametrize("uncertainty", [StdDevUncertainty, InverseVariance])
def test_uncertainty_variance_never_modifies_the_image(pair, uncertainty):
    _, target = pair
    image = _image(target)
    image.uncertainty = uncertainty(_frozen(np.where(target.uncertainty.array > 10, 0.0,
                                                     target.uncertainty.array)))
    before = snapshot(image)
    variance = uncertainty_variance(image)
    assert_unchanged(image, before)
    assert not np.shares_memory(variance, image.uncertainty.array)
    assert np.isnan(variance).any()          # the zeros came back as NaN, in a new array


@pytest.mark.parametrize("flat_kind", ["array", "ccddata"])
def test_make_noise_model_never_modifies_the_flat(pair, flat_kind):
    _, target = pair
    values = np.full(SHAPE, 1.2)
    values[4, 4], values[5, 5] = 0.0, np.nan
    flat = _frozen(values) if flat_kind == "array" else CCDData(
        _frozen(values), unit="", meta={"OBJECT": "flat"})
    flat_before = snapshot(flat) if flat_kind == "ccddata" else values.copy()
    model = make_noise_model("ccd", flat=flat, sky=0)
    terms = model.variance_terms(_image(target))
    assert terms.bad[4, 4] and terms.bad[5, 5]
    if flat_kind == "array":
        np.testing.assert_array_equal(flat, flat_before)
        assert not np.shares_memory(terms.slope, flat)
    else:
        assert_unchanged(flat, flat_before)


def test_refine_sky_never_modifies_its_arguments():
    rng = np.random.default_rng(0)
    model = _frozen(rng.uniform(0, 100, (20, 20)))
    residual = _frozen(rng.normal(0, 11, (20, 20)))
    mask = _frozen(np.ones((20, 20), bool))
    constant = _frozen(np.full((20, 20), 4.0))
    terms = VarianceTerms(constant=constant, slope=1.0, offset=10.0)
    copies = [array.copy() for array in (model, residual, mask, constant)]
    refine_sky(terms, model, residual, mask)
    for array, before in zip((model, residual, mask, constant), copies):
        np.testing.assert_array_equal(array, before)
    assert terms.offset == 10.0


# -- kernels, background, losses -----------------------------------------------------------
def test_kernel_and_background_functions_never_modify_arrays():
    kernel = _frozen(gaussian_kernel(5, 1.0))
    before = kernel.copy()
    assert kernel_scale(kernel) == pytest.approx(1.0)
    np.testing.assert_array_equal(kernel, before)
    coefficients = _frozen([5.0, 1.0, -2.0])
    background = evaluate_background(coefficients, (6, 7))
    np.testing.assert_array_equal(coefficients, [5.0, 1.0, -2.0])
    background[...] = 0.0                      # a new array: editing it is harmless
    again = evaluate_background(coefficients, (6, 7))
    assert again[0, 0] != 0.0
    basis = background_basis((6, 7), 1)
    basis[...] = 0.0
    assert background_basis((6, 7), 1)[0, 0, 0] == 1.0
    first = delta_kernel(3)
    first[...] = 7.0
    assert delta_kernel(3).sum() == 1.0


def test_losses_never_modify_their_input():
    z = torch.linspace(-5, 5, 11, dtype=torch.float64)
    kernel = torch.ones((3, 3), dtype=torch.float64)
    z_before, kernel_before = z.clone(), kernel.clone()
    for name in ("gaussian", "huber", "student_t"):
        get_loss(name)(z)
    laplacian_penalty(kernel)
    assert torch.equal(z, z_before) and torch.equal(kernel, kernel_before)


# -- the command line ------------------------------------------------------------------------
def _fingerprint(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


def test_cli_diff_leaves_its_input_files_unchanged(pair, tmp_path, capsys):
    reference, target = pair
    paths = {}
    for name, image in (("reference", reference), ("target", target)):
        image = _image(image, wcs=False)
        paths[name] = tmp_path / f"{name}.fits"
        image.write(paths[name])
    flat_path = tmp_path / "flat.fits"
    CCDData(np.full(SHAPE, 1.1), unit="").write(flat_path)
    before = {name: _fingerprint(path) for name, path in
              dict(paths, flat=flat_path).items()}
    out = tmp_path / "difference.fits"
    status = main(["diff", str(paths["reference"]), str(paths["target"]), "--kernel-size",
                   str(KERNEL), "--flat", str(flat_path), "--sky", "0", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "scale factor P" in captured.out
    after = {name: _fingerprint(path) for name, path in dict(paths, flat=flat_path).items()}
    assert after == before
    difference = CCDData.read(out)
    assert difference.shape == SHAPE and difference.unit == target.unit
    assert difference.mask is not None and difference.mask[3, 5]   # the input mask survived
    assert difference.header["DIA_KSZ"] == KERNEL
    # a second run refuses to overwrite the output without --overwrite
    assert main(["diff", str(paths["reference"]), str(paths["target"]), "--kernel-size",
                 str(KERNEL), "--flat", "1", "--sky", "0", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
