"""Tests of scripts/campaign.py: the staged plan, the choice by validation error, the verdicts, the report."""

import json
from pathlib import Path

import numpy as np
import pytest

from script_loader import load_script

campaign = load_script("campaign")


def _finish(results: Path, spec, best_val: float, force: float = 10.0, flags: tuple[str, ...] = (),
            epochs: int = 3) -> None:
    """Writes the files of a finished (or flagged) run as run_grid keeps them."""
    out = results / spec.rel_dir
    out.mkdir(parents=True, exist_ok=True)
    history = [{"epoch": k + 1, "val_force_mae": best_val * (epochs - k)} for k in range(epochs)]
    result = {"config": spec.config, "finished": True, "best_val": best_val, "history": history,
              "test": {"force_mae": force, "energy_mae": force / 3}, "flags": list(flags),
              "status": "flagged" if flags else "ok"}
    (out / "result.json").write_text(json.dumps(result))
    (out / "run_info.json").write_text(json.dumps({"cpu_seconds": 60.0}))


def test_tuning_unlocks_the_later_stages(tmp_path):
    first = campaign.plan(tmp_path, qm9=False)
    assert [s.arm for s in first] == [s.arm for s in campaign.tune_specs()]  # nothing else is configurable
    assert {s.config["epochs"] for s in first} == {campaign.TUNE_EPOCHS}
    assert all(s.config["md17_labels"] == "md17" and s.config["md17_split"] == 1 for s in first)
    vals = {3e-4: 30.0, 1e-3: 20.0, 3e-3: 25.0}
    for spec in first:
        if spec.arm.startswith("tune-posenc"):
            _finish(tmp_path, spec, vals[spec.config["lr"]])
    smooth = [s for s in campaign.plan(tmp_path) if s.arm.startswith("tune-smooth")]
    assert [s.config["lam"] for s in smooth] == list(campaign.LAM_CANDIDATES)
    assert {s.config["lr"] for s in smooth} == {1e-3}  # posenc's choice
    main = [s for s in campaign.plan(tmp_path, qm9=False) if not s.arm.startswith("tune-")]
    assert {s.arm for s in main} == {"posenc"}  # smooth waits for its lambda, the others for their rates
    assert all(s.config["lr"] == 1e-3 and s.config["epochs"] == campaign.EPOCHS for s in main)


def test_flagged_candidates_never_win_and_all_flagged_is_an_error(tmp_path):
    specs = [s for s in campaign.tune_specs() if s.arm.startswith("tune-raw")]
    _finish(tmp_path, specs[0], 5.0, flags=("stuck",))
    _finish(tmp_path, specs[1], 9.0)
    assert "raw" not in campaign.chosen_settings(tmp_path)  # one candidate still unfinished
    _finish(tmp_path, specs[2], 7.0)
    assert campaign.chosen_settings(tmp_path)["raw"]["lr"] == specs[2].config["lr"]
    frozen = [s for s in campaign.tune_specs() if s.arm.startswith("tune-frozen")]
    for spec in frozen:
        _finish(tmp_path, spec, 1.0, flags=("spike",))
    with pytest.raises(RuntimeError, match="flagged"):
        campaign.chosen_settings(tmp_path)


def test_main_plan_is_split_major_and_checks_molecules():
    plan = campaign.main_plan()
    splits = [split for molecule, split, backbone, _ in plan if backbone == "egnn" and molecule != "aspirin"]
    assert splits == sorted(splits)
    assert sum(1 for m, *_ in plan if m == "aspirin") == len(campaign.ASPIRIN_ARMS)
    assert {(m, b) for m, _, b, _ in plan if b == "transformer"} == {("ethanol", "transformer")}
    assert len(campaign.main_plan(["ethanol", "benzene"])) == 3 * 5 + 3 + 4
    with pytest.raises(ValueError, match="unknown MD17 molecule"):
        campaign.main_plan(["ethanol", "caffeine"])


def _main(tmp_path, arm: str, split: int, force: float, flags: tuple[str, ...] = ()) -> None:
    spec = campaign._spec("ethanol", split, "egnn", arm, {"encoding": "raw", "lam": 0.0, "lr": 1e-3,
                                                          "epochs": campaign.EPOCHS})
    _finish(tmp_path, spec, force, force=force, flags=flags)


def test_paired_verdicts(tmp_path):
    for split, (raw, posenc, frozen) in enumerate([(10.0, 8.0, 8.1), (11.0, 9.0, 8.9), (10.5, 8.5, 8.6)], 1):
        _main(tmp_path, "raw", split, raw)
        _main(tmp_path, "posenc", split, posenc)
        _main(tmp_path, "frozen", split, frozen)
    _main(tmp_path, "gaussian", 1, 12.0)
    _main(tmp_path, "gaussian", 2, 99.0, flags=("stuck",))  # never averaged in
    verdicts = {(p["a"], p["b"]): p for p in campaign.paired(campaign.read_runs(tmp_path))}
    assert verdicts[("posenc", "raw")]["verdict"] == "real: posenc lower"
    assert verdicts[("posenc", "raw")]["mean"] == pytest.approx(-2.0)
    assert verdicts[("posenc", "raw")]["rates"] == "0.001/0.001 0.001/0.001 0.001/0.001"
    assert verdicts[("posenc", "frozen")]["verdict"] == "within noise"  # signs differ
    assert verdicts[("gaussian", "raw")]["splits"] == "1"
    assert verdicts[("gaussian", "raw")]["verdict"] == "one split: no verdict"
    rows = {r["arm"]: r for r in campaign.table1(campaign.read_runs(tmp_path))}
    assert rows["raw"]["n"] == 3 and rows["raw"]["force_mae"] == pytest.approx(10.5)
    assert rows["raw"]["force_mae_std"] == pytest.approx(np.std([10, 11, 10.5], ddof=1))
    assert rows["gaussian"]["n"] == 1 and rows["raw"]["paper_force_mae"] == pytest.approx(50.1)


def test_report_names_failures_and_unrun_rows(tmp_path):
    _main(tmp_path, "raw", 1, 10.0)
    _main(tmp_path, "posenc", 1, 9.0, flags=("stuck",))
    (tmp_path / "qm9_composition.csv").write_text(  # computed once from QM9, then read back
        "target,unit,n_train,n_test,test_mae,test_std\nU0,meV,7643,1000,847.3,10278.6\n"
        "homo,meV,7643,1000,385.1,576.9\nmu,D,7643,1000,0.97,1.4\n")
    campaign.write_report(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| ethanol | 10.0 (1) | failed | not run |" in text  # the flagged posenc run is not a result
    assert "- ethanol egnn posenc split 1 (lr 0.001): stuck" in text
    assert "| ethanol | egnn | posenc | 1 | 0.001 | stuck | 3 | 3 | 9.00 | - | - |" in text  # what it scored
    assert "| benzene | not run |" in text
    assert "| U0 | meV | not run | not run | not run | not run | 847.3 | 1.028e+04 | 11 | 10 | 9 | 9 |" in text
    assert (tmp_path / "table1.csv").is_file() and (tmp_path / "learning_curves.png").is_file()
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["main_runs_finished"], status["main_runs_planned"]) == (1, 37)


def test_qm9_runs_share_one_recipe_and_wait_for_lambda(tmp_path):
    specs = campaign.qm9_specs({})
    assert {s.arm for s in specs} == {"raw", "mlp", "posenc"}  # smooth's lambda is chosen on MD17 first
    assert len(specs) == 3 * len(campaign.QM9_TARGETS) * len(campaign.QM9_SEEDS)
    assert {(s.config["lr"], s.config["stop_patience"], s.config["qm9_subset"]) for s in specs} == {(5e-4, 30, 10_000)}
    smooth = [s for s in campaign.qm9_specs({"smooth": {"lr": 1e-3, "lam": 0.1}}) if s.arm == "smooth"]
    assert {s.config["lam"] for s in smooth} == {0.1} and {s.config["lr"] for s in smooth} == {5e-4}
    spec = specs[0]
    _finish(tmp_path, spec, 30.0)
    result = json.loads((tmp_path / spec.rel_dir / "result.json").read_text())
    result.update(test={"mae": 30.0}, units=["meV"])
    (tmp_path / spec.rel_dir / "result.json").write_text(json.dumps(result))
    (row,) = campaign.qm9_table(campaign.qm9_runs(tmp_path))
    assert (row["target"], row["arm"], row["n"], row["mae"], row["paper_mae"]) == ("U0", "raw", 1, 30.0, 11.0)
    assert row["cap_ended"] == 0  # 3 of its 300 epochs: the patience ended it


def test_cap_ended_needs_every_epoch_and_a_best_epoch_inside_the_patience():
    config = {"epochs": 300, "stop_patience": 30}
    ran = [{}] * 300
    assert campaign.cap_ended({"config": config, "history": ran, "best_epoch": 271})  # still improving
    assert not campaign.cap_ended({"config": config, "history": ran, "best_epoch": 270})  # patience ran out too
    assert not campaign.cap_ended({"config": config, "history": ran[:250], "best_epoch": 249})


def test_a_flagged_main_run_falls_back_once_to_the_next_lower_rate(tmp_path):
    settings = {"raw": {"lr": 1e-3, "lam": 0.0}, "smooth": {"lr": 3e-3, "lam": 0.1}}
    first = campaign.main_specs(settings, ["ethanol"], tmp_path)
    smooth = next(s for s in first if s.arm == "smooth")
    _finish(tmp_path, smooth, 9.0, flags=("spike at epoch 345",))
    planned = campaign.main_specs(settings, ["ethanol"], tmp_path)
    k = [s.arm for s in planned].index("smooth")
    fallback = planned[k + 1]  # right after the flagged run, so the plan stays split-major
    assert (fallback.arm, fallback.seed, fallback.config["lr"]) == ("smooth-lr0.001", 1, 1e-3)
    assert {key: v for key, v in fallback.config.items() if key != "lr"} == \
        {key: v for key, v in smooth.config.items() if key != "lr"}  # only the rate changes
    assert len(planned) == len(first) + 1
    _finish(tmp_path, fallback, 8.0, force=8.0)
    (row,) = [r for r in campaign.table1(campaign.read_runs(tmp_path)) if r["arm"] == "smooth"]
    assert (row["force_mae"], row["n"], row["fallback_splits"], row["lr"]) == (8.0, 1, "1", "0.001")
    lowest = campaign._spec("ethanol", 2, "egnn", "raw", {**smooth.config, "lr": min(campaign.LR_CANDIDATES)})
    assert campaign.fallback_spec(lowest) is None  # no rate below the candidates: the run has failed
    assert campaign.fallback_spec(fallback).config["lr"] == 3e-4  # exists, yet main_specs never plans it:
    _finish(tmp_path, fallback, 8.0, flags=("stuck",))
    replanned = campaign.main_specs(settings, ["ethanol"], tmp_path)
    assert len(replanned) == len(first) + 1  # a flagged fallback is not followed by another
    (tmp_path / "qm9_composition.csv").write_text(
        "target,unit,n_train,n_test,test_mae,test_std\nU0,meV,1,1,1,1\nhomo,meV,1,1,1,1\nmu,D,1,1,1,1\n")
    campaign.write_report(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "- ethanol egnn smooth split 1 (lr 0.001): stuck" in text
    assert "- ethanol egnn smooth split 1 (lr 0.003): spike at epoch 345" in text


def test_flagged_main_runs_are_listed_beside_their_stand_ins(tmp_path):
    settings = {"raw": {"lr": 1e-3, "lam": 0.0}, "posenc": {"lr": 3e-3, "lam": 0.0}}
    posenc = next(s for s in campaign.main_specs(settings, ["ethanol"]) if s.arm == "posenc")
    _finish(tmp_path, posenc, 9.0, force=25.0, flags=("spike at epoch 281: mean training loss 2.1 > 10 x 0.01",),
            epochs=4)
    (row,) = campaign.flagged_main(campaign.read_runs(tmp_path))
    assert [row[k] for k in ("molecule", "arm", "split", "lr", "flag", "epochs_run", "best_epoch", "force_mae")] == \
        ["ethanol", "posenc", 1, 3e-3, "spike at epoch 281", 4, 4, 25.0]
    assert np.isnan(row["standin_force_mae"]) and not row["standin_flagged"]  # its stand-in has not run yet
    standin = campaign.fallback_spec(posenc)
    _finish(tmp_path, standin, 8.0, force=11.0)
    (row,) = campaign.flagged_main(campaign.read_runs(tmp_path))
    assert (row["standin_lr"], row["standin_force_mae"]) == (1e-3, 11.0)
    _finish(tmp_path, standin, 8.0, force=11.0, flags=("stuck at epoch 12: ...",))
    (row,) = campaign.flagged_main(campaign.read_runs(tmp_path))  # the failed stand-in is no row of its own
    assert row["standin_flagged"] and row["standin_force_mae"] == 11.0


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        campaign.run(tmp_path, tmp_path / "scratch", ["ethanol"], qm9=False, jobs=0)


def test_the_rate_matched_control_runs_the_higher_rate_arm_at_the_lower_rate(tmp_path):
    settings = {"posenc": {"lr": 3e-3, "lam": 0.0}, "frozen": {"lr": 3e-3, "lam": 0.0}}

    def egnn(split):
        return [s for s in campaign.main_specs(settings, ["ethanol"], tmp_path)
                if s.seed == split and s.backbone == "egnn"]

    # split 1: frozen falls back to 1e-3, posenc finished at 3e-3 -> posenc again at 1e-3
    specs = {s.arm: s for s in egnn(1)}
    _finish(tmp_path, specs["frozen"], 9.0, flags=("spike at epoch 160",))
    assert [s.arm for s in egnn(1)] == ["posenc", "frozen", "frozen-lr0.001"]  # posenc not finished yet
    _finish(tmp_path, specs["posenc"], 11.0, force=11.0)
    assert [s.arm for s in egnn(1)] == ["posenc", "frozen", "frozen-lr0.001"]  # nor frozen's stand-in
    _finish(tmp_path, egnn(1)[2], 9.5, force=9.5)
    planned = egnn(1)
    assert [s.arm for s in planned] == ["posenc", "frozen", "frozen-lr0.001", "posenc-ratematched"]
    assert planned[-1].config == {**specs["posenc"].config, "lr": 1e-3}
    _finish(tmp_path, planned[-1], 10.0, force=10.0)
    # split 2: the other way round -> frozen again at posenc's stand-in rate
    other = {s.arm: s for s in egnn(2)}
    _finish(tmp_path, other["posenc"], 9.0, flags=("stuck",))
    _finish(tmp_path, other["frozen"], 8.0, force=8.0)
    _finish(tmp_path, egnn(2)[1], 12.0, force=12.0)  # posenc-lr0.001
    planned = egnn(2)
    assert [s.arm for s in planned] == ["posenc", "posenc-lr0.001", "frozen", "frozen-ratematched"]
    assert planned[-1].config == {**other["frozen"].config, "lr": 1e-3}
    _finish(tmp_path, planned[-1], 11.0, force=11.0)
    # split 3: both fell back to 1e-3 -> one rate already, no control run
    third = {s.arm: s for s in egnn(3)}
    for arm in ("posenc", "frozen"):
        _finish(tmp_path, third[arm], 9.0, flags=("stuck",))
        _finish(tmp_path, campaign.fallback_spec(third[arm]), 10.0, force=10.0)
    assert [s.arm for s in egnn(3)] == ["posenc", "posenc-lr0.001", "frozen", "frozen-lr0.001"]

    runs = campaign.read_runs(tmp_path)
    assert {r["arm"] for r in campaign.table1(runs)} == {"posenc", "frozen"}  # the controls are no cells
    (control,) = campaign.controls(runs)
    assert (control["splits"], control["rates"], control["differences"]) == ("1 2", "0.001/0.001 0.001/0.001",
                                                                              "+0.50 +1.00")
    (pair,) = [p for p in campaign.paired(runs) if (p["a"], p["b"]) == ("posenc", "frozen")]
    assert pair["rates"] == "0.003/0.001 0.001/0.003 0.001/0.001"


def test_stages_and_device_can_be_chosen(tmp_path):
    settings = {"raw": {"lr": 1e-3, "lam": 0.0}, "posenc": {"lr": 3e-3, "lam": 0.0}}
    for spec in campaign.tune_specs():
        name = spec.arm.split("-")[1]
        _finish(tmp_path, spec, 1.0 if spec.config["lr"] == settings.get(name, {"lr": 3e-3})["lr"] else 2.0)
    for spec in campaign.tune_lam_specs(3e-3):
        _finish(tmp_path, spec, 1.0 if spec.config["lam"] == 0.01 else 2.0)
    tuning = len(campaign.tune_specs()) + len(campaign.LAM_CANDIDATES)
    qm9_only = campaign.plan(tmp_path, md17=False, device="cuda")[tuning:]
    assert [s.rel_dir for s in qm9_only] == [s.rel_dir for s in campaign.qm9_specs(campaign.chosen_settings(tmp_path))]
    assert {s.config["device"] for s in qm9_only} == {"cuda"}
    assert {s.config["batch_size"] for s in qm9_only} == {96}  # amendment 3
    md17_only = campaign.plan(tmp_path, qm9=False)[tuning:]
    assert md17_only and all(s.dataset.startswith("md17:") and s.config["device"] == "cpu" for s in md17_only)
