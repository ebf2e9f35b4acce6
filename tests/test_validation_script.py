"""Smoke test of ``docs/validation/run_validation.py``, the validation chapter's script."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "validation" / "run_validation.py"

# Small images and kernel so that the whole run takes a few seconds.
SMALL = ["--shape", "64", "--kernel-size", "7", "--seed", "5"]


def load_script():
    spec = importlib.util.spec_from_file_location("run_validation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run main on 2 pairs and the one-pixel shift test, with one unknown solver."""
    out = tmp_path_factory.mktemp("validation")
    module = load_script()
    status = module.main(["--n-pairs", "2", "--solvers", "iterative,no_such_solver",
                          "--losses", "gaussian", "--bias-kinds", "shift", "--out", str(out)]
                         + SMALL)
    return module, status, out


def parse_rst(path):
    """Parse an .rst fragment with docutils, failing on any warning or error."""
    docutils_core = pytest.importorskip("docutils.core")
    from docutils import nodes

    text = path.read_text()
    assert text.startswith(":orphan:\n\n")
    tree = docutils_core.publish_doctree(
        text, settings_overrides={"report_level": 2, "halt_level": 2, "warning_stream": False})
    return list(tree.findall(nodes.table))


def test_import_does_not_run_the_validation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    def files():
        return {path for path in SCRIPT.parent.iterdir() if path.name != "__pycache__"}

    before = files()
    module = load_script()
    assert callable(module.main)
    assert files() == before
    assert list(tmp_path.iterdir()) == []


def test_main_succeeds_and_skips_the_rejected_solver(run, capsys):
    module, status, out = run
    assert status == 0
    info = (out / "run_info.rst").read_text()
    assert "Skipped: solver='no_such_solver'" in info
    assert "--n-pairs 2" in info
    assert {path.name for path in out.iterdir()} >= {
        "bias_tests.ecsv", "bias_tests.rst", "s10_pairs.ecsv", "s10_summary.ecsv",
        "s10_summary.rst", "s10_table2.ecsv", "s10_table2.rst", "paper_table2.ecsv",
        "run_info.rst"}


def test_noiseless_shift_recovers_the_truth(run):
    _, _, out = run
    bias = Table.read(out / "bias_tests.ecsv")
    assert list(bias["dtype"]) == ["float32", "float64"]
    assert set(bias["kind"]) == {"shift"} and set(bias["solver"]) == {"iterative"}
    assert np.all(bias["converged"])
    assert np.all(np.abs(bias["P"] - bias["P_true"]) < [1e-5, 1e-8])
    assert np.all(bias["eps_B0"] < [1e-5, 1e-8])
    assert np.all(bias["max_abs_residual"] < 1e-3)


def test_noisy_pairs_give_sane_metrics(run):
    _, _, out = run
    pairs = Table.read(out / "s10_pairs.ecsv")
    assert len(pairs) == 2 and list(pairs["pair"]) == [0, 1]
    assert set(pairs["snr_regime"]) <= {1, 2, 3}
    assert np.all((pairs["snr"] > 8) & (pairs["snr"] < 1000))
    assert np.all(pairs["n_data"] == (64 - 6) ** 2)
    # P is within a few of its own standard errors of the truth, 1.
    assert np.all(np.abs(pairs["P"] - 1) < 5 * pairs["P_error"])
    # Residuals are unbiased and of about unit variance (a little less:
    # 50 parameters are fitted to 3364 pixels).
    assert np.all(np.abs(pairs["MFB"]) < 0.05)
    assert np.all((pairs["MFV"] > 0.9) & (pairs["MFV"] < 1.1))
    # The model is much closer to the noiseless target than to the noisy one.
    assert np.all(pairs["MSE"] < 0.5 * pairs["MSE_noisy"])
    # The constant central star's flux on the difference image is zero within
    # a few times its minimum standard deviation.
    assert np.all(pairs["sigma_min"] > 0)
    assert np.all(np.abs(pairs["flux"]) < 5 * pairs["sigma_min"])


def test_summaries_agree_with_the_pairs(run):
    _, _, out = run
    pairs = Table.read(out / "s10_pairs.ecsv")
    summary = Table.read(out / "s10_summary.ecsv")
    assert len(summary) == 1 and summary["n_pairs"][0] == 2
    for name in ("P", "MSE", "MFB", "MFV"):
        assert summary[name][0] == pytest.approx(np.median(pairs[name]))
    table2 = Table.read(out / "s10_table2.ecsv")
    # P, MSE, MFB, MFV, MFV_expected, MPB, MPV in each of 3 x 4 regimes, once.
    assert len(table2) == 7 * 12
    assert len(set(zip(table2["metric"], table2["snr_regime"], table2["sampling"]))) == 7 * 12
    for metric in ("P", "MSE", "MFB", "MFV"):
        assert table2["n"][table2["metric"] == metric].sum() == 2
    assert summary["MPB"][0] == pytest.approx(np.mean(pairs["flux"] / pairs["sigma_min"]))
    paper = Table.read(out / "paper_table2.ecsv")
    # P, MSE, MFB, MFV, MPB, MPV x B08, PyTorchDIA x 3 SNR x 4 sampling regimes.
    assert len(paper) == 6 * 2 * 3 * 4
    assert paper["n"][(paper["metric"] == "P") & (paper["source"] == "B08")].sum() == 71569


def test_rst_tables_parse(run):
    _, _, out = run
    assert len(parse_rst(out / "bias_tests.rst")) == 1
    assert len(parse_rst(out / "s10_summary.rst")) == 1
    # One table per metric (P, MSE, MFB, MFV, MPB, MPV) and one of counts.
    assert len(parse_rst(out / "s10_table2.rst")) == 7
    assert "0.9948 (+0.0335 / -0.0360)" in (out / "s10_table2.rst").read_text()
    parse_rst(out / "run_info.rst")


def test_bad_arguments_are_reported(capsys):
    module = load_script()
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--bias-kinds", "sideways"])
    assert exit_info.value.code == 2
    assert "unknown --bias-kinds ['sideways']" in capsys.readouterr().err
