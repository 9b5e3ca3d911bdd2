"""Reading committed training runs: ``<results>/runs/<dataset>/<backbone>/<arm>/seed<k>/``.

``scripts/run_grid.py`` writes one folder per run (the dataset's ``:`` becomes ``-``, as in
``md17-ethanol`` or ``qm9-U0``) holding ``result.json`` (config, test metrics, units),
``run_info.json`` (CPU time, how far the tables moved), ``metrics.csv`` (one row per epoch) and,
for table encodings, ``encoding_tables.npz``. The chapters read the committed runs with these.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from posenc.interpret import Tables


def run_dir(results: str | os.PathLike, dataset: str, backbone: str, arm: str, seed: int = 1) -> Path:
    """The folder of one run.

    Args:
      results: the results folder (the one holding ``runs/``).
      dataset: ``"md17:ethanol"``, ``"qm9:U0"``, ... (or already ``"md17-ethanol"``).
      backbone, arm: e.g. ``"egnn"``, ``"smooth"``.
      seed: the seed, or the rMD17 split for MD17 runs.
    """
    if not dataset or "/" in dataset:
        raise ValueError(f"dataset must be a name like 'md17:ethanol', got {dataset!r}")
    return Path(results) / "runs" / dataset.replace(":", "-") / backbone / arm / f"seed{seed}"


def read_json(run: str | os.PathLike, name: str = "result.json") -> dict[str, Any] | None:
    """``run/name`` parsed, or None when the run has no such file (not run, or not committed)."""
    path = Path(run) / name
    return json.loads(path.read_text()) if path.is_file() else None


def is_flagged(result: Mapping[str, Any]) -> bool:
    """Whether a ``result.json`` payload is of a flagged (failed) run: stuck, a loss spike, or a
    non-finite loss (:mod:`posenc.run_health`). A flagged run is no result, whatever its errors."""
    return result.get("status") == "flagged" or bool(result.get("flags"))


def flagged_runs(results: str | os.PathLike, dataset: str = "*", backbone: str = "*",
                 arm: str = "*") -> list[Path]:
    """The folders of the flagged runs among ``results/runs/<dataset>/<backbone>/<arm>/seed*``.

    Args:
      results: the results folder (the one holding ``runs/``).
      dataset, backbone, arm: names as in :func:`run_dir`, or glob patterns (``"md17:*"``).

    Returns:
      The run folders (``…/<arm>/seed<k>``), sorted.
    """
    pattern = f"{dataset.replace(':', '-')}/{backbone}/{arm}/seed*/result.json"
    return [path.parent for path in sorted((Path(results) / "runs").glob(pattern))
            if is_flagged(json.loads(path.read_text()))]


def read_test_metric(run: str | os.PathLike, metric: str = "force_mae") -> float:
    """A test metric of a run's ``result.json``; NaN when the run is missing.

    Raises:
      KeyError: the run exists but its test results have no ``metric``.
    """
    result = read_json(run)
    return math.nan if result is None else float(result["test"][metric])


def spread_cell(mean: float, std: float, n: int, fmt: str = ".1f") -> str:
    """A results-table cell over ``n`` runs (splits or seeds): ``"mean ± std (n)"``.

    One run has no spread, so its cell is ``"mean (1)"``.

    Args:
      mean, std: of the runs' errors (std over runs, ignored when ``n`` is 1).
      n: how many runs the cell averages.
      fmt: format spec of the mean and the spread (one decimal place for both by default).

    Raises:
      ValueError: ``n`` is below 1 (a cell of no run has no mean).
    """
    if n < 1:
        raise ValueError(f"a cell averages at least one run, got n={n}")
    return f"{mean_spread(mean, std, n, fmt)} ({n})"


def mean_spread(mean: float, std: float, n: int, fmt: str = ".1f") -> str:
    """``"mean ± std"`` over ``n`` runs, for prose that gives the count in words; ``"mean"`` alone
    for one run, which has no spread. :func:`spread_cell` is this with the count appended."""
    return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def qm9_fmt(mean: float, std: float, n: int) -> str:
    """The format spec of a QM9 mean and its spread over ``n`` seeds: the mean to three significant
    figures and the spread to the same decimal place (``".1f"`` for 55.0 ± 1.4, ``".3f"`` for
    0.153 ± 0.004).

    QM9's units span 0.1 D (μ) to 100 meV (U0, HOMO), so a fixed number of decimals would not fit
    both, and ``".3g"`` drops a trailing zero (55.0 prints as "55"). A spread that would round to
    zero gets decimals until its first significant figure shows, and the mean gets them too
    (``".4f"`` for 0.1536 ± 0.0004): "± 0.000" would hide how close the seeds are.
    """
    decimals = max(0, 2 - math.floor(math.log10(abs(mean)))) if math.isfinite(mean) and mean != 0 else 2
    if n > 1 and math.isfinite(std) and std > 0:
        decimals = max(decimals, -math.floor(math.log10(std)))
    return f".{decimals}f"


def qm9_cell(mean: float, std: float, n: int) -> str:
    """A QM9 results cell over ``n`` seeds: :func:`spread_cell` formatted by :func:`qm9_fmt`
    (``"55.0 ± 1.4 (2)"``, ``"0.1536 ± 0.0004 (2)"``)."""
    return spread_cell(mean, std, n, qm9_fmt(mean, std, n))


def config_summary(result: Mapping[str, Any] | None, tables: Sequence[Tables]) -> dict[str, Any]:
    """One row describing a run's model and its learned tables (for a table of runs).

    Args:
      result: the run's ``result.json`` (None: the config entries show ``?``/None).
      tables: the run's tables, one per layer (``posenc.interpret.load_tables``).
    """
    if not tables:
        raise ValueError("tables is empty: a table-encoding run has at least one layer")
    cfg = (result or {}).get("config", {})
    n_bin, dim = tables[0].values.shape
    return {
        "backbone": f"{cfg.get('backbone', '?')} {cfg.get('n_layers', '?')}x{cfg.get('hidden', '?')}",
        "tables (layers x bins x dim)": f"{len(tables)} x {n_bin} x {dim}",
        "range (Å)": f"{tables[0].x_min:g} to {tables[0].x_max:g}",
        "init": cfg.get("init") or "sinusoidal (default)",
        "λ": cfg.get("lam"),
        "epochs": cfg.get("epochs"),
        "molecules loaded": cfg.get("qm9_subset"),
    }


def reached_movement(info: Mapping[str, Any] | None) -> dict[str, float]:
    """How far a run's value tables moved where the training data reach and where they do not.

    Args:
      info: the run's ``run_info.json``; its ``tables`` list holds one entry per layer.

    Returns:
      ``{"values moved, reached rows", "values moved, unreached rows", "rows reached"}``, means
      over the layers; empty when the run recorded no such split (older runs).
    """
    layers = (info or {}).get("tables") or []
    keys = ("values_rel_change_reached", "values_rel_change_unreached", "bins_reached")
    if not layers or not all(all(k in layer for k in keys) for layer in layers):
        return {}
    mean = {k: float(sum(layer[k] for layer in layers) / len(layers)) for k in keys}
    return {"values moved, reached rows": mean["values_rel_change_reached"],
            "values moved, unreached rows": mean["values_rel_change_unreached"],
            "rows reached": round(mean["bins_reached"])}
