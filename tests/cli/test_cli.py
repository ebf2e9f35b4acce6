"""Tests of the ``astro-dia`` command line and of `astro_dia.demo.run_demo`."""

import os
import subprocess
import sys

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import CCDData

import astro_dia
from astro_dia import cli
from astro_dia.demo import DIFFERENCE_FILENAME, PLOT_FILENAME, run_demo

# Small enough that each demo run takes about a second or less.
SMALL = ["--size", "96", "--kernel-size", "9"]
TINY = ["--size", "64", "--kernel-size", "7"]


def run_main(capsys, *argv):
    """Run ``main(argv)``; return (exit status, stdout, stderr)."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, out, err, *fragments):
    assert status == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("astro-dia: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in err


def test_version(capsys):
    status, out, err = run_main(capsys, "--version")
    assert status == 0
    assert out.strip() == f"astro-dia {astro_dia.__version__}"
    assert err == ""


def test_help(capsys):
    status, out, _ = run_main(capsys, "--help")
    assert status == 0
    assert "demo" in out and "--version" in out
    assert "subtract" in out and "photometry" in out
    status, out, _ = run_main(capsys, "photometry", "--help")
    assert status == 0
    for option in ("--positions", "--fwhm", "--moffat-beta", "--aperture",
                   "--free-positions", "--out", "--overwrite", "RESULT"):
        assert option in out
    status, out, _ = run_main(capsys, "demo", "--help")
    assert status == 0
    for option in ("--out", "--size", "--kernel-size", "--seed", "--device", "--dtype",
                   "--no-plot"):
        assert option in out


def test_demo_writes_fits_and_reports(tmp_path, capsys):
    status, out, err = run_main(capsys, "demo", "--out", str(tmp_path), *SMALL, "--no-plot")
    assert status == 0, err
    path = tmp_path / DIFFERENCE_FILENAME
    assert path.is_file()
    assert not (tmp_path / PLOT_FILENAME).exists()
    difference = CCDData.read(path)
    assert difference.shape == (96, 96)
    assert difference.unit == u.adu
    assert difference.uncertainty is not None and difference.mask is not None
    # The border half a kernel wide is undefined and masked.
    assert difference.mask[:4].all() and not difference.mask[48, 48]
    assert difference.header["DIA_KSZ"] == 9

    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert str(path) in out
    assert "not requested" in out
    fitted, true = (float(word) for word in lines["scale"].split()[4::2])
    assert true == 0.9
    assert abs(fitted - true) < 0.03
    assert "converged" in lines["iterations"]


def test_verbose_logs_to_stderr(tmp_path, capsys):
    status, out, err = run_main(capsys, "--verbose", "demo", "--out", str(tmp_path), *TINY,
                                "--no-plot")
    assert status == 0
    assert "astro-dia: astro_dia.demo: wrote the difference image" in err
    assert "scale factor P" in out
    # Quiet again afterwards.
    status, out, err = run_main(capsys, "demo", "--out", str(tmp_path), *TINY, "--no-plot")
    assert status == 0 and err == ""


def test_run_demo_summary(tmp_path):
    summary = run_demo(tmp_path / "nested" / "out", size=96, kernel_size=9, plot=False)
    assert summary["scale_factor_true"] == 0.9
    assert summary["background_offset_true"] == pytest.approx(210.0)
    assert summary["scale_factor"] == pytest.approx(0.9, abs=0.03)
    assert summary["background_offset"] == pytest.approx(210.0, abs=3.0)
    assert summary["normalized_residual_std"] == pytest.approx(1.0, abs=0.1)
    assert summary["unit"] == "adu"
    assert summary["converged"] and summary["n_iterations"] > 0
    assert 0 < summary["fit_time"] <= summary["total_time"]
    assert summary["plot_path"] is None
    assert os.path.isfile(summary["difference_path"])
    # Same seed, same simulation and fit.
    again = run_demo(tmp_path / "again", size=96, kernel_size=9, plot=False)
    assert again["scale_factor"] == summary["scale_factor"]


def test_demo_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    status, out, err = run_main(capsys, "demo", "--out", str(tmp_path), *TINY)
    assert status == 0, err
    path = tmp_path / PLOT_FILENAME
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(path) in out


def test_plot_leaves_pyplot_alone(tmp_path):
    pyplot = pytest.importorskip("matplotlib.pyplot")
    import matplotlib

    backend, figures = matplotlib.get_backend(), pyplot.get_fignums()
    summary = run_demo(tmp_path, size=64, kernel_size=7)
    assert summary["plot_path"] is not None and summary["plot_note"] is None
    assert matplotlib.get_backend() == backend
    assert pyplot.get_fignums() == figures


def test_demo_without_matplotlib(tmp_path, monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    summary = run_demo(tmp_path, size=64, kernel_size=7, plot=True)
    assert summary["plot_path"] is None
    assert "matplotlib" in summary["plot_note"]
    assert not (tmp_path / PLOT_FILENAME).exists()
    assert (tmp_path / DIFFERENCE_FILENAME).is_file()


@pytest.mark.parametrize("argv, fragment", [
    (["demo", "--kernel-size", "4"], "odd"),
    (["demo", "--kernel-size", "0"], "positive"),
    (["demo", "--size", "5"], "kernel_size"),
    (["demo", "--size", "0"], "size"),
    (["demo", "--size", "12", "--kernel-size", "9"], "usable pixels"),
    (["demo", "--device", "tpu"], "device"),
    (["demo", "--seed", "-1"], "seed"),
    (["demo", "--dtype", "float16"], "--dtype"),
    (["demo", "--size", "big"], "--size"),
    (["demo", "--bogus"], "--bogus"),
    (["frobnicate"], "frobnicate"),
    ([], "required"),
])
def test_bad_input(tmp_path, capsys, argv, fragment):
    out_dir = tmp_path / "out"
    if argv and argv[0] == "demo":
        argv = argv + ["--out", str(out_dir), "--no-plot"]
    status, out, err = run_main(capsys, *argv)
    assert_one_line_error(status, out, err, "error", fragment)
    assert not (out_dir / DIFFERENCE_FILENAME).exists()


def test_verbose_error_shows_traceback(tmp_path, capsys):
    status, out, err = run_main(capsys, "-v", "demo", "--kernel-size", "4", "--out",
                                str(tmp_path))
    assert status == 2
    assert "Traceback" in err
    assert err.splitlines()[-1] == "astro-dia: error: kernel_size must be odd, got 4"


def test_unwritable_output(tmp_path, capsys):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    status, out, err = run_main(capsys, "demo", "--out", str(not_a_directory), *TINY,
                                "--no-plot")
    assert_one_line_error(status, out, err, str(not_a_directory))


def test_run_demo_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="size"):
        run_demo(tmp_path, size=96.0)
    with pytest.raises(ValueError, match="odd"):
        run_demo(tmp_path, size=96, kernel_size=8)
    with pytest.raises(ValueError, match="seed"):
        run_demo(tmp_path, size=96, kernel_size=9, seed=-3)
    with pytest.raises(TypeError, match="seed"):
        run_demo(tmp_path, size=96, kernel_size=9, seed=1.5)
    with pytest.raises(ValueError, match="dtype"):
        run_demo(tmp_path, size=96, kernel_size=9, dtype="float16")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow   # a fresh interpreter's start-up, over 4 s; the CLI is tested in-process
def test_python_dash_m_version():
    completed = subprocess.run([sys.executable, "-m", "astro_dia", "--version"],
                               capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"astro-dia {astro_dia.__version__}"


@pytest.mark.slow
def test_python_dash_m_error_has_no_traceback(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "astro_dia", "demo", "--kernel-size", "4", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 2
    assert completed.stdout == ""
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert lines == ["astro-dia: error: kernel_size must be odd, got 4"]
    assert list(tmp_path.iterdir()) == []


def test_whole_process_diff_writes_and_reports_before_its_fast_exit(tmp_path):
    """`python -m astro_dia` leaves through os._exit: its file and report are complete."""
    from astro_dia.simulate import make_image_pair
    reference, target, _ = make_image_pair(shape=(64, 64), seed=2)
    reference.write(tmp_path / "ref.fits")
    target.write(tmp_path / "tgt.fits")
    out = tmp_path / "diff.fits"
    completed = subprocess.run(
        [sys.executable, "-m", "astro_dia", "diff", str(tmp_path / "ref.fits"),
         str(tmp_path / "tgt.fits"), "--out", str(out), "--kernel-size", "7", "--flat", "1",
         "--sky", "0"], capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.rstrip().endswith(f"difference image   {out}")
    difference = CCDData.read(out)
    assert difference.shape == (64, 64)
    assert difference.header["DIA_P"] == pytest.approx(
        float(completed.stdout.split("scale factor P")[1].split()[0]), rel=1e-5)


# -- astro-dia subtract --------------------------------------------------------

SUBTRACT_FIT = ["--kernel-size", "7", "--flat", "1", "--sky", "0"]


@pytest.fixture(scope="module")
def fits_night(tmp_path_factory):
    """A reference and two targets (P = 0.9 and 1.1) as FITS files, with the truth."""
    from astro_dia.simulate import make_image_pair

    directory = tmp_path_factory.mktemp("night")
    truths = []
    for i, scale in enumerate((0.9, 1.1)):
        reference, target, truth = make_image_pair((48, 48), density=100, scale_factor=scale,
                                                   seed=3, noise_seed=i)
        target.write(directory / f"t{i}.fits")
        truths.append(truth)
    reference.write(directory / "ref.fits")
    (directory / "corrupt.fits").write_bytes(b"not FITS " * 400)
    return directory, truths


def test_subtract_help(capsys):
    status, out, _ = run_main(capsys, "subtract", "--help")
    assert status == 0
    for option in ("--out", "--kernel-size", "--noise-model", "--loss", "--background-degree",
                   "--kernel-degree", "--constant-scale", "--solver", "--device", "--workers", "--scheduler", "--plots",
                   "--overwrite", "REFERENCE", "TARGET"):
        assert option in out


def test_subtract_writes_results_and_reports(fits_night, tmp_path, capsys):
    from astro_dia.io import read_result

    directory, truths = fits_night
    out_dir = tmp_path / "out"
    status, out, err = run_main(capsys, "subtract", str(directory / "ref.fits"),
                                str(directory / "t0.fits"), str(directory / "t1.fits"),
                                "--out", str(out_dir), *SUBTRACT_FIT, "--plots")
    assert status == 0, err
    assert err == ""
    lines = out.splitlines()
    assert "2 targets, 7 x 7 kernel" in lines[0]
    assert "2 differenced, 0 failed" in lines[-1]
    for i, truth in enumerate(truths):
        difference = CCDData.read(out_dir / f"t{i}_diff.fits")
        assert difference.unit == u.adu and difference.mask is not None
        assert difference.uncertainty is not None
        result = read_result(out_dir / f"t{i}_diff.fits")
        assert difference.header["DIA_P"] == result.scale_factor
        assert abs(result.scale_factor - truth.scale_factor) < 4 * result.scale_factor_error
        assert abs(result.background_offset.value - truth.background) < \
            4 * result.background_error[0].value
        # The report shows the same P.
        row = next(line for line in lines if line.split()[0] == f"t{i}.fits")
        assert float(row.split()[1]) == pytest.approx(result.scale_factor, abs=1e-5)
        assert (out_dir / f"t{i}_diff.png").read_bytes()[:4] == b"\x89PNG"
    # Existing results are kept unless --overwrite is given.
    status, out, err = run_main(capsys, "subtract", str(directory / "ref.fits"),
                                str(directory / "t0.fits"), "--out", str(out_dir),
                                *SUBTRACT_FIT)
    assert status == 1 and "exists; pass overwrite=True (--overwrite)" in err
    status, out, err = run_main(capsys, "subtract", str(directory / "ref.fits"),
                                str(directory / "t0.fits"), "--out", str(out_dir),
                                *SUBTRACT_FIT, "--overwrite")
    assert status == 0, err


def test_subtract_with_a_spatially_varying_kernel(fits_night, tmp_path, capsys):
    from astro_dia.io import read_result

    directory, _ = fits_night
    out_dir = tmp_path / "out"
    status, _, err = run_main(capsys, "subtract", str(directory / "ref.fits"),
                              str(directory / "t0.fits"), "--out", str(out_dir),
                              *SUBTRACT_FIT, "--kernel-degree", "1", "--constant-scale")
    assert status == 0, err
    result = read_result(out_dir / "t0_diff.fits")
    assert result.kernel_degree == 1 and result.constant_scale
    assert result.kernel_terms.shape == (3, 7, 7)
    assert abs(result.kernel_terms[1:].sum()) < 1e-6


def test_subtract_goes_on_past_a_corrupt_target(fits_night, tmp_path, capsys):
    directory, _ = fits_night
    status, out, err = run_main(capsys, "subtract", str(directory / "ref.fits"),
                                str(directory / "corrupt.fits"), str(directory / "t1.fits"),
                                "--out", str(tmp_path), *SUBTRACT_FIT)
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("astro-dia: error: corrupt.fits: OSError:")
    assert "not a readable FITS file" in lines[0]
    assert "1 differenced, 1 failed" in out
    assert (tmp_path / "t1_diff.fits").is_file()
    assert not (tmp_path / "corrupt_diff.fits").exists()


@pytest.mark.parametrize("case, fragments", [
    ("missing reference", ["reference file", "does not exist"]),
    ("missing target", ["target file", "nothing.fits", "does not exist"]),
    ("corrupt reference", ["reference file", "not a readable FITS file"]),
    ("bad kernel", ["kernel_size must be odd"]),
    ("bad solver", ["solver"]),
    ("bad workers", ["--workers must be at least 1"]),
    ("no out", ["--out"]),
    ("no target", ["TARGET"]),
])
def test_subtract_bad_input(fits_night, tmp_path, capsys, case, fragments):
    directory, _ = fits_night
    reference, target = str(directory / "ref.fits"), str(directory / "t0.fits")
    out = ["--out", str(tmp_path / "out")]
    argv = {
        "missing reference": [str(tmp_path / "none.fits"), target, *out],
        "missing target": [reference, target, str(tmp_path / "nothing.fits"), *out],
        "corrupt reference": [str(directory / "corrupt.fits"), target, *out],
        "bad kernel": [reference, target, *out, "--kernel-size", "6"],
        "bad solver": [reference, target, *out, "--solver", "magic"],
        "bad workers": [reference, target, *out, "--workers", "0"],
        "no out": [reference, target],
        "no target": [reference, *out],
    }[case]
    status, stdout, err = run_main(capsys, "subtract", *SUBTRACT_FIT, *argv)
    assert_one_line_error(status, stdout, err, *fragments)
    assert not (tmp_path / "out" / "t0_diff.fits").exists()


# -- astro-dia photometry ------------------------------------------------------

@pytest.fixture(scope="module")
def night_results(fits_night, tmp_path_factory):
    """The night of fits_night differenced by 'subtract', one target with MJD-OBS."""
    from astropy.io import fits
    from astropy.table import QTable

    directory, truths = fits_night
    out = tmp_path_factory.mktemp("results")
    assert cli.main(["subtract", str(directory / "ref.fits"), str(directory / "t0.fits"),
                     str(directory / "t1.fits"), "--out", str(out), *SUBTRACT_FIT]) == 0
    fits.setval(out / "t1_diff.fits", "MJD-OBS", value=60000.25)
    stars = truths[0].stars
    brightest = stars[np.argsort(np.asarray(stars["flux"]))[-3:]]
    positions = out / "stars.ecsv"
    QTable({"id": [1, 2, 3], "x": brightest["x"], "y": brightest["y"]}).write(positions)
    return out, positions


def test_photometry_writes_one_long_table(night_results, tmp_path, capsys):
    from astropy.table import QTable

    out, positions = night_results
    table_path = tmp_path / "phot.ecsv"
    status, stdout, err = run_main(
        capsys, "photometry", str(out / "t0_diff.fits"), str(out / "t1_diff.fits"),
        "--positions", str(positions), "--fwhm", "3.5", "--out", str(table_path))
    assert status == 0, err
    assert "2 files x 3 sources" in stdout
    table = QTable.read(table_path)
    assert len(table) == 6
    assert list(table["file"]) == ["t0_diff.fits"] * 3 + ["t1_diff.fits"] * 3
    assert list(table["id"]) == [1, 2, 3, 1, 2, 3]
    # constant stars: the differential fluxes are consistent with zero
    z = table["flux"].value / table["flux_err"].value
    assert np.all(np.isfinite(z)) and np.all(np.abs(z) < 5)
    # flux_ref is flux / P of each file's fit
    from astro_dia.io import read_result
    p = read_result(out / "t1_diff.fits").scale_factor
    assert np.allclose(table["flux_ref"].value[3:], table["flux"].value[3:] / p)
    # the time comes from MJD-OBS where the header has it
    assert table["time"].mask[:3].all() and not table["time"].mask[3:].any()
    assert np.allclose(table["time"][3:].mjd, 60000.25)


def test_photometry_apertures(night_results, tmp_path, capsys):
    from astropy.table import QTable

    out, positions = night_results
    table_path = tmp_path / "aper.csv"
    status, _, err = run_main(capsys, "photometry", str(out / "t0_diff.fits"),
                              "--positions", str(positions), "--fwhm", "3.5",
                              "--aperture", "4", "--out", str(table_path))
    assert status == 0, err
    table = QTable.read(table_path)
    assert len(table) == 3
    assert np.all(table["aperture_correction"] < 1)


def test_photometry_with_an_epsf_of_the_reference(tmp_path, capsys):
    # The ePSF built from the reference's stars fits constant stars as well as the
    # true (Gaussian) PSF: fluxes consistent with zero, and the same fluxes as with
    # the true PSF within their errors.
    from astropy.table import QTable

    from astro_dia.simulate import make_image_pair

    reference, target, truth = make_image_pair((200, 200), density=40, seed=8)
    reference.write(tmp_path / "ref.fits")
    target.write(tmp_path / "tgt.fits")
    assert cli.main(["diff", str(tmp_path / "ref.fits"), str(tmp_path / "tgt.fits"),
                     "--out", str(tmp_path / "d.fits"), "--kernel-size", "9",
                     "--flat", "1"]) == 0
    stars = truth.stars[np.argsort(np.asarray(truth.stars["flux"]))[-8:]]
    QTable({"id": np.arange(1, 9), "x": stars["x"], "y": stars["y"]}).write(
        tmp_path / "stars.ecsv")
    fwhm = f"{2.3548 * truth.settings['psf_sigma']:.3f}"
    tables = []
    for name, extra in (("gauss", []), ("epsf", ["--epsf", str(tmp_path / "ref.fits")])):
        path = tmp_path / f"{name}.ecsv"
        status, stdout, err = run_main(capsys, "photometry", str(tmp_path / "d.fits"),
                                       "--positions", str(tmp_path / "stars.ecsv"), "--fwhm",
                                       fwhm, "--out", str(path), *extra)
        assert status == 0, err
        tables.append(QTable.read(path))
    gauss, epsf = tables
    z = epsf["flux"].value / epsf["flux_err"].value
    assert np.all(np.isfinite(z)) and np.all(np.abs(z) < 5)
    difference = np.abs(epsf["flux"].value - gauss["flux"].value)
    assert np.all(difference < 2 * gauss["flux_err"].value)


def test_photometry_epsf_excludes_moffat(fits_night, night_results, tmp_path, capsys):
    directory, _ = fits_night
    out, positions = night_results
    status, stdout, err = run_main(capsys, "photometry", str(out / "t0_diff.fits"),
                                   "--positions", str(positions), "--fwhm", "3.5",
                                   "--epsf", str(directory / "ref.fits"), "--moffat-beta", "3",
                                   "--out", str(tmp_path / "x.ecsv"))
    assert_one_line_error(status, stdout, err, "--epsf and --moffat-beta")


@pytest.mark.parametrize("case, fragments", [
    ("missing positions", ["positions file", "does not exist"]),
    ("bad positions", ["cannot read the positions file"]),
    ("no columns", ["x"]),
    ("missing result", ["nothing.fits"]),
    ("not a result", ["t0.fits", "not an astro_dia result file"]),
    ("no fwhm", ["--fwhm"]),
    ("exists", ["exists; pass --overwrite"]),
    ("sky positions without WCS", ["sky positions need the image's WCS"]),
])
def test_photometry_bad_input(fits_night, night_results, tmp_path, capsys, case, fragments):
    from astropy.table import QTable

    directory, _ = fits_night
    out, positions = night_results
    result = str(out / "t0_diff.fits")
    (tmp_path / "bad.ecsv").write_text("not a table at all\x00\x01")
    QTable({"a": [1.0], "b": [2.0]}).write(tmp_path / "cols.ecsv")
    (tmp_path / "exists.ecsv").write_text("")
    QTable({"ra": [10.0], "dec": [-5.0]}).write(tmp_path / "sky.ecsv")
    table = ["--out", str(tmp_path / ("exists.ecsv" if case == "exists" else "t.ecsv"))]
    fwhm = [] if case == "no fwhm" else ["--fwhm", "3"]
    argv = {
        "missing positions": [result, "--positions", str(tmp_path / "none.ecsv")],
        "bad positions": [result, "--positions", str(tmp_path / "bad.ecsv")],
        "no columns": [result, "--positions", str(tmp_path / "cols.ecsv")],
        "missing result": [str(tmp_path / "nothing.fits"), "--positions", str(positions)],
        "not a result": [str(directory / "t0.fits"), "--positions", str(positions)],
        "no fwhm": [result, "--positions", str(positions)],
        "exists": [result, "--positions", str(positions)],
        "sky positions without WCS": [result, "--positions", str(tmp_path / "sky.ecsv")],
    }[case]
    status, stdout, err = run_main(capsys, "photometry", *argv, *fwhm, *table)
    assert_one_line_error(status, stdout, err, *fragments)


def test_photometry_with_sky_positions(fits_night, tmp_path, capsys):
    """ra/dec columns are placed with the images' WCS: the same fluxes as pixel positions."""
    import shutil

    from astropy.io import fits
    from astropy.table import QTable
    from astropy.wcs import WCS

    directory, truths = fits_night
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [24.5, 24.5]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    for name in ("ref.fits", "t0.fits"):
        shutil.copy(directory / name, tmp_path / name)
        with fits.open(tmp_path / name, mode="update") as hdus:
            hdus[0].header.update(wcs.to_header())
    out = tmp_path / "out"
    assert cli.main(["subtract", str(tmp_path / "ref.fits"), str(tmp_path / "t0.fits"),
                     "--out", str(out), *SUBTRACT_FIT]) == 0
    stars = truths[0].stars[np.argsort(np.asarray(truths[0].stars["flux"]))[-3:]]
    ra, dec = wcs.pixel_to_world_values(np.asarray(stars["x"]), np.asarray(stars["y"]))
    QTable({"ra": ra, "dec": dec}).write(tmp_path / "sky.ecsv")
    QTable({"x": stars["x"], "y": stars["y"]}).write(tmp_path / "pix.ecsv")
    tables = []
    for positions in ("sky.ecsv", "pix.ecsv"):
        path = tmp_path / positions.replace("ecsv", "out.ecsv")
        status, _, err = run_main(capsys, "photometry", str(out / "t0_diff.fits"),
                                  "--positions", str(tmp_path / positions), "--fwhm", "3.5",
                                  "--out", str(path))
        assert status == 0, err
        tables.append(QTable.read(path))
    assert "skycoord" in tables[0].colnames
    assert np.allclose(tables[0]["x"], tables[1]["x"], atol=1e-6)
    # The same fit either way: equal fluxes to a small fraction of their error
    # (float32 sums differ by a few 1e-6 relative between CPUs and BLAS builds).
    difference = np.abs(tables[0]["flux"] - tables[1]["flux"])
    assert np.all(difference < 1e-3 * tables[1]["flux_err"])


@pytest.fixture
def torch_threads():
    """Restore torch's thread count after a test that lets the command set it."""
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_command_runs_on_one_thread_unless_told(torch_threads, monkeypatch, capsys):
    torch = torch_threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("ASTRO_DIA_THREADS", raising=False)
    torch.set_num_threads(2)
    status, _, err = run_main(capsys, "photometry", "none.ecsv", "--positions", "p.ecsv",
                              "--fwhm", "3")
    assert status == 2 and torch.get_num_threads() == 1
    monkeypatch.setenv("ASTRO_DIA_THREADS", "2")
    run_main(capsys, "photometry", "none.ecsv", "--positions", "p.ecsv", "--fwhm", "3")
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("ASTRO_DIA_THREADS", "many")
    status, out, err = run_main(capsys, "photometry", "none.ecsv", "--positions", "p.ecsv",
                                "--fwhm", "3")
    assert_one_line_error(status, out, err, "ASTRO_DIA_THREADS must be a whole number")
    monkeypatch.delenv("ASTRO_DIA_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    run_main(capsys, "photometry", "none.ecsv", "--positions", "p.ecsv", "--fwhm", "3")
    assert torch.get_num_threads() == 2
