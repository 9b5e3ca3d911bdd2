"""The training loop: files, exact resumption, corrupt checkpoints, both tasks, both backends."""

import dataclasses
import json
import sys

import numpy as np
import pytest

from molecule_factory import random_molecules
from posenc.encoding_defaults import distance_scale
from posenc.torch.train import load_checkpoint
from posenc.trainer import train
from posenc.training import (QUICK_PROFILE, TrainConfig, cut_data, encoding_overrides, lr_factor, output_stats,
                             patience_ran_out,
                             parse_dataset, resolve)

TINY = dict(n_layers=1, hidden=8, batch_size=4, n_train=12, n_val=4, n_test=4, progress=False,
            encoding_kwargs={"n_bin": 8, "dim": 4})


def md17_like(seed=0):
    """Same-size molecules with energies and forces, like an MD17 molecule's frames."""
    sizes = [("train", 12), ("val", 4), ("test", 4)]
    return {part: random_molecules([5] * n, seed=seed + k) for k, (part, n) in enumerate(sizes)}


def qm9_like(seed=0):
    """Molecules of different sizes with two targets and no forces."""
    sizes = {"train": [3, 4, 5, 6] * 3, "val": [4, 5, 3, 6], "test": [5, 3, 4, 6]}
    return {part: random_molecules(s, seed=seed + k, forces=False, n_targets=2)
            for k, (part, s) in enumerate(sizes.items())}


def losses(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    data = md17_like()
    base = dict(dataset="md17:toy", epochs=4, lam=0.1, **TINY)
    whole = train(TrainConfig(out_dir=str(tmp_path / "whole"), **base), data)
    half = train(TrainConfig(out_dir=str(tmp_path / "split"), stop_after=2, **base), data)
    assert not half.finished and len(half.history) == 2 and half.test == {}
    resumed = train(TrainConfig(out_dir=str(tmp_path / "split"), resume=True, **base), data)
    assert resumed.finished and len(resumed.history) == 4
    assert losses(resumed.history) == losses(whole.history)  # exactly, loss for loss
    assert resumed.test == whole.test
    assert whole.history[-1]["train_loss"] < whole.history[0]["train_loss"] * 1.5  # it trains and stays finite


def test_files_of_a_run(tmp_path):
    out = tmp_path / "run"
    result = train(TrainConfig(dataset="md17:toy", epochs=2, out_dir=str(out), **{**TINY, "n_layers": 2}), md17_like())
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "train_smooth", "val_energy_mae", "val_force_mae", "lr"} <= set(header)
    saved = json.loads((out / "result.json").read_text())
    assert saved["test"] == result.test and set(result.test) == {"energy_mae", "force_mae"}
    assert saved["config"]["encoding"] == "hermite" and saved["units"] == ["meV"]
    tables = np.load(out / "encoding_tables.npz")
    layers = {f"{k}_layer{i}" for k in ("values", "slopes") for i in (0, 1)}
    assert set(tables.files) == layers | {f"init_{k}" for k in layers} | {"x_min", "x_max", "form"}
    assert tables["values_layer0"].shape == (8, 4) and str(tables["form"]) == "hermite"
    assert float(tables["x_min"]) == result.x_range[0] and float(tables["x_max"]) == result.x_range[1]
    state = load_checkpoint(out / "last.pt", resumable=True)
    assert state["epoch"] == 2 and state["config"]["dataset"] == "md17:toy"
    best = load_checkpoint(out / "best.pt")  # the weights of the best validation epoch
    assert set(best) == {"format", "epoch", "model", "x_range", "distance_scale"} and 1 <= best["epoch"] <= 2
    assert best["distance_scale"] == saved["distance_scale"] == distance_scale(md17_like()["train"])
    assert saved["status"] == "ok" and saved["flags"] == [] and all(r["flags"] == "" for r in rows)
    with pytest.raises(ValueError, match="lacks"):
        load_checkpoint(out / "best.pt", resumable=True)
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries


def test_corrupt_or_mismatched_checkpoint_is_refused(tmp_path):
    data, out = md17_like(), tmp_path / "run"
    config = dict(dataset="md17:toy", epochs=2, out_dir=str(out), **TINY)
    train(TrainConfig(stop_after=1, **config), data)
    with pytest.raises(ValueError, match="differs"):
        train(TrainConfig(resume=True, **{**config, "lam": 1.0}), data)
    blob = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        train(TrainConfig(resume=True, **config), data)
    with pytest.raises(FileNotFoundError):
        train(TrainConfig(resume=True, **{**config, "out_dir": str(tmp_path / "none")}), data)


@pytest.mark.parametrize("backbone,schedule,encoding",
                         [("egnn", "plateau", "gaussian"), ("transformer", "cosine", "raw")])
def test_property_task_without_forces(tmp_path, backbone, schedule, encoding):
    kwargs = {**TINY, "encoding_kwargs": {}}
    result = train(TrainConfig(dataset="qm9:toy", backbone=backbone, schedule=schedule, encoding=encoding, epochs=2,
                               loss="l1", out_dir=str(tmp_path), **kwargs), qm9_like())
    assert set(result.test) == {"mae"} and np.isfinite(result.test["mae"])
    assert not (tmp_path / "encoding_tables.npz").exists()  # no table to save


def test_output_stats_reproduce_the_mean_target():
    data = md17_like()["train"]
    stats = output_stats(data, 100)
    per_mol = np.array([stats["atom_ref"][data.z[data.atom_index(np.array([m]))], 0].sum() for m in range(len(data))])
    np.testing.assert_allclose((per_mol + stats["mol_shift"][0]).mean(), data.targets[:, 0].mean(), atol=1e-10)
    np.testing.assert_allclose(stats["scale"], np.sqrt(np.mean(data.forces**2)))


def test_config_checks_and_quick_profile():
    quick = resolve(TrainConfig(quick=True, epochs=7))
    assert quick.epochs == 7 and quick.n_train == QUICK_PROFILE["n_train"]  # explicit settings win
    assert quick.out_dir.startswith("runs")
    assert parse_dataset("qm9:homo") == ("qm9", "homo")
    for bad in ("md17", "cifar:x", "synthetic:foo"):
        with pytest.raises(ValueError, match="dataset"):
            parse_dataset(bad)
    with pytest.raises(ValueError, match="haiku backend"):
        resolve(TrainConfig(backend="haiku", backbone="transformer"))
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"epochs": 1, "epoch": 2})


def test_synthetic_data_trains(tmp_path):
    result = train(TrainConfig(dataset="synthetic:md17", epochs=1, out_dir=str(tmp_path), **TINY))
    assert result.finished and np.isfinite(result.test["force_mae"])


def test_dimenet_import_failure_is_explained(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "posenc.torch.models.dimenet", None)
    with pytest.raises(ImportError, match="dimenet"):
        train(TrainConfig(dataset="md17:toy", backbone="dimenet", epochs=1, out_dir=str(tmp_path), **TINY), md17_like())


def test_haiku_backend_trains_and_resumes(tmp_path):
    data = md17_like()
    base = dict(dataset="md17:toy", backend="haiku", epochs=2, lam=0.1, **TINY)
    whole = train(TrainConfig(out_dir=str(tmp_path / "whole"), **base), data)
    train(TrainConfig(out_dir=str(tmp_path / "split"), stop_after=1, **base), data)
    resumed = train(TrainConfig(out_dir=str(tmp_path / "split"), resume=True, **base), data)
    assert losses(resumed.history) == losses(whole.history)
    assert set(whole.test) == {"energy_mae", "force_mae"} and np.isfinite(whole.test["force_mae"])
    tables = np.load(tmp_path / "whole" / "encoding_tables.npz")
    assert tables["values_layer0"].shape == (8, 4) and "slopes_layer0" in tables.files


def test_given_data_is_cut_like_loaded_data(tmp_path):
    data = md17_like()
    base = dict(dataset="md17:toy", epochs=2, **{**TINY, "n_train": None, "n_val": None, "n_test": None})
    cut = train(TrainConfig(out_dir=str(tmp_path / "cut"), **{**base, "n_train": 5, "n_test": 2}), data)
    pre = {"train": data["train"].subset(np.arange(5)), "val": data["val"], "test": data["test"].subset(np.arange(2))}
    ref = train(TrainConfig(out_dir=str(tmp_path / "ref"), **base), pre)
    assert losses(cut.history) == losses(ref.history) and cut.test == ref.test
    with pytest.raises(ValueError, match="n_train must be >= 1"):
        cut_data(data, TrainConfig(n_train=0))
    with pytest.raises(ValueError, match="'test' is missing"):
        cut_data({"train": data["train"], "val": data["val"]}, TrainConfig())


def _moved(npz):
    with np.load(npz) as f:
        return [float(np.abs(f[f"values_layer{i}"] - f[f"init_values_layer{i}"]).max()) for i in range(1)]


@pytest.mark.parametrize("backend", ["torch", "haiku"])
def test_frozen_tables_never_move_and_the_rest_still_learns(tmp_path, backend):
    data = md17_like()
    base = dict(dataset="md17:toy", backend=backend, epochs=3, lam=0.1, **TINY)
    frozen = train(TrainConfig(out_dir=str(tmp_path / "frozen"), freeze_tables=True, **base), data)
    trained = train(TrainConfig(out_dir=str(tmp_path / "trained"), **base), data)
    assert _moved(tmp_path / "frozen" / "encoding_tables.npz") == [0.0]
    assert _moved(tmp_path / "trained" / "encoding_tables.npz")[0] > 0
    # the rest of the model trains: the loss moves, and differently from the run with learned tables
    assert frozen.history[-1]["train_data"] != frozen.history[0]["train_data"]
    assert losses(frozen.history) != losses(trained.history)


@pytest.mark.parametrize("backend", ["torch", "haiku"])
def test_table_learning_rate_scale(tmp_path, backend):
    data = md17_like()
    base = dict(dataset="md17:toy", backend=backend, epochs=2, **TINY)
    moved = {}
    for scale in (0.1, 1.0, 10.0):
        train(TrainConfig(out_dir=str(tmp_path / str(scale)), table_lr_scale=scale, **base), data)
        moved[scale] = _moved(tmp_path / str(scale) / "encoding_tables.npz")[0]
    assert 0 < moved[0.1] < moved[1.0] < moved[10.0]
    # Adam's first step moves each entry by about the rate, so the move scales about linearly
    assert moved[10.0] / moved[1.0] > 3 and moved[1.0] / moved[0.1] > 3


def test_table_switches_need_a_table_encoding():
    for bad in (dict(freeze_tables=True), dict(table_lr_scale=2.0)):
        with pytest.raises(ValueError, match="table encoding"):
            resolve(TrainConfig(encoding="raw", **bad))
    with pytest.raises(ValueError, match="table_lr_scale must be > 0"):
        resolve(TrainConfig(table_lr_scale=0.0))


@pytest.mark.parametrize("schedule,alpha", [("cosine", 0.01), ("none", 1.0)])
def test_both_backends_follow_the_closed_form_rate(schedule, alpha):
    import torch

    from posenc.haiku.train import learning_rate as haiku_rate
    from posenc.torch.train import learning_rate as torch_rate
    from posenc.torch.train import make_optimizer

    config = TrainConfig(lr=2e-3, min_lr=2e-5, epochs=10, warmup_epochs=2.0, schedule=schedule)
    steps_per_epoch, total, warmup = 7, 70, 14
    expected = [2e-3 * float(lr_factor(s, total, warmup, alpha)) for s in range(90)]
    assert expected[0] == pytest.approx(2e-3 / warmup) and expected[warmup - 1] == pytest.approx(2e-3)  # starts near 0
    assert max(expected) == pytest.approx(2e-3) and expected[-1] == pytest.approx(2e-3 * alpha)
    optimizer, scheduler = make_optimizer(config, torch.nn.Linear(2, 1), torch_rate(config, steps_per_epoch))
    seen = []
    for _ in range(90):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    rate = haiku_rate(config, steps_per_epoch)
    np.testing.assert_allclose([float(rate(s)) for s in range(90)], expected, rtol=1e-5)  # float32 in JAX
    with pytest.raises(ValueError, match="torch only"):
        haiku_rate(TrainConfig(schedule="plateau"), steps_per_epoch)


def test_raw_and_mlp_read_distances_divided_by_the_training_scale():
    assert encoding_overrides(TrainConfig(encoding="raw"), 2.0)["scale"] == 0.5
    assert encoding_overrides(TrainConfig(encoding="mlp"), 4.0)["scale"] == 0.25
    assert encoding_overrides(TrainConfig(encoding="raw", encoding_kwargs={"scale": 1.0}), 2.0)["scale"] == 1.0
    assert "scale" not in encoding_overrides(TrainConfig(encoding="hermite"), 2.0)
    assert "scale" not in encoding_overrides(TrainConfig(encoding="raw"))


@pytest.mark.parametrize("backend", ["torch", "haiku"])
def test_a_non_finite_loss_stops_the_run_and_keeps_the_good_checkpoints(tmp_path, backend):
    data, suffix = md17_like(), {"torch": ".pt", "haiku": ".npz"}[backend]
    config = dict(dataset="md17:toy", backend=backend, epochs=3, out_dir=str(tmp_path), **TINY)
    train(TrainConfig(stop_after=1, **config), data)
    good = {name: (tmp_path / f"{name}{suffix}").read_bytes() for name in ("best", "last")}
    targets = data["train"].targets.copy()
    targets[0] = 1e30  # its squared error overflows float32: every epoch has a batch with molecule 0
    bad = {**data, "train": dataclasses.replace(data["train"], targets=targets)}
    result = train(TrainConfig(resume=True, **config), bad)
    assert not result.finished and result.status == "flagged" and result.test == {}
    assert result.flags[0].startswith("non-finite at epoch 2")
    assert {name: (tmp_path / f"{name}{suffix}").read_bytes() for name in ("best", "last")} == good
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["flags"] for r in rows] == ["", "non-finite"]
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["status"] == "flagged" and saved["flags"] == result.flags


def test_haiku_checkpoints_are_data_and_load_in_the_same_way(tmp_path):
    from posenc.haiku.train import CHECKPOINT_FORMAT
    from posenc.haiku.train import load_checkpoint as load_haiku

    result = train(TrainConfig(dataset="md17:toy", backend="haiku", epochs=2, out_dir=str(tmp_path), **TINY),
                   md17_like())
    best = load_haiku(tmp_path / "best.npz")  # its own best checkpoint
    assert best["format"] == CHECKPOINT_FORMAT and best["epoch"] == result.best_epoch
    assert best["distance_scale"] == result.distance_scale and "opt_state" not in best
    assert any("values" in leaves for leaves in best["params"].values())
    last = load_haiku(tmp_path / "last.npz", resumable=True)
    assert last["epoch"] == 2 and last["config"]["backend"] == "haiku" and last["opt_state"]["leaves"]
    with pytest.raises(ValueError, match="lacks"):
        load_haiku(tmp_path / "best.npz", resumable=True)
    with np.load(tmp_path / "last.npz", allow_pickle=False) as npz:  # plain arrays and a JSON string
        assert all(npz[k].dtype != object for k in npz.files)


class _Trap:
    """Unpickling this creates a file: proof that a loader executed the pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_is_refused_and_never_executed(tmp_path):
    import pickle

    from posenc.haiku.train import load_checkpoint as load_haiku

    marker = tmp_path / "executed"
    config = dict(dataset="md17:toy", backend="haiku", epochs=2, out_dir=str(tmp_path / "run"), **TINY)
    (tmp_path / "run").mkdir()
    for name in ("best.pkl", "last.pkl", "best.npz"):
        path = tmp_path / "run" / name
        path.write_bytes(pickle.dumps({"format": "posenc-haiku-checkpoint-1", "params": _Trap(str(marker))}))
        with pytest.raises(ValueError, match="posenc-haiku-checkpoint-1.*posenc-haiku-checkpoint-2"):
            load_haiku(path)
    with pytest.raises(ValueError, match="pickle"):  # an old run directory: resume names the formats
        train(TrainConfig(resume=True, **config), md17_like())
    assert not marker.exists()


def test_stop_patience_ends_a_run_that_stopped_improving(tmp_path):
    # a rate far below float32's resolution leaves the weights, and so the validation error, unchanged:
    # the best epoch stays the first, and the run ends `stop_patience` epochs later, finished and tested
    base = dict(dataset="md17:toy", epochs=20, lr=1e-30, min_lr=1e-31, warmup_epochs=0, **TINY)
    result = train(TrainConfig(out_dir=str(tmp_path / "run"), stop_patience=3, **base), md17_like())
    assert result.finished and result.best_epoch == 1 and len(result.history) == 4
    assert set(result.test) == {"energy_mae", "force_mae"}
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["finished"] and len(saved["history"]) == 4
    with pytest.raises(ValueError, match="stop_patience must be >= 1"):
        resolve(TrainConfig(stop_patience=0, **base))


def test_patience_counts_from_the_end_of_the_warm_up():
    config = TrainConfig(stop_patience=5, warmup_epochs=2.0)
    assert not patience_ran_out(config, 6, best_epoch=1)  # 4 epochs after the warm-up's end
    assert patience_ran_out(config, 7, best_epoch=1)
    assert not patience_ran_out(config, 14, best_epoch=10) and patience_ran_out(config, 15, best_epoch=10)
    assert not patience_ran_out(TrainConfig(), 1000, best_epoch=1)
