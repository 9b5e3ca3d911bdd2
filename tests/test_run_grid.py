"""Tests of scripts/run_grid.py: grid expansion, aggregation, table movement, a tiny real grid."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from posenc.init import initial_tables
from posenc.interpret import smoothness_loss

from script_loader import load_script, tiny_grid_budget

grid = load_script("run_grid")
TINY = tiny_grid_budget()


def test_expand_grid_reduced():
    specs = grid.expand_grid(md17_molecules=["ethanol", "aspirin"], qm9_targets=["U0"], seeds=[1, 2])
    md17 = [s for s in specs if s.dataset.startswith("md17")]
    qm9 = [s for s in specs if s.dataset.startswith("qm9")]
    assert len(md17) == 2 * 3 * 2 and len(qm9) == 4 * 2
    assert [s.seed for s in specs] == sorted(s.seed for s in specs)  # seed-major
    assert {s.arm for s in qm9} == {"raw", "mlp", "posenc", "smooth"}
    for s in md17:
        assert s.config["md17_split"] == s.seed and s.config["md17_labels"] == "md17"
        arm = grid.ARMS[s.arm]
        assert (s.config["encoding"], s.config["lam"]) == (arm.encoding, arm.lam)
        assert s.config["lr"] == grid.TUNED_LR[s.arm]
    budget = grid.BUDGETS["reduced"]
    epochs = {s.dataset: s.config["epochs"] for s in specs}
    assert epochs["md17:ethanol"] == budget.md17_epochs_9
    assert epochs["md17:aspirin"] == max(budget.min_epochs,
                                         round(budget.md17_epochs_9 * (9 / 21) ** budget.md17_cost_power))
    assert epochs["qm9:U0"] == budget.qm9_epochs
    assert str(md17[0].rel_dir) == "runs/md17-ethanol/egnn/raw/seed1"
    # every arm of a data set has the same config apart from the encoding, lambda and tuned rate
    same = [{k: v for k, v in s.config.items() if k not in ("encoding", "lam", "lr")} for s in md17 if s.seed == 1
            and s.dataset == "md17:ethanol"]
    assert all(c == same[0] for c in same)
    assert all(s.config["lr"] == grid.QM9_LR for s in qm9)  # one rate for every QM9 arm


def test_ablation_arms_change_one_knob_of_posenc():
    specs = grid.expand_grid(md17_molecules=["ethanol"], md17_arms=("posenc", *grid.ABLATION_ARMS), seeds=[1])
    ref = specs[0].config
    assert specs[0].arm == "posenc" and ref["lr"] == grid.TUNED_LR["posenc"]
    for s in specs[1:]:
        changed = {k for k in set(ref) | set(s.config) if ref.get(k) != s.config.get(k)}
        assert changed, s.arm
        allowed = {"encoding", "lam", "init", "freeze_tables", "n_bin", "dim", "x_min", "x_max", "table_lr_scale"}
        if s.arm == "posenc-frozen-rate0.003":  # the frozen control at the lr study's other rate
            allowed.add("lr")
        assert changed <= allowed, (s.arm, changed)
        assert len(changed - {"lam"}) <= 2, (s.arm, changed)  # init + freezing is the widest change
    frozen = {s.arm for s in specs if s.config.get("freeze_tables")}
    assert frozen == {"posenc-frozen", "posenc-normal-frozen", "posenc-frozen-rate0.003"}


def test_lr_study_covers_every_candidate_for_each_main_md17_arm():
    specs = grid.expand_grid(md17_molecules=["ethanol"], md17_arms=grid.LR_STUDY_ARMS, seeds=[1])
    got = {(s.arm.split("-lr")[0], s.config["lr"]) for s in specs}
    assert got == {(arm, lr) for arm in grid.MD17_ARMS for lr in grid.LR_CANDIDATES}


def test_tuned_rates_are_the_committed_lr_study_winners():
    """TUNED_LR must be what the committed lr study selects (lowest validation force MAE)."""
    runs = Path(__file__).resolve().parents[1] / "results" / "runs" / "md17-ethanol" / "egnn"
    if not any(runs.glob("*-lr*/seed1/result.json")):
        pytest.fail(f"the lr study's results are missing under {runs}")
    assert grid.select_rates(runs.parents[2]) == {arm: grid.TUNED_LR[arm] for arm in grid.MD17_ARMS}


def test_expand_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="arm"):
        grid.expand_grid(md17_molecules=["ethanol"], md17_arms=["fancy"])
    with pytest.raises(ValueError, match="backbone"):
        grid.expand_grid(md17_molecules=["ethanol"], backbones=["schnet"])
    with pytest.raises(ValueError, match="splits 1..5"):
        grid.expand_grid(md17_molecules=["ethanol"], seeds=[6])


def fake_run(root: Path, dataset: str, arm: str, seed: int, test: dict, units: list, finished: bool = True,
             tables: list | None = None, flags: list | None = None) -> None:
    spec = grid.ARMS[arm]
    path = root / "runs" / dataset.replace(":", "-") / "egnn" / arm / f"seed{seed}"
    path.mkdir(parents=True)
    config = {"dataset": dataset, "encoding": spec.encoding, "lam": spec.lam, "seed": seed, "epochs": 5, **spec.config}
    (path / "result.json").write_text(json.dumps({"finished": finished, "test": test, "units": units, "config": config,
                                                  "flags": flags or [], "status": "flagged" if flags else "ok"}))
    (path / "run_info.json").write_text(json.dumps({"cpu_seconds": 10.0 * seed, "tables": tables}))


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_aggregate_mean_and_sample_std(tmp_path):
    forces = {1: 10.0, 2: 12.0, 3: 17.0}
    for seed, f in forces.items():
        fake_run(tmp_path, "md17:ethanol", "posenc", seed, {"force_mae": f, "energy_mae": f / 2}, ["meV"],
                 tables=[{"values_rel_change": 0.1 * seed}, {"values_rel_change": 0.3 * seed}])
    fake_run(tmp_path, "md17:ethanol", "raw", 1, {"force_mae": 30.0, "energy_mae": 9.0}, ["meV"])
    fake_run(tmp_path, "md17:ethanol", "raw", 2, {"force_mae": 99.0, "energy_mae": 99.0}, ["meV"], finished=False)
    fake_run(tmp_path, "md17:ethanol", "raw", 3, {"force_mae": 849.0, "energy_mae": 9.0}, ["meV"],
             flags=["stuck at epoch 5: training data loss 0.99 >= 0.9 x zero-prediction loss 0.99"])
    fake_run(tmp_path, "qm9:homo", "mlp", 1, {"mae": 40.0}, ["meV"])
    fake_run(tmp_path, "qm9:homo", "mlp", 2, {"mae": 44.0}, ["meV"])
    invocation = {"date": "2026-01-01", "budget": "tiny", "jobs": 1, "command": "python scripts/run_grid.py --x",
                  "environment": {"torch": "t"}}
    grid.aggregate(tmp_path, invocation)
    md17 = {r["arm"]: r for r in read_csv(tmp_path / "md17_summary.csv")}
    values = np.array(list(forces.values()))
    assert float(md17["posenc"]["force_mae_mean"]) == pytest.approx(values.mean(), rel=1e-5)
    assert float(md17["posenc"]["force_mae_std"]) == pytest.approx(values.std(ddof=1), rel=1e-5)
    assert float(md17["posenc"]["energy_mae_mean"]) == pytest.approx(values.mean() / 2, rel=1e-5)
    assert float(md17["posenc"]["table_rel_change"]) == pytest.approx(np.mean([0.2, 0.4, 0.6]), rel=1e-5)
    assert md17["posenc"]["seeds"] == "1 2 3" and md17["posenc"]["n_seeds"] == "3"
    # the unfinished and the flagged raw runs are left out; one seed has no std
    assert md17["raw"]["n_seeds"] == "1" and float(md17["raw"]["force_mae_mean"]) == 30.0
    assert md17["raw"]["force_mae_std"] == "nan"
    assert list(md17) == ["raw", "posenc"]  # the paper's row order
    (qm9,) = read_csv(tmp_path / "qm9_summary.csv")
    assert float(qm9["mae_mean"]) == 42.0 and float(qm9["mae_std"]) == pytest.approx(np.std([40, 44], ddof=1), rel=1e-5)
    readme = (tmp_path / "README.md").read_text()
    assert "python scripts/run_grid.py --x" in readme and "| ethanol | egnn | posenc |" in readme
    assert "## Failed (flagged) runs" in readme and "`runs/md17-ethanol/egnn/raw/seed3`: stuck at epoch 5" in readme
    # a second invocation is appended to the log, not replacing it
    grid.aggregate(tmp_path, {**invocation, "command": "second"})
    assert len(json.loads((tmp_path / "grid_invocations.json").read_text())) == 2


def test_table_movement(tmp_path):
    v0, s0 = initial_tables("sinusoidal", 16, 4, 0.0, 5.0)
    path = tmp_path / "encoding_tables.npz"
    np.savez(path, x_min=0.0, x_max=5.0, values_layer0=v0, slopes_layer0=s0, values_layer1=1.1 * v0,
             slopes_layer1=s0 + 0.5 * np.linalg.norm(s0) / np.sqrt(s0.size))
    layers = grid.table_movement(path)
    assert layers[0]["values_rel_change"] == pytest.approx(0.0, abs=1e-12)
    assert layers[1]["values_rel_change"] == pytest.approx(0.1)
    assert layers[1]["slopes_rel_change"] == pytest.approx(0.5)
    # L_smooth is scale-invariant, and a constant table has none
    assert layers[1]["smooth_final"] == pytest.approx(layers[1]["smooth_init"])
    # the library's L_smooth (both sums over the first n - 1 rows), not a second definition
    assert layers[0]["smooth_init"] == pytest.approx(smoothness_loss(v0))
    assert smoothness_loss(v0) != pytest.approx(np.linalg.norm(np.diff(v0, axis=0), axis=1).sum()
                                                / np.linalg.norm(v0, axis=1).sum())


def test_table_movement_from_the_saved_initial_tables(tmp_path):
    rng = np.random.default_rng(0)
    v0, s0 = rng.normal(size=(8, 3)), np.zeros((8, 3))  # a random start cannot be rebuilt from its name
    path = tmp_path / "encoding_tables.npz"
    np.savez(path, x_min=0.0, x_max=5.0, values_layer0=1.2 * v0, slopes_layer0=s0 + 1.0,
             init_values_layer0=v0, init_slopes_layer0=s0)
    (layer,) = grid.table_movement(path, init="normal")
    assert layer["values_rel_change"] == pytest.approx(0.2)
    assert np.isnan(layer["slopes_rel_change"])  # relative to all-zero slopes: undefined, not inf


def test_select_rates_by_validation_error(tmp_path):
    for arm, val in (("raw", {3e-4: 5.0, 1e-3: 4.0, 3e-3: 6.0, 1e-2: 4.5, 3e-2: 50.0}),
                     ("posenc", {3e-4: 3.0, 1e-3: 4.0, 3e-3: 9.0, 1e-2: 9.5, 3e-2: 50.0}),
                     ("smooth", {3e-4: 7.0, 1e-3: 8.0, 3e-3: 2.0, 1e-2: 2.5, 3e-2: 50.0})):
        assert set(val) == set(grid.LR_CANDIDATES)
        for lr, v in val.items():
            path = tmp_path / "runs" / "md17-ethanol" / "egnn" / f"{arm}-lr{lr:g}" / "seed1"
            path.mkdir(parents=True)
            # the test error disagrees on purpose: the choice must not look at it
            (path / "result.json").write_text(json.dumps({"finished": True, "best_val": v, "test": {"force_mae": -v},
                                                          "config": {"lr": lr}}))
    assert grid.select_rates(tmp_path) == {"raw": 1e-3, "posenc": 3e-4, "smooth": 3e-3}
    flagged = tmp_path / "runs" / "md17-ethanol" / "egnn" / "posenc-lr0.0003" / "seed1" / "result.json"
    flagged.write_text(json.dumps({**json.loads(flagged.read_text()), "status": "flagged", "flags": ["spike at ..."]}))
    assert grid.select_rates(tmp_path)["posenc"] == 1e-3  # a flagged run is never chosen
    (tmp_path / "runs" / "md17-ethanol" / "egnn" / "raw-lr0.001" / "seed1" / "result.json").unlink()
    with pytest.raises(RuntimeError, match="raw"):
        grid.select_rates(tmp_path)


def test_reached_bins_and_split_movement(tmp_path):
    # centres 0, 1, 2, 3, 4: a distance in [c_i, c_{i+1}) reads rows i and i + 1
    np.testing.assert_array_equal(grid.reached_bins(np.array([1.5]), 5, 0.0, 4.0), [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(grid.reached_bins(np.array([0.2, 3.99]), 5, 0.0, 4.0), [1, 1, 0, 1, 1])
    v0, s0 = initial_tables("sinusoidal", 5, 3, 0.0, 4.0)
    moved = v0.copy()
    moved[3:] *= 1.5  # only rows the distances below never read
    path = tmp_path / "encoding_tables.npz"
    np.savez(path, x_min=0.0, x_max=4.0, values_layer0=moved, slopes_layer0=s0)
    (layer,) = grid.table_movement(path, distances=np.array([0.5, 1.5]))
    assert layer["bins_reached"] == 3
    assert layer["values_rel_change_reached"] == 0.0
    assert layer["values_rel_change_unreached"] == pytest.approx(0.5)
    assert 0 < layer["values_rel_change"] < 0.5


def test_pair_distances():
    from posenc.data.molecules import Molecules

    pos = np.array([[0, 0, 0], [3, 4, 0], [0, 0, 0], [1, 0, 0], [0, 2, 0]], dtype=float)
    mols = Molecules(z=np.ones(5, dtype=int), pos=pos, n_atoms=np.array([2, 3]), targets=np.zeros((2, 1)),
                     target_names=("e",), target_units=("meV",))
    np.testing.assert_allclose(np.sort(grid.pair_distances(mols)), np.sort([5.0, 1.0, 2.0, np.sqrt(5.0)]))


def test_tiny_grid_end_to_end(tmp_path):
    results, scratch = tmp_path / "results", tmp_path / "scratch"
    specs = grid.expand_grid(md17_molecules=["synthetic"], md17_arms=("raw", "smooth"), seeds=[1], budget=TINY)
    infos = grid.run_grid(specs, results, scratch, jobs=1, log=lambda line: None)
    assert len(infos) == 2 and all(i["finished"] for i in infos)
    for spec in specs:
        kept = sorted(p.name for p in (results / spec.rel_dir).iterdir())
        tables = ["encoding_tables.npz"] if spec.arm == "smooth" else []
        assert kept == sorted(["metrics.csv", "result.json", "run_info.json", *tables])
        assert not list((scratch / spec.rel_dir).glob("*.pt"))  # checkpoints deleted once finished
        saved = json.loads((results / spec.rel_dir / "result.json").read_text())
        assert saved["out_dir"] == saved["config"]["out_dir"] == spec.rel_dir.as_posix()  # no local path
    smooth = json.loads((results / specs[1].rel_dir / "run_info.json").read_text())
    assert len(smooth["tables"]) == 1 and 0 < smooth["tables"][0]["values_rel_change"] < 1
    assert 0 < smooth["tables"][0]["bins_reached"] <= 64
    # resumable: a second call runs nothing; another budget is refused unless overwrite
    assert grid.run_grid(specs, results, scratch, jobs=1, log=lambda line: None) == []
    other = grid.expand_grid(md17_molecules=["synthetic"], md17_arms=("raw",), seeds=[1],
                             budget=grid.Budget(**{**TINY.__dict__, "md17_epochs_9": 2}))
    with pytest.raises(RuntimeError, match="overwrite"):
        grid.run_grid(other, results, scratch, jobs=1, log=lambda line: None)
    # the table statistics can be recomputed from the scratch files
    info_path = results / specs[1].rel_dir / "run_info.json"
    info_path.write_text(json.dumps({**smooth, "tables": None}))
    assert grid.refresh_tables(specs, results, scratch, log=lambda line: None) == 1
    assert json.loads(info_path.read_text())["tables"] == smooth["tables"]
    md17, _ = grid.aggregate(results)
    assert [r["arm"] for r in md17] == ["raw", "smooth"]
    assert md17[1]["force_mae_mean"] == pytest.approx(infos[1]["test"]["force_mae"])


def test_a_flagged_run_is_failed_not_rerun(tmp_path):
    specs = grid.expand_grid(md17_molecules=["synthetic"], md17_arms=("raw",), seeds=[1], budget=TINY)
    (spec,) = specs
    path = tmp_path / spec.rel_dir
    path.mkdir(parents=True)
    flags = ["stuck at epoch 3: training data loss 1 >= 0.9 x zero-prediction loss 1 for 3 epochs after the warm-up"]
    (path / "result.json").write_text(json.dumps({"finished": True, "test": {"force_mae": 1.0}, "units": ["meV"],
                                                  "config": spec.config, "flags": flags, "status": "flagged"}))
    assert grid.run_state(spec, tmp_path) == "failed"
    lines = []
    assert grid.run_grid(specs, tmp_path, tmp_path / "scratch", jobs=1, log=lines.append) == []
    assert any(line.startswith("FAILED") and str(spec.rel_dir) in line for line in lines)
    assert grid.collect(tmp_path) == [] and grid.flagged_runs(tmp_path) == [(str(spec.rel_dir), flags)]


def test_engine_study_and_report(tmp_path):
    """The engine study runs at the default recipe; engine.md tabulates it, and the proof runs
    with their targets and learning curves."""
    specs = grid.expand_grid(md17_molecules=["synthetic"], md17_arms=("engine-raw", "engine-hermite"), seeds=[1],
                             budget=TINY)
    assert all(s.config["epochs"] == grid.ENGINE_EPOCHS and "lr" not in s.config for s in specs)
    specs = [grid.RunSpec(s.dataset, s.backbone, s.arm, s.seed, {**s.config, "epochs": 3}) for s in specs]
    grid.run_grid(specs, tmp_path, tmp_path / "scratch", jobs=1, log=lambda line: None)
    runs = tmp_path / "runs" / "synthetic-md17" / "egnn"
    (runs / "proof-raw").mkdir()
    for name in ("result.json", "metrics.csv", "run_info.json"):
        (runs / "proof-raw" / "seed1").mkdir(exist_ok=True)
        (runs / "proof-raw" / "seed1" / name).write_bytes((runs / "engine-raw" / "seed1" / name).read_bytes())
    assert grid.write_engine_report(tmp_path)
    report = (tmp_path / "engine.md").read_text()
    rows = [line.split("|")[1:4] for line in report.splitlines() if line.startswith("| synthetic-md17 |")]
    assert [arm.strip() for _, arm, _ in rows] == ["`raw`", "`hermite`"]  # in the study's order
    for (_, _arm, flags), name in zip(rows, ("engine-raw", "engine-hermite")):
        result = json.loads((runs / name / "seed1" / "result.json").read_text())
        assert flags.strip() == ("; ".join(result["flags"]) or "none")
    assert "| synthetic-md17 `raw` |" in report and "<= 12 |" in report
    assert (tmp_path / "engine_proof_curves.png").stat().st_size > 10_000
    assert not grid.write_engine_report(tmp_path / "empty")


def test_run_state_compares_what_a_run_is_not_where_it_ran(tmp_path):
    (spec,) = grid.expand_grid(md17_molecules=["synthetic"], md17_arms=("raw",), seeds=[1], budget=TINY)
    path = tmp_path / spec.rel_dir
    path.mkdir(parents=True)
    saved = {"finished": True, "flags": [], "config": {**spec.config, "device": "cuda"}}
    (path / "result.json").write_text(json.dumps(saved))
    assert grid.run_state(spec, tmp_path) == "done"  # trained on a GPU: the same run
    saved["config"]["lr"] = 2 * spec.config["lr"]
    (path / "result.json").write_text(json.dumps(saved))
    assert grid.run_state(spec, tmp_path) == "conflict"
