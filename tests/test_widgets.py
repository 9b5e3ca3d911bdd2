"""Tests of posenc.widgets: the explorers' structure, their links and their calls, with a fake fast trainer."""

from __future__ import annotations

import io

import ipywidgets as widgets
import numpy as np
import pytest
from matplotlib.image import imread

from posenc.widgets import (
    LIVE_CLASS,
    STATIC_CLASS,
    FitView,
    ResultsGrid,
    live_explorer,
    render_png,
    shared_limits,
    static_explorer,
    sweep,
)

LAMBDAS = (0.0, 0.1, 1.0)
N_BINS = (16, 64)
DIM = 4


class FakeTrainer:
    """A deterministic stand-in for a training run: the error grows with n_bin and shrinks with lambda."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int, int]] = []

    def __call__(self, *, lam: float, n_bin: int, dim: int) -> FitView:
        self.calls.append((lam, n_bin, dim))
        r = np.linspace(0.9, 3.0, 60)
        e_true = 4.0 * (r**-12 - r**-6)
        f_true = 4.0 * (12 * r**-13 - 6 * r**-7)
        amp = 0.01 * n_bin / (1.0 + 10.0 * lam)
        wiggle = amp * np.sin(n_bin * r)
        embedding = np.stack([np.sin((j + 1) * r + lam) for j in range(dim)], axis=1)
        return FitView(r=r, energy_true=e_true, energy_pred=e_true + wiggle, force_true=f_true,
                       force_pred=f_true + amp * n_bin * np.cos(n_bin * r), r_train=r[::5], embedding=embedding,
                       energy_mae=float(np.mean(np.abs(wiggle))), force_mae=float(amp * n_bin),
                       length_unit="σ", energy_unit="ε")


@pytest.fixture(scope="module")
def grid() -> ResultsGrid:
    return sweep(FakeTrainer(), LAMBDAS, N_BINS, DIM, progress=False)


@pytest.fixture(scope="module")
def explorer(grid: ResultsGrid):
    return static_explorer(grid, lam=0.1, n_bin=64, progress=False)


def test_sweep_covers_the_grid_lambda_major():
    trainer = FakeTrainer()
    grid = sweep(trainer, LAMBDAS, N_BINS, DIM, progress=False)
    assert trainer.calls == [(lam, n, DIM) for lam in LAMBDAS for n in N_BINS]
    mae = grid.metric("force_mae")
    assert mae.shape == (len(LAMBDAS), len(N_BINS))
    assert mae[0, 1] == pytest.approx(0.01 * 64 * 64)
    assert mae[2, 1] == pytest.approx(0.01 * 64 * 64 / 11.0)
    assert set(grid.as_cache()) == {(lam, n, DIM) for lam in LAMBDAS for n in N_BINS}


def test_results_grid_rejects_missing_points_and_wrong_dim(grid: ResultsGrid):
    views = dict(grid.views)
    del views[(1.0, 64)]
    with pytest.raises(ValueError, match="missing grid points"):
        ResultsGrid(LAMBDAS, N_BINS, DIM, views)
    with pytest.raises(ValueError, match="dim 4, expected 8"):
        ResultsGrid(LAMBDAS, N_BINS, 8, grid.views)
    with pytest.raises(ValueError, match="metric"):
        grid.metric("loss")


def test_fitview_rejects_bad_shapes_and_nan():
    view = FakeTrainer()(lam=0.0, n_bin=16, dim=3)
    fields = dict(view.__dict__)
    with pytest.raises(ValueError, match="energy_pred"):
        FitView(**{**fields, "energy_pred": fields["energy_pred"][:-1]})
    with pytest.raises(ValueError, match="embedding"):
        FitView(**{**fields, "embedding": fields["embedding"][:-1]})
    bad = fields["force_pred"].copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="force_pred contains NaN"):
        FitView(**{**fields, "force_pred": bad})


def test_static_explorer_has_one_image_per_grid_point(explorer, grid: ResultsGrid):
    assert len(explorer.outer.children) == len(LAMBDAS)
    assert all(isinstance(inner, widgets.Stack) for inner in explorer.outer.children)
    assert all(len(inner.children) == len(N_BINS) for inner in explorer.outer.children)
    images = [img for inner in explorer.outer.children for img in inner.children]
    assert len(images) == len(LAMBDAS) * len(N_BINS)
    assert all(isinstance(img, widgets.Image) and img.format == "png" for img in images)
    # every image is a distinct, decodable PNG, stored in the grid's order
    assert len({bytes(img.value) for img in images}) == len(images)
    for i, lam in enumerate(LAMBDAS):
        for j, n in enumerate(N_BINS):
            assert explorer.outer.children[i].children[j] is explorer.images[(lam, n)]
    assert imread(io.BytesIO(bytes(images[0].value)), format="png").ndim == 3
    assert STATIC_CLASS in explorer._dom_classes


def test_static_explorer_sliders_match_the_grid(explorer):
    assert explorer.lam_slider.options == tuple((f"{v:g}", v) for v in LAMBDAS)
    assert explorer.n_bin_slider.options == tuple((str(n), n) for n in N_BINS)
    assert explorer.lam_slider.value == 0.1 and explorer.lam_slider.index == 1
    assert explorer.n_bin_slider.value == 64 and explorer.n_bin_slider.index == 1
    assert explorer.outer.selected_index == 1
    assert all(inner.selected_index == 1 for inner in explorer.outer.children)
    assert explorer.shown() is explorer.images[(0.1, 64)]


def test_static_explorer_links_slider_index_to_stack_selected_index(explorer):
    assert len(explorer.links) == 1 + len(LAMBDAS)
    assert all(isinstance(link, widgets.widget_link.Link) for link in explorer.links)  # jslink: browser-side only
    first, rest = explorer.links[0], explorer.links[1:]
    assert first.source == (explorer.lam_slider, "index")
    assert first.target == (explorer.outer, "selected_index")
    for link, inner in zip(rest, explorer.outer.children, strict=True):
        assert link.source == (explorer.n_bin_slider, "index")
        assert link.target == (inner, "selected_index")
    # the links and everything they reach are part of the widget state a static page embeds
    state = widgets.Widget.get_manager_state(drop_defaults=True, widgets=None)["state"]
    for link in explorer.links:
        assert link.model_id in state
        assert state[link.model_id]["state"]["source"][0] == f"IPY_MODEL_{link.source[0].model_id}"


def test_static_explorer_rejects_values_off_the_grid(grid: ResultsGrid):
    with pytest.raises(ValueError, match="lam = 0.5 is not in the grid"):
        static_explorer(grid, lam=0.5, progress=False)


def test_static_explorer_is_deterministic(grid: ResultsGrid, explorer):
    # same view, same limits, same title -> byte-identical PNG (no timestamps in the file)
    for key in [(0.0, 16), (1.0, 64)]:
        png = render_png(grid.views[key], title=f"λ = {key[0]:g}, n_bin = {key[1]}, dim = {DIM}",
                         limits=explorer.limits)
        assert png == bytes(explorer.images[key].value)


def test_shared_limits_cover_every_view(grid: ResultsGrid):
    lim = shared_limits(grid.views.values())
    worst = max(np.max(np.abs(v.force_pred - v.force_true)) for v in grid.views.values())
    assert lim.force_error[1] >= worst > lim.force_error[0] > 0
    e_true = grid.views[(0.0, 16)].energy_true
    assert lim.energy[0] < e_true.min() and lim.energy[1] > e_true.max()


def test_live_explorer_trains_with_the_slider_values():
    trainer = FakeTrainer()
    live = live_explorer(trainer, LAMBDAS, N_BINS, (4, 8))
    assert trainer.calls == [(0.0, 16, 4)]
    first = bytes(live.image.value)
    live.lam_slider.value = 0.1
    live.n_bin_slider.value = 64
    live.dim_slider.value = 8
    assert trainer.calls == [(0.0, 16, 4), (0.1, 16, 4), (0.1, 64, 4), (0.1, 64, 8)]
    assert live.setting == (0.1, 64, 8)
    assert bytes(live.image.value) != first
    assert "λ = 0.1, n_bin = 64, dim = 8" in live.status.value
    view = live.cache[(0.1, 64, 8)]
    assert f"force MAE {view.force_mae:.3g} ε/σ" in live.status.value
    assert all(not s.continuous_update for s in (live.lam_slider, live.n_bin_slider, live.dim_slider))
    assert LIVE_CLASS in live._dom_classes


def test_live_explorer_serves_settings_seen_before_from_its_cache():
    trainer = FakeTrainer()
    live = live_explorer(trainer, LAMBDAS, N_BINS, (4,))
    first = bytes(live.image.value)
    live.lam_slider.value = 1.0
    live.lam_slider.value = 0.0
    assert trainer.calls == [(0.0, 16, 4), (1.0, 16, 4)]
    assert bytes(live.image.value) == first


def test_live_explorer_uses_a_given_cache_and_reports_failures(grid: ResultsGrid):
    trainer = FakeTrainer()
    live = live_explorer(trainer, LAMBDAS, N_BINS, (DIM,), value=(1.0, 64, DIM), cache=grid.as_cache())
    assert trainer.calls == []  # the initial drawing came from the precomputed sweep
    assert bytes(live.image.value) == render_png(grid.views[(1.0, 64)], title=f"λ = 1, n_bin = 64, dim = {DIM}")

    def broken(**kwargs):
        raise RuntimeError("diverged <NaN>")

    live = live_explorer(broken, LAMBDAS, N_BINS, (DIM, 8), cache=grid.as_cache())
    live.dim_slider.value = 8
    assert "training failed" in live.status.value and "diverged &lt;NaN&gt;" in live.status.value


def test_layer_explorer_one_image_per_model_and_layer_linked_in_the_browser():
    from posenc.widgets import layer_explorer

    x = np.linspace(0.0, 1.0, 50)
    emb = {name: np.stack([np.sin((k + 1) * np.outer(x, np.arange(1, 5))) for k in range(2)]) for name in "ab"}
    g = {name: np.gradient(e, x, axis=1) for name, e in emb.items()}
    box = layer_explorer(x, emb, g)
    (model_dd, layer_dd), outer = box.children[0].children, box.children[1]
    assert list(model_dd.options) == ["a", "b"] and list(layer_dd.options) == ["layer 1", "layer 2"]
    assert box.children[0].layout.flex_flow == "row wrap"  # the controls wrap on a narrow page
    assert [len(inner.children) for inner in outer.children] == [2, 2]
    pngs = {img.value for inner in outer.children for img in inner.children}
    assert len(pngs) == 4  # four different pictures
    linked = {(link.source[0], link.target[0]) for link in box.links}
    assert (model_dd, outer) in linked and all((layer_dd, inner) in linked for inner in outer.children)
    with pytest.raises(ValueError, match="same non-empty names"):
        layer_explorer(x, emb, {"a": g["a"]})
    with pytest.raises(ValueError, match="numbers of layers"):
        layer_explorer(x, {**emb, "b": emb["b"][:1]}, {**g, "b": g["b"][:1]})
