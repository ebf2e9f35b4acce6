"""The full check of benchmarks/validate_noisy_reference.py: 8 fields x 4 noise realisations."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = (Path(__file__).resolve().parents[2] / "benchmarks"
          / "validate_noisy_reference.py")

pytestmark = pytest.mark.slow


def load_benchmark():
    spec = importlib.util.spec_from_file_location("validate_noisy_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def validation():
    return load_benchmark()


@pytest.mark.parametrize("field", ["sparse", "dense"])
def test_reference_noise_makes_p_unbiased_and_sigma_p_honest(validation, field):
    row = validation.summarise(*validation.measure(
        validation.DENSITIES[field], validation.REFERENCES["single"],
        validation.SETTINGS["reference_noise=True"], 8, 4))
    assert abs(row["mean"]) < 3 * row["se"]
    assert abs(row["mean"]) < 0.01
    assert 0.75 <= row["noise_ratio"] <= 1.33
    assert row["warned"] == 0


@pytest.mark.parametrize("field", ["sparse", "dense"])
def test_default_fit_of_a_single_epoch_reference_is_biased_and_warned(validation, field):
    row = validation.summarise(*validation.measure(
        validation.DENSITIES[field], validation.REFERENCES["single"],
        validation.SETTINGS["default"], 8, 2))
    assert row["mean"] < -3 * row["se"]
    assert row["warned"] >= 0.75


@pytest.mark.parametrize("setting", ["default", "reference_noise=True"])
def test_a_stacked_reference_stays_unbiased(validation, setting):
    row = validation.summarise(*validation.measure(
        validation.DENSITIES["sparse"], validation.REFERENCES["stacked"],
        validation.SETTINGS[setting], 8, 2))
    assert abs(row["mean"]) < 3 * row["se"]
    assert 0.75 <= row["noise_ratio"] <= 1.33
    assert row["warned"] == 0
