"""posenc.runs: the committed run folders and what the chapters read from them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from posenc.interpret import Tables
from posenc.runs import (config_summary, flagged_runs, is_flagged, reached_movement, read_json, read_test_metric,
                         mean_spread, qm9_cell, qm9_fmt, run_dir, spread_cell)


def test_run_dir_follows_the_grid_layout(tmp_path):
    assert run_dir(tmp_path, "md17:ethanol", "egnn", "posenc") == tmp_path / "runs/md17-ethanol/egnn/posenc/seed1"
    assert run_dir(tmp_path, "qm9-U0", "egnn", "smooth", 3).name == "seed3"
    with pytest.raises(ValueError, match="dataset"):
        run_dir(tmp_path, "md17/ethanol", "egnn", "raw")


def test_read_json_and_test_metric(tmp_path):
    run = run_dir(tmp_path, "md17:ethanol", "egnn", "raw")
    assert read_json(run) is None and math.isnan(read_test_metric(run))
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"test": {"force_mae": 12.5}}))
    assert read_json(run) == {"test": {"force_mae": 12.5}}
    assert read_test_metric(run) == 12.5
    with pytest.raises(KeyError):
        read_test_metric(run, "energy_mae")


def test_flagged_runs_finds_failed_runs_by_name_or_pattern(tmp_path):
    for dataset, arm, seed, result in [("md17:ethanol", "posenc", 1, {"flags": ["spike at epoch 9"]}),
                                       ("md17:ethanol", "posenc", 2, {"flags": [], "status": "ok"}),
                                       ("md17:ethanol", "frozen", 1, {"flags": [], "status": "flagged"}),
                                       ("md17:aspirin", "posenc", 1, {"flags": ["stuck at epoch 12"]}),
                                       ("qm9:U0", "posenc", 1, {"flags": ["non-finite loss"]})]:
        run = run_dir(tmp_path, dataset, "egnn", arm, seed)
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps(result))
    assert not is_flagged({"flags": [], "status": "ok"}) and is_flagged({"status": "flagged"})
    assert flagged_runs(tmp_path, "md17:ethanol", "egnn", "posenc") == [
        run_dir(tmp_path, "md17:ethanol", "egnn", "posenc", 1)]
    assert [p.parts[-4] for p in flagged_runs(tmp_path, "md17:*", arm="posenc")] == ["md17-aspirin", "md17-ethanol"]
    assert len(flagged_runs(tmp_path)) == 4
    assert flagged_runs(tmp_path / "elsewhere") == []


def test_config_summary_describes_model_and_tables():
    tables = [Tables(np.zeros((64, 32)), np.zeros((64, 32)), 0.0, 5.0)] * 4
    result = {"config": {"backbone": "egnn", "n_layers": 4, "hidden": 64, "lam": 0.1, "epochs": 30,
                         "qm9_subset": 5000}}
    row = config_summary(result, tables)
    assert row["backbone"] == "egnn 4x64" and row["tables (layers x bins x dim)"] == "4 x 64 x 32"
    assert row["range (Å)"] == "0 to 5" and row["init"] == "sinusoidal (default)" and row["λ"] == 0.1
    assert config_summary(None, tables)["backbone"] == "? ?x?"
    with pytest.raises(ValueError, match="empty"):
        config_summary(result, [])


def test_reached_movement_averages_the_layers():
    info = {"tables": [{"values_rel_change_reached": 0.1, "values_rel_change_unreached": 0.3, "bins_reached": 40},
                       {"values_rel_change_reached": 0.3, "values_rel_change_unreached": 0.5, "bins_reached": 43}]}
    moved = reached_movement(info)
    assert moved["values moved, reached rows"] == pytest.approx(0.2)
    assert moved["values moved, unreached rows"] == pytest.approx(0.4)
    assert moved["rows reached"] == 42  # 41.5 rounds to even
    assert reached_movement(None) == {} and reached_movement({"tables": [{"bins_reached": 3}]}) == {}


def test_spread_cell_gives_a_spread_only_over_several_runs():
    assert spread_cell(11.2634, 0.2871, 3) == "11.3 ± 0.3 (3)"
    assert spread_cell(11.2634, 0.2871, 1) == "11.3 (1)"  # one run: no spread, whatever std says
    assert spread_cell(0.15321, 0.004127, 2, ".3f") == "0.153 ± 0.004 (2)"
    with pytest.raises(ValueError, match="at least one run"):
        spread_cell(1.0, 0.0, 0)


def test_qm9_cell_keeps_three_figures_across_units():
    assert qm9_cell(0.15321, 0.004127, 2) == "0.153 ± 0.004 (2)"  # μ in D
    assert qm9_cell(85.712, 4.3381, 2) == "85.7 ± 4.3 (2)"  # U0 in meV
    assert qm9_cell(55.018, 1.41, 2) == "55.0 ± 1.4 (2)"  # a trailing zero is a figure too
    assert qm9_cell(141.26, 0.0, 1) == "141 (1)"
    assert qm9_cell(0.0, 0.0, 1) == "0.00 (1)"


def test_qm9_cell_shows_a_small_spread_to_its_first_figure():
    assert qm9_cell(0.15357, 0.00042, 2) == "0.1536 ± 0.0004 (2)"
    assert qm9_cell(141.26, 0.31, 2) == "141.3 ± 0.3 (2)"
    assert qm9_cell(141.26, 0.0, 2) == "141 ± 0 (2)"  # identical seeds: nothing to show


def test_qm9_fmt_is_the_cells_format_for_prose():
    assert f"{55.018:{qm9_fmt(55.018, 1.41, 3)}}" == "55.0"  # not "55", as ".3g" gives
    assert qm9_fmt(0.15357, 0.00042, 2) == ".4f"
    assert qm9_fmt(0.15357, 0.00042, 1) == ".3f"  # one seed: no spread to show


def test_mean_spread_is_the_cell_without_its_count():
    assert mean_spread(54.81, 1.12, 3, ".1f") == "54.8 ± 1.1"
    assert mean_spread(141.26, 0.31, 1, ".1f") == "141.3"  # one run: no spread
