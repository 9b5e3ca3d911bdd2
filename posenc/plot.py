"""The book's figures in the styles of the paper's Fig. 1-5 (matplotlib).

Every function returns the :class:`matplotlib.figure.Figure` it drew on and never calls
``plt.show`` (notebooks display the returned figure; scripts save it). Pass ``ax=`` to draw
into an existing axes instead of a new figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from posenc.interpret import normalised_derivative, pca_2d


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        fig = ax.get_figure(root=True)
        if fig is None:
            raise ValueError("ax is not on a figure")
        return fig, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _x_hat(x: Any, x_min: float | None, x_max: float | None) -> np.ndarray:
    """x̂ = (x - x_min)/(x_max - x_min); the range defaults to the grid's own extremes."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"x must be a finite 1-D grid of >= 2 points, got shape {x.shape}")
    lo = x.min() if x_min is None else x_min
    hi = x.max() if x_max is None else x_max
    if not hi > lo:
        raise ValueError(f"empty x range [{lo}, {hi}]")
    return (x - lo) / (hi - lo)


def _one_layer(emb: Any, points: int) -> np.ndarray:
    """``[points, dim]`` from ``[points, dim]`` or ``[1, points, dim]``."""
    e = np.asarray(emb, dtype=np.float64)
    if e.ndim == 3 and e.shape[0] == 1:
        e = e[0]
    if e.ndim != 2 or e.shape[0] != points:
        raise ValueError(f"embedding must be [points={points}, dim] (one layer), got shape {np.shape(emb)}")
    return e


def plot_dimensions(
    x: Any,
    emb: Any,
    n: int = 10,
    *,
    x_min: float | None = None,
    x_max: float | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Fig. 1: the first ``n`` dimensions h_j(x) against the normalised position x̂.

    Args:
      x: ``[points]`` grid (unit of x).
      emb: ``[points, dim]`` (or ``[1, points, dim]``) embedding sampled on ``x``.
      n: how many dimensions to draw (fewer if dim < n).
      x_min, x_max: the range x̂ is normalised by (default: the grid's extremes; pass the
        encoding's range to match the paper).
      title: axes title.
      ax: draw here instead of a new figure.
    """
    xh = _x_hat(x, x_min, x_max)
    e = _one_layer(emb, xh.size)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fig, ax = _axes(ax, (6.0, 3.5))
    colors = plt.get_cmap("tab10")
    for j in range(min(n, e.shape[1])):
        ax.plot(xh, e[:, j], color=colors(j % 10), lw=1.5, label=f"j = {j + 1}")
    ax.set_xlabel(r"normalised position $\hat{x}$")
    ax.set_ylabel(r"$h_j(\hat{x})$")
    ax.legend(fontsize="x-small", ncol=2, loc="best")
    if title:
        ax.set_title(title)
    return fig


def plot_pca(
    emb: Any,
    x: Any | None = None,
    *,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Fig. 2: the embedding curve projected on its first two principal components, coloured by x̂.

    Args:
      emb: ``[points, dim]`` (or ``[1, points, dim]``) embedding sampled on an increasing grid.
      x: ``[points]`` grid used for the colours (default: the point index).
      title: axes title.
      ax: draw here instead of a new figure.
    """
    coords, explained = pca_2d(emb)
    c = _x_hat(np.arange(len(coords)) if x is None else x, None, None)
    if c.size != len(coords):
        raise ValueError(f"x has {c.size} points but the embedding has {len(coords)}")
    fig, ax = _axes(ax, (4.5, 4.0))
    segments = np.stack([coords[:-1], coords[1:]], axis=1)  # [points - 1, 2, 2]
    line = LineCollection(list(segments), cmap="viridis", linewidths=2.0)
    line.set_array(0.5 * (c[:-1] + c[1:]))
    ax.add_collection(line)
    ax.autoscale()
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    fig.colorbar(line, ax=ax, label=r"$\hat{x}$")
    if title:
        ax.set_title(title)
    return fig


def plot_normalised_derivative(
    x: Any,
    ghat_by_task: Mapping[str, Any],
    *,
    x_min: float | None = None,
    x_max: float | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Fig. 3: ĝ(x̂) per task, one line each.

    Args:
      x: ``[points]`` grid.
      ghat_by_task: task name -> ``[points]`` normalised derivative
        (``posenc.interpret.normalised_derivative(g)[layer]`` or its mean over layers).
      x_min, x_max: the range x̂ is normalised by (default: the grid's extremes).
      title: axes title.
      ax: draw here instead of a new figure.
    """
    xh = _x_hat(x, x_min, x_max)
    if not ghat_by_task:
        raise ValueError("ghat_by_task is empty")
    fig, ax = _axes(ax, (5.5, 3.5))
    for name, ghat in ghat_by_task.items():
        g = np.asarray(ghat, dtype=np.float64)
        if g.shape != xh.shape:
            raise ValueError(f"ĝ of {name!r} has shape {g.shape}, expected {xh.shape}")
        ax.plot(xh, g, lw=1.8, label=name)
    ax.set_xlabel(r"normalised position $\hat{x}$")
    ax.set_ylabel(r"$\hat{g}(\hat{x})$")
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_similarity(
    matrix: Any,
    task_names: Sequence[str],
    *,
    title: str | None = None,
    fmt: str = ".2f",
    ax: Axes | None = None,
) -> Figure:
    """Fig. 4: the pairwise similarity matrix as a heatmap, each cell labelled with its value.

    Args:
      matrix: ``[tasks, tasks]`` (``posenc.interpret.similarity_matrix``).
      task_names: the row/column labels.
      title: axes title.
      fmt: number format of the cell labels.
      ax: draw here instead of a new figure.
    """
    m = np.asarray(matrix, dtype=np.float64)
    k = len(task_names)
    if m.shape != (k, k):
        raise ValueError(f"matrix must be [{k}, {k}] for {k} task names, got shape {m.shape}")
    side = 1.0 + 0.7 * k
    fig, ax = _axes(ax, (side + 1.2, side))
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), task_names, rotation=45, ha="right")
    ax.set_yticks(range(k), task_names)
    for i in range(k):
        for j in range(k):
            # light text on the dark end of viridis, dark text on the light end
            ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize="small",
                    color="white" if m[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="similarity")
    if title:
        ax.set_title(title)
    return fig


def plot_error_vs(
    param_values: Any,
    errors: Any,
    xlabel: str,
    *,
    ylabel: str = "test error",
    logx: bool = False,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Fig. 5: test error against a hyperparameter (embedding size, n_bin), with error bars.

    Args:
      param_values: ``[k]`` hyperparameter values.
      errors: ``[k]`` (no bars), ``[k, seeds]`` (mean ± standard deviation over seeds), or a
        mapping label -> such an array for several series (e.g. with / without smoothness).
      xlabel: the hyperparameter's name.
      ylabel: the error's name and unit.
      logx: logarithmic x axis (sizes in powers of two).
      title: axes title.
      ax: draw here instead of a new figure.
    """
    p = np.asarray(param_values, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"param_values must be 1-D and non-empty, got shape {p.shape}")
    series = errors if isinstance(errors, Mapping) else {None: errors}
    fig, ax = _axes(ax, (5.0, 3.5))
    for label, err in series.items():
        e = np.asarray(err, dtype=np.float64)
        if e.ndim not in (1, 2) or e.shape[0] != p.size:
            raise ValueError(f"errors{'' if label is None else f' of {label!r}'} must be [{p.size}] or "
                             f"[{p.size}, seeds], got shape {e.shape}")
        if not np.all(np.isfinite(e)):
            raise ValueError("errors contain NaN or inf")
        mean = e if e.ndim == 1 else e.mean(axis=1)
        std = None if e.ndim == 1 or e.shape[1] < 2 else e.std(axis=1, ddof=1)
        ax.errorbar(p, mean, yerr=std, marker="o", capsize=3, label=label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if isinstance(errors, Mapping):
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return fig


__all__ = [
    "plot_dimensions",
    "plot_error_vs",
    "plot_normalised_derivative",
    "plot_pca",
    "plot_similarity",
]


def plot_layer_panels(
    x: Any,
    emb: Any,
    g: Any,
    *,
    x_min: float | None = None,
    x_max: float | None = None,
    title: str | None = None,
    n: int = 10,
    figsize: tuple[float, float] = (11.0, 3.0),
) -> Figure:
    """Fig. 1, 2 and 3 of one layer side by side: its first dimensions, its PCA path and ĝ.

    Args:
      x: ``[points]`` grid.
      emb: ``[points, dim]`` the layer's embedding h(x) (one layer of ``posenc.interpret.sample``).
      g: ``[points, dim]`` its derivative dh/dx (``sample(..., order=1)``).
      x_min, x_max: the range x̂ is normalised by (default: the grid's extremes).
      title: figure title.
      n: dimensions drawn in the first panel.
      figsize: inches; the default fits the book's text column at 72 dpi.

    Returns:
      A ``Figure`` not registered with pyplot (nothing leaks into a notebook).
    """
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, 3)
    plot_dimensions(x, emb, n=n, x_min=x_min, x_max=x_max, ax=axes[0])
    plot_pca(emb, x, ax=axes[1])
    plot_normalised_derivative(x, {"ĝ": normalised_derivative(g)[0]}, x_min=x_min, x_max=x_max, ax=axes[2])
    if title:
        fig.suptitle(title)
    return fig


def plot_similarity_panels(
    matrices: Mapping[str, Any],
    task_names: Sequence[str],
    *,
    fmt: str = ".3f",
) -> Figure:
    """Fig. 4 for several similarity matrices side by side, on one colour scale.

    The scale runs from the smallest to the largest value over all panels (not 0 to 1), so that
    differences between pairs show even when every similarity is far below 1; each cell's label
    switches to white on the dark part of that scale.

    Args:
      matrices: panel title -> ``[tasks, tasks]`` similarity matrix.
      task_names: the row/column labels.
      fmt: number format of the cell labels.
    """
    if not matrices:
        raise ValueError("matrices is empty")
    k = len(task_names)
    mats = {title: np.asarray(m, dtype=np.float64) for title, m in matrices.items()}
    lo = min(float(m.min()) for m in mats.values())
    hi = max(float(m.max()) for m in mats.values())
    fig = Figure(figsize=(len(mats) * (2.2 + 0.6 * k), 1.6 + 0.5 * k), layout="constrained")
    axes = fig.subplots(1, len(mats), squeeze=False)[0]
    for ax, (title, mat) in zip(axes, mats.items()):
        plot_similarity(mat, task_names, ax=ax, fmt=fmt, title=title)
        if hi > lo:
            ax.images[0].set_clim(lo, hi)
            for text, value in zip(ax.texts, mat.ravel()):
                text.set_color("white" if value < lo + 0.6 * (hi - lo) else "black")
    return fig
