"""posenc.plot: every figure function returns a Figure with the expected axes and artists."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from posenc import plot as P  # noqa: E402

X = np.linspace(0.5, 5.0, 60)
EMB = np.random.default_rng(0).normal(size=(60, 12)).cumsum(axis=0)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_plot_dimensions_draws_n_lines_against_x_hat():
    fig = P.plot_dimensions(X, EMB, n=10)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    lines = fig.axes[0].get_lines()
    assert len(lines) == 10
    np.testing.assert_allclose(lines[0].get_xdata(), (X - 0.5) / 4.5)
    assert len(P.plot_dimensions(X, EMB[None, :, :3], n=10).axes[0].get_lines()) == 3
    with pytest.raises(ValueError, match="one layer"):
        P.plot_dimensions(X, np.stack([EMB, EMB]))


def test_plot_pca_draws_a_coloured_curve_and_colorbar():
    fig = P.plot_pca(EMB, X)
    assert len(fig.axes) == 2  # the plot and its colorbar
    (curve,) = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    assert len(curve.get_segments()) == 59
    assert "PC 1" in fig.axes[0].get_xlabel()


def test_plot_normalised_derivative_one_line_per_task():
    fig = P.plot_normalised_derivative(X, {"short": np.exp(-X), "long": np.ones_like(X)})
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["short", "long"]
    with pytest.raises(ValueError, match="expected"):
        P.plot_normalised_derivative(X, {"bad": np.ones(3)})


def test_plot_similarity_labels_every_cell():
    m = np.array([[1.0, 0.3, 0.2], [0.3, 1.0, 0.5], [0.2, 0.5, 1.0]])
    fig = P.plot_similarity(m, ["a", "b", "c"])
    assert len(fig.axes) == 2
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(format(v, ".2f") for v in m.ravel())
    with pytest.raises(ValueError, match=r"\[2, 2\]"):
        P.plot_similarity(m, ["a", "b"])


def test_plot_error_vs_series_and_error_bars():
    dims = [4, 8, 16, 32]
    errs = np.random.default_rng(1).uniform(1, 2, size=(4, 3))
    fig = P.plot_error_vs(dims, {"λ = 0": errs, "λ = 0.1": errs.mean(1)}, "embedding size", logx=True)
    ax = fig.axes[0]
    assert len(ax.containers) == 2  # one errorbar container per series
    bars = ax.containers[0].lines[2]  # the vertical bar collection of the seeded series
    assert len(bars) == 1 and len(bars[0].get_segments()) == 4
    assert ax.containers[1].lines[2] == ()  # no seeds -> no bars
    np.testing.assert_allclose(ax.containers[0].lines[0].get_ydata(), errs.mean(1))
    with pytest.raises(ValueError, match=r"\[4\]"):
        P.plot_error_vs(dims, np.ones(3), "n_bin")


def test_axes_argument_draws_into_an_existing_figure():
    fig, axes = plt.subplots(1, 2)
    assert P.plot_dimensions(X, EMB, n=2, ax=axes[1]) is fig
    assert len(axes[1].get_lines()) == 2 and len(axes[0].get_lines()) == 0


def test_plot_layer_panels_draws_three_panels_off_pyplot():
    g = np.gradient(EMB, X, axis=0)
    fig = P.plot_layer_panels(X, EMB, g, title="one layer")
    assert len(fig.axes) >= 3  # the PCA panel adds a colorbar
    assert len(fig.axes[0].lines) == 10 and fig.get_suptitle() == "one layer"
    assert plt.get_fignums() == []  # not registered with pyplot: nothing leaks into a notebook


def test_plot_similarity_panels_share_one_colour_scale():
    a = np.array([[1.0, 0.3], [0.3, 0.9]])
    b = np.array([[0.8, 0.1], [0.1, 0.7]])
    fig = P.plot_similarity_panels({"first": a, "second": b}, ["p", "q"])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and all(im.get_clim() == (0.1, 1.0) for im in images)
    # labels switch to white on the dark part of the shared scale: 0.1 + 0.6 * 0.9 = 0.64
    texts = {t.get_text(): t.get_color() for ax in fig.axes for t in ax.texts}
    assert texts["0.100"] == "white" and texts["0.900"] == "black"
    with pytest.raises(ValueError, match="empty"):
        P.plot_similarity_panels({}, ["p"])
