"""Interactive explorers for the smoothness weight lambda, the number of bins and the embedding size.

Two ways to turn the knobs of a toy pair-potential fit:

* :func:`live_explorer` retrains the model each time a slider moves. It needs a running kernel.
* :func:`static_explorer` shows a sweep computed beforehand: one PNG per grid point, held in
  nested ``widgets.Stack`` containers whose ``selected_index`` is tied to the sliders' ``index``
  by ``widgets.jslink``. The links live in the browser, so the explorer keeps working in a static
  HTML page (the published book) where the widget state is embedded and no kernel runs.

Both draw the same three panels (:func:`render_figure`): the energy fit, the first embedding
dimensions h_j(r), and the pointwise force error. This module is backend-agnostic (numpy,
matplotlib, ipywidgets): the training itself is the caller's ``train_fn``, which returns a
:class:`FitView`.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any
from dataclasses import dataclass, field

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from posenc.plot import plot_layer_panels

__all__ = [
    "LIVE_CLASS",
    "STATIC_CLASS",
    "FitView",
    "LiveExplorer",
    "PanelLimits",
    "ResultsGrid",
    "StaticExplorer",
    "TrainFn",
    "layer_explorer",
    "live_explorer",
    "render_figure",
    "render_png",
    "shared_limits",
    "static_explorer",
    "sweep",
]

STATIC_CLASS = "posenc-static-explorer"
"""CSS class of every :class:`StaticExplorer`'s outer box (``scripts/check_widgets.py`` looks for it)."""
LIVE_CLASS = "posenc-live-explorer"
"""CSS class of every :class:`LiveExplorer`'s outer box."""


@dataclass(frozen=True, eq=False)
class FitView:
    """What one trained pair model shows in an explorer: its fit, its embedding and its errors.

    Attributes:
      r: ``[N]`` evaluation distances (``length_unit``), increasing.
      energy_true, energy_pred: ``[N]`` reference and predicted pair energy (``energy_unit``).
      force_true, force_pred: ``[N]`` reference and predicted force -dE/dr (energy/length unit).
      r_train: ``[M]`` the training distances, drawn as a rug.
      embedding: ``[N, dim]`` the learned encoding h(r) on ``r``.
      energy_mae: test energy MAE (``energy_unit``).
      force_mae: test force MAE (energy/length unit).
      length_unit, energy_unit: axis labels, e.g. ``"Å"`` and ``"meV"``, or ``"σ"`` and ``"ε"``
        for the reduced units of ``posenc.toys``.
    """

    r: np.ndarray
    energy_true: np.ndarray
    energy_pred: np.ndarray
    force_true: np.ndarray
    force_pred: np.ndarray
    r_train: np.ndarray
    embedding: np.ndarray
    energy_mae: float
    force_mae: float
    length_unit: str = "Å"
    energy_unit: str = "meV"

    def __post_init__(self) -> None:
        n = np.shape(self.r)
        if len(n) != 1 or n[0] < 2:
            raise ValueError(f"r must be 1-D with >= 2 points, got shape {n}")
        for name in ("energy_true", "energy_pred", "force_true", "force_pred"):
            if np.shape(getattr(self, name)) != n:
                raise ValueError(f"{name} must have shape {n} like r, got {np.shape(getattr(self, name))}")
        if np.ndim(self.embedding) != 2 or np.shape(self.embedding)[0] != n[0]:
            raise ValueError(f"embedding must be [{n[0]}, dim], got shape {np.shape(self.embedding)}")
        if np.ndim(self.r_train) != 1:
            raise ValueError(f"r_train must be 1-D, got shape {np.shape(self.r_train)}")
        for name in ("r", "energy_true", "energy_pred", "force_true", "force_pred", "embedding"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{name} contains NaN or inf")

    @property
    def dim(self) -> int:
        """Embedding size."""
        return int(np.shape(self.embedding)[1])

    @property
    def force_unit(self) -> str:
        """Unit of the forces, ``energy_unit/length_unit``."""
        return f"{self.energy_unit}/{self.length_unit}"


TrainFn = Callable[..., FitView]
"""``train_fn(lam=..., n_bin=..., dim=...) -> FitView``: trains one toy model (seeded)."""


@dataclass(frozen=True)
class PanelLimits:
    """Fixed y-ranges, so that flipping between precomputed images shows the change, not a rescale.

    Attributes:
      energy: (low, high) of the energy panel (energy unit).
      force_error: (low, high) of the log-scale force-error panel (force unit), both > 0.
    """

    energy: tuple[float, float]
    force_error: tuple[float, float]


def _energy_limits(energy_true: np.ndarray) -> tuple[float, float]:
    """The true curve's range plus 15 % margin: a bad fit runs off the panel rather than squashing it."""
    lo, hi = float(np.min(energy_true)), float(np.max(energy_true))
    pad = 0.15 * max(hi - lo, 1e-12)
    return lo - pad, hi + pad


def shared_limits(views: Iterable[FitView]) -> PanelLimits:
    """Limits that fit every view: energy from the true curves, force error from all predictions."""
    views = list(views)
    if not views:
        raise ValueError("shared_limits needs at least one FitView")
    energy = _energy_limits(np.concatenate([v.energy_true for v in views]))
    err = np.concatenate([np.abs(v.force_pred - v.force_true) for v in views])
    hi = float(np.max(err)) if err.size else 1.0
    hi = max(hi, 1e-9) * 2.0
    return PanelLimits(energy=energy, force_error=(hi * 1e-5, hi))


def render_figure(view: FitView, *, title: str | None = None, n_dims: int = 10,
                  limits: PanelLimits | None = None, figsize: tuple[float, float] = (11.0, 3.2)) -> Figure:
    """Draws the three explorer panels for one trained model.

    Args:
      view: the trained model's curves.
      title: figure title (e.g. the setting ``"λ = 0.1, n_bin = 64"``).
      n_dims: how many embedding dimensions to draw (the paper's Fig. 1 shows 10).
      limits: fixed y-ranges; default: the energy range of the true curve, force error automatic.
      figsize: inches.

    Returns:
      A matplotlib ``Figure`` not registered with pyplot (so nothing leaks into the notebook).
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax_e, ax_h, ax_f = fig.subplots(1, 3)
    r = view.r
    lim = limits or PanelLimits(_energy_limits(view.energy_true), (np.nan, np.nan))

    ax_e.plot(r, view.energy_true, color="0.3", lw=2.5, label="true")
    ax_e.plot(r, view.energy_pred, color="C3", lw=1.3, label="model")
    ax_e.set_ylim(*lim.energy)
    r_label = f"r ({view.length_unit})"
    ax_e.set(xlabel=r_label, ylabel=f"E ({view.energy_unit})",
             title=f"fit: energy MAE {view.energy_mae:.3g} {view.energy_unit}")
    ax_e.legend(loc="upper right", fontsize=8)

    k = min(n_dims, view.dim)
    ax_h.plot(r, view.embedding[:, :k], lw=1.0)
    ax_h.set(xlabel=r_label, ylabel="$h_j(r)$", title=f"embedding: first {k} of {view.dim} dims")

    err = np.maximum(np.abs(view.force_pred - view.force_true), 1e-12)
    ax_f.semilogy(r, err, color="C0", lw=1.0)
    if np.all(np.isfinite(lim.force_error)):
        ax_f.set_ylim(*lim.force_error)
    ax_f.set(xlabel=r_label, ylabel=f"|F − F_true| ({view.force_unit})",
             title=f"error: force MAE {view.force_mae:.3g} {view.force_unit}")

    for ax in (ax_e, ax_h, ax_f):  # where the training data lie
        ax.plot(view.r_train, np.zeros_like(view.r_train), "|", color="k", ms=6, alpha=0.5,
                transform=ax.get_xaxis_transform())
        ax.set_xlim(r[0], r[-1])
    if title:
        fig.suptitle(title)
    return fig


def _png(fig: Figure, dpi: int) -> bytes:
    """A figure as PNG bytes, deterministic: no timestamp or version metadata."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def render_png(view: FitView, *, title: str | None = None, limits: PanelLimits | None = None,
               dpi: int = 72, **kwargs: Any) -> bytes:
    """:func:`render_figure` as PNG bytes (deterministic: no timestamp or version metadata)."""
    return _png(render_figure(view, title=title, limits=limits, **kwargs), dpi)


def _label(value: float) -> str:
    return f"{value:g}"


def _setting(lam: float, n_bin: int, dim: int | None = None) -> str:
    text = f"λ = {_label(lam)}, n_bin = {n_bin}"
    return text if dim is None else f"{text}, dim = {dim}"


@dataclass
class ResultsGrid:
    """A sweep over lambda x n_bin at one embedding size.

    Attributes:
      lambdas: the smoothness weights, in slider order.
      n_bins: the bin counts, in slider order.
      dim: the embedding size used throughout.
      views: ``{(lam, n_bin): FitView}`` for every grid point.
    """

    lambdas: tuple[float, ...]
    n_bins: tuple[int, ...]
    dim: int
    views: dict[tuple[float, int], FitView] = field(repr=False)

    def __post_init__(self) -> None:
        self.lambdas = tuple(float(v) for v in self.lambdas)
        self.n_bins = tuple(int(v) for v in self.n_bins)
        for name, values in (("lambdas", self.lambdas), ("n_bins", self.n_bins)):
            if not values:
                raise ValueError(f"{name} must not be empty")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has repeated values: {values}")
        missing = [(lam, n) for lam in self.lambdas for n in self.n_bins if (lam, n) not in self.views]
        if missing:
            raise ValueError(f"views are missing grid points {missing}")
        for key, view in self.views.items():
            if view.dim != self.dim:
                raise ValueError(f"view {key} has dim {view.dim}, expected {self.dim}")

    def metric(self, name: str) -> np.ndarray:
        """``[len(lambdas), len(n_bins)]`` array of ``"energy_mae"`` or ``"force_mae"``."""
        if name not in ("energy_mae", "force_mae"):
            raise ValueError(f"metric must be 'energy_mae' or 'force_mae', got {name!r}")
        return np.array([[getattr(self.views[(lam, n)], name) for n in self.n_bins] for lam in self.lambdas])

    def as_cache(self) -> dict[tuple[float, int, int], FitView]:
        """The views keyed ``(lam, n_bin, dim)``, the key :class:`LiveExplorer` caches by."""
        return {(lam, n, self.dim): v for (lam, n), v in self.views.items()}


def sweep(train_fn: TrainFn, lambdas: Sequence[float], n_bins: Sequence[int], dim: int, *,
          progress: bool = True) -> ResultsGrid:
    """Trains one model per grid point, lambda-major.

    Args:
      train_fn: ``train_fn(lam=..., n_bin=..., dim=...) -> FitView``.
      lambdas, n_bins: the grid.
      dim: embedding size for every point.
      progress: show a tqdm bar.

    Returns:
      The :class:`ResultsGrid`.
    """
    keys = [(float(lam), int(n)) for lam in lambdas for n in n_bins]
    views = {}
    for lam, n in tqdm(keys, desc="sweep λ × n_bin", disable=not progress):
        views[(lam, n)] = train_fn(lam=lam, n_bin=n, dim=int(dim))
    return ResultsGrid(tuple(lambdas), tuple(n_bins), int(dim), views)


def _slider(description: str, values: Sequence[float], value: float, *, continuous: bool) -> widgets.SelectionSlider:
    return widgets.SelectionSlider(
        options=[(_label(v), v) for v in values], value=value, description=description,
        continuous_update=continuous, style={"description_width": "initial"},
        layout=widgets.Layout(width="320px"))


def _fit_width() -> widgets.Layout:
    """Shrinks a picture to the page's width (the book's text column is narrower than the figure)."""
    return widgets.Layout(max_width="100%", height="auto")


def _controls(*children: widgets.Widget) -> widgets.HBox:
    """A row of controls that wraps onto a second line where the page is narrower than the row."""
    return widgets.HBox(list(children), layout=widgets.Layout(flex_flow="row wrap"))


def _index_of(values: Sequence, value: object, name: str) -> int:
    if value not in values:
        raise ValueError(f"{name} = {value!r} is not in the grid {tuple(values)}")
    return list(values).index(value)


class StaticExplorer(widgets.VBox):
    """Sliders over lambda and n_bin that switch between precomputed images, in the browser only.

    Layout: ``VBox([HBox([lam_slider, n_bin_slider]), outer])`` where ``outer`` is a ``Stack`` with
    one child per lambda, each child an inner ``Stack`` of one ``Image`` per n_bin. Links:
    ``lam_slider.index -> outer.selected_index`` and ``n_bin_slider.index -> inner.selected_index``
    for every inner stack. Every link is a ``jslink``, so the switching needs no kernel.

    Attributes:
      grid: the :class:`ResultsGrid` shown.
      lam_slider, n_bin_slider: the two ``SelectionSlider`` widgets (options = the grid values).
      outer: the outer ``Stack``; ``inners``: its children; ``images``: ``{(lam, n_bin): Image}``.
      links: the ``jslink`` objects (``1 + len(lambdas)`` of them).
      limits: the shared :class:`PanelLimits` of every image.
    """

    def __init__(self, grid: ResultsGrid, *, lam: float | None = None, n_bin: int | None = None,
                 dpi: int = 72, progress: bool = True) -> None:
        lam = grid.lambdas[0] if lam is None else float(lam)
        n_bin = grid.n_bins[0] if n_bin is None else int(n_bin)
        i0 = _index_of(grid.lambdas, lam, "lam")
        j0 = _index_of(grid.n_bins, n_bin, "n_bin")
        self.grid = grid
        self.limits = shared_limits(grid.views.values())
        self.lam_slider = _slider("λ (smoothness weight)", grid.lambdas, lam, continuous=True)
        self.n_bin_slider = _slider("n_bin", grid.n_bins, n_bin, continuous=True)
        self.images: dict[tuple[float, int], widgets.Image] = {}
        keys = [(la, n) for la in grid.lambdas for n in grid.n_bins]
        for la, n in tqdm(keys, desc="render", disable=not progress):
            png = render_png(grid.views[(la, n)], title=_setting(la, n, grid.dim), limits=self.limits, dpi=dpi)
            self.images[(la, n)] = widgets.Image(value=png, format="png", layout=_fit_width())
        self.inners = [widgets.Stack([self.images[(la, n)] for n in grid.n_bins], selected_index=j0)
                       for la in grid.lambdas]
        self.outer = widgets.Stack(self.inners, selected_index=i0)
        self.links = [widgets.jslink((self.lam_slider, "index"), (self.outer, "selected_index"))]
        self.links += [widgets.jslink((self.n_bin_slider, "index"), (inner, "selected_index"))
                       for inner in self.inners]
        super().__init__([_controls(self.lam_slider, self.n_bin_slider), self.outer])
        self.add_class(STATIC_CLASS)  # lets a browser test find the explorer on a page

    def shown(self) -> widgets.Image:
        """The image the stacks currently select (as the kernel sees it)."""
        inner = self.outer.children[self.outer.selected_index]
        return inner.children[inner.selected_index]


def static_explorer(results_grid: ResultsGrid, *, lam: float | None = None, n_bin: int | None = None,
                    dpi: int = 72, progress: bool = True) -> StaticExplorer:
    """A kernel-free explorer over a precomputed sweep (see :class:`StaticExplorer`).

    Args:
      results_grid: the sweep, e.g. from :func:`sweep`.
      lam, n_bin: the initially shown setting (default: the first grid values).
      dpi: resolution of the PNGs (they are embedded in the page: 72 keeps each ~40 kB).
      progress: show a tqdm bar while rendering.
    """
    return StaticExplorer(results_grid, lam=lam, n_bin=n_bin, dpi=dpi, progress=progress)


class LiveExplorer(widgets.VBox):
    """Sliders over lambda, n_bin and dim that retrain the model on release and redraw its panels.

    Each slider change calls ``train_fn(lam=..., n_bin=..., dim=...)`` unless that setting is in
    ``cache`` (results are cached, so going back is instant). Needs a kernel: in a static page the
    sliders move but nothing retrains.

    Attributes:
      lam_slider, n_bin_slider, dim_slider: ``SelectionSlider`` widgets over the given values.
      image: the ``Image`` showing the current panels; ``status``: an ``HTML`` line.
      cache: ``{(lam, n_bin, dim): FitView}``.
    """

    def __init__(self, train_fn: TrainFn, lambdas: Sequence[float], n_bins: Sequence[int], dims: Sequence[int], *,
                 value: tuple[float, int, int] | None = None,
                 cache: MutableMapping[tuple[float, int, int], FitView] | None = None, dpi: int = 72) -> None:
        for name, values in (("lambdas", lambdas), ("n_bins", n_bins), ("dims", dims)):
            if len(values) == 0:
                raise ValueError(f"{name} must not be empty")
        lambdas = [float(v) for v in lambdas]
        n_bins, dims = [int(v) for v in n_bins], [int(v) for v in dims]
        lam, n_bin, dim = value if value is not None else (lambdas[0], n_bins[0], dims[0])
        _index_of(lambdas, float(lam), "lam")
        _index_of(n_bins, int(n_bin), "n_bin")
        _index_of(dims, int(dim), "dim")
        self.train_fn = train_fn
        self.cache = {} if cache is None else cache
        self.dpi = dpi
        self._pngs: dict[tuple[float, int, int], bytes] = {}
        self.lam_slider = _slider("λ (smoothness weight)", lambdas, float(lam), continuous=False)
        self.n_bin_slider = _slider("n_bin", n_bins, int(n_bin), continuous=False)
        self.dim_slider = _slider("dim", dims, int(dim), continuous=False)
        self.image = widgets.Image(format="png", layout=_fit_width())
        self.status = widgets.HTML()
        super().__init__([_controls(self.lam_slider, self.n_bin_slider, self.dim_slider),
                          self.status, self.image])
        self.add_class(LIVE_CLASS)
        self.refresh()
        for s in (self.lam_slider, self.n_bin_slider, self.dim_slider):
            s.observe(self._on_change, names="value")

    @property
    def setting(self) -> tuple[float, int, int]:
        """The sliders' current ``(lam, n_bin, dim)``."""
        return float(self.lam_slider.value), int(self.n_bin_slider.value), int(self.dim_slider.value)

    def refresh(self) -> FitView:
        """Trains (or fetches from the cache) the current setting and redraws; returns its view."""
        lam, n_bin, dim = key = self.setting
        if key not in self.cache:
            self.status.value = f"training {_setting(lam, n_bin, dim)} …"
            self.cache[key] = self.train_fn(lam=lam, n_bin=n_bin, dim=dim)
        view = self.cache[key]
        if key not in self._pngs:
            self._pngs[key] = render_png(view, title=_setting(lam, n_bin, dim), dpi=self.dpi)
        self.image.value = self._pngs[key]
        self.status.value = (f"{_setting(lam, n_bin, dim)}: test energy MAE {view.energy_mae:.3g} "
                             f"{view.energy_unit}, force MAE {view.force_mae:.3g} {view.force_unit}")
        return view

    def _on_change(self, change: dict) -> None:
        # An exception inside a traitlets observer only reaches the kernel log; show it instead.
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - reported to the reader, not swallowed
            self.status.value = f"<b>training failed</b>: {html.escape(f'{type(exc).__name__}: {exc}')}"


def live_explorer(train_fn: TrainFn, lambdas: Sequence[float], n_bins: Sequence[int], dims: Sequence[int], *,
                  value: tuple[float, int, int] | None = None,
                  cache: MutableMapping[tuple[float, int, int], FitView] | None = None,
                  dpi: int = 72) -> LiveExplorer:
    """An explorer that retrains on every slider release (see :class:`LiveExplorer`).

    Args:
      train_fn: ``train_fn(lam=..., n_bin=..., dim=...) -> FitView``; a few seconds each.
      lambdas, n_bins, dims: the slider values.
      value: the initial ``(lam, n_bin, dim)`` (default: the first of each).
      cache: results already known, e.g. ``ResultsGrid.as_cache()``; filled as the reader explores.
      dpi: resolution of the drawn panels.
    """
    return LiveExplorer(train_fn, lambdas, n_bins, dims, value=value, cache=cache, dpi=dpi)


def layer_explorer(x: np.ndarray, emb_by_name: Mapping[str, np.ndarray], g_by_name: Mapping[str, np.ndarray], *,
                   x_min: float | None = None, x_max: float | None = None, dpi: int = 72) -> widgets.VBox:
    """Drop-downs over models and layers that switch between precomputed panels, in the browser only.

    Each (model, layer) gets one image of :func:`posenc.plot.plot_layer_panels` (first dimensions,
    PCA path, ĝ). Layout: ``VBox([HBox([model, layer]), outer])`` where ``outer`` is a ``Stack``
    with one child per model, each a ``Stack`` of one ``Image`` per layer; ``jslink`` ties the
    model drop-down's index to ``outer`` and the layer drop-down's to every inner stack, so the
    explorer works in the published page without a kernel.

    Args:
      x: ``[points]`` grid.
      emb_by_name: model name -> ``[layers, points, dim]`` embedding (``posenc.interpret.sample``).
      g_by_name: the same names -> ``[layers, points, dim]`` derivatives (``sample(..., order=1)``).
      x_min, x_max: the range x̂ is normalised by (default: the grid's extremes).
      dpi: resolution of the PNGs embedded in the page.

    Raises:
      ValueError: no model, different names in the two mappings, or models with different
        numbers of layers.
    """
    names = list(emb_by_name)
    if not names or set(names) != set(g_by_name):
        raise ValueError(f"need the same non-empty names in both mappings, got {names} and {list(g_by_name)}")
    n_layers = {np.shape(emb_by_name[t])[0] for t in names} | {np.shape(g_by_name[t])[0] for t in names}
    if len(n_layers) != 1:
        raise ValueError(f"models have different numbers of layers: {sorted(n_layers)}")
    layers = range(n_layers.pop())

    def image(name: str, layer: int) -> widgets.Image:
        fig = plot_layer_panels(x, emb_by_name[name][layer], g_by_name[name][layer], x_min=x_min, x_max=x_max,
                                title=f"{name}, layer {layer + 1}")
        return widgets.Image(value=_png(fig, dpi), format="png", layout=_fit_width())

    inners = [widgets.Stack([image(t, i) for i in layers], selected_index=0) for t in names]
    outer = widgets.Stack(inners, selected_index=0)
    model_dd = widgets.Dropdown(options=names, description="model")
    layer_dd = widgets.Dropdown(options=[f"layer {i + 1}" for i in layers], description="layer")
    box = widgets.VBox([_controls(model_dd, layer_dd), outer])
    # the links live as long as the box: a jslink dropped by Python is closed in the browser too
    box.links = [widgets.jslink((model_dd, "index"), (outer, "selected_index"))]
    box.links += [widgets.jslink((layer_dd, "index"), (inner, "selected_index")) for inner in inners]
    return box
