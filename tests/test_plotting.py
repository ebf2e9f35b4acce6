"""Tests of `astro_dia.plotting.plot_result`."""

import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from astro_dia import DifferenceImager  # noqa: E402
from astro_dia.plotting import plot_result  # noqa: E402
from astro_dia.simulate import make_image_pair  # noqa: E402

TITLES = ["reference", "target", "difference (zscale)"]


@pytest.fixture(scope="module")
def fit():
    reference, target, _ = make_image_pair(shape=(48, 48), density=100, seed=12)
    result = DifferenceImager(kernel_size=7, flat=1, sky=0).fit(reference, target)
    return reference, target, result


def test_panels(fit):
    from matplotlib.figure import Figure

    reference, target, result = fit
    figure = plot_result(result, reference=reference, target=target, bins=40)
    assert isinstance(figure, Figure)
    axes = figure.axes
    assert [ax.get_title() for ax in axes[:3]] == TITLES
    np.testing.assert_array_equal(axes[0].images[0].get_array(), reference.data)
    np.testing.assert_array_equal(axes[1].images[0].get_array(), target.data)
    np.testing.assert_array_equal(axes[3].images[0].get_array(), result.kernel)
    assert axes[3].get_title() == f"kernel, P = {result.scale_factor:.4f}"
    # The histogram is a density over the fitted pixels, drawn with the unit Gaussian.
    assert len(axes[4].patches) == 1   # one filled step histogram
    line = axes[4].lines[0]
    assert line.get_label() == "unit Gaussian"
    assert max(line.get_ydata()) == pytest.approx(1 / np.sqrt(2 * np.pi), rel=1e-3)
    summary = axes[5].texts[0].get_text()
    assert f"P = {result.scale_factor:.5f} +/- {result.scale_factor_error:.5f}" in summary


def test_target_rebuilt_from_difference_and_model(fit):
    reference, target, result = fit
    figure = plot_result(result)
    axes = figure.axes
    assert axes[0].texts[0].get_text() == "not given"
    shown = np.asarray(axes[1].images[0].get_array(), float)
    defined = np.isfinite(result.model.data)
    # difference + model is the target wherever the model is defined.
    np.testing.assert_allclose(shown[defined], target.data[defined], rtol=1e-12, atol=1e-9)
    assert np.isnan(shown[~defined]).all()


def test_draws_on_a_given_figure_and_leaves_pyplot_alone(fit):
    import matplotlib
    from matplotlib import pyplot
    from matplotlib.figure import Figure

    _, _, result = fit
    backend, figures = matplotlib.get_backend(), pyplot.get_fignums()
    figure = Figure()
    figure.add_subplot()
    assert plot_result(result, figure=figure) is figure
    assert figure.axes[0].get_title() == "reference"
    assert matplotlib.get_backend() == backend and pyplot.get_fignums() == figures


def test_errors(fit, monkeypatch):
    reference, _, result = fit
    with pytest.raises(TypeError, match="result must be a DifferenceResult"):
        plot_result(result.difference)
    with pytest.raises(ValueError, match="reference must have the shape"):
        plot_result(result, reference=reference.data[:10])
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'astro_dia\[plot\]'):
        plot_result(result)
