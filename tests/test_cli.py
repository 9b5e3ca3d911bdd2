"""``posenc train``: flags, a YAML config, precedence, resume, and clear errors."""

import json

import pytest

from posenc.cli import build_parser, config_from_args, main

TINY = ["--dataset", "synthetic:md17", "--n-layers", "1", "--hidden", "8", "--batch-size", "8", "--n-train", "16",
        "--n-val", "4", "--n-test", "4", "--progress", "false"]


def test_flags_become_the_config():
    args = build_parser().parse_args(["train", "--dataset", "md17:ethanol", "--backbone", "egnn", "--encoding",
                                      "hermite", "--lambda", "0.1", "--quick", "--x-max", "none", "--n-bin", "32",
                                      "--encoding-kwargs", '{"init": "gaussian"}'])
    config = config_from_args(args)
    assert (config.dataset, config.backbone, config.encoding, config.lam) == ("md17:ethanol", "egnn", "hermite", 0.1)
    assert config.quick is True and config.x_max is None and config.n_bin == 32
    assert config.encoding_kwargs == {"init": "gaussian"} and config.epochs == 100  # untouched default


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: qm9:homo\nlambda: 0.5\nepochs: 3\nbatch-size: 7\n")
    config = config_from_args(build_parser().parse_args(["train", "--config", str(path), "--epochs", "1"]))
    assert (config.dataset, config.lam, config.batch_size, config.epochs) == ("qm9:homo", 0.5, 7, 1)
    path.write_text("epochz: 3\n")
    with pytest.raises(SystemExit, match="unknown config keys"):
        config_from_args(build_parser().parse_args(["train", "--config", str(path)]))


def test_train_stop_and_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--epochs", "2", "--stop-after", "1", "--out-dir", out]) == 0
    assert "resume with --resume" in capsys.readouterr().out
    assert main(["train", *TINY, "--epochs", "2", "--out-dir", out, "--resume"]) == 0
    assert "test force MAE" in capsys.readouterr().out
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]


def test_errors_are_reported(tmp_path, capsys):
    assert main(["train", *TINY, "--dataset", "mnist:digits", "--out-dir", str(tmp_path)]) == 2
    assert "dataset must be" in capsys.readouterr().err
    assert main(["train", *TINY, "--resume", "--out-dir", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--epochs", "many"])


@pytest.mark.parametrize("backend", ["torch", "haiku"])
def test_quick_synthetic_run_in_either_backend(tmp_path, capsys, backend):
    out = str(tmp_path / backend)
    args = ["train", "--quick", "--dataset", "synthetic:md17", "--backend", backend, "--epochs", "2", "--n-train", "20",
            "--n-test", "10", "--progress", "false", "--out-dir", out]
    assert main(args) == 0
    assert "test force MAE" in capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads((tmp_path / backend / "result.json").read_text())["status"] == "ok"


def test_a_flagged_run_ends_with_flagged_and_exit_3(tmp_path, capsys, monkeypatch):
    import posenc.trainer
    from posenc.training import TrainResult

    flags = ["stuck at epoch 5: training data loss 0.99 >= 0.9 x zero-prediction loss 0.99 for 3 epochs"]

    def flagged(config, **kwargs):  # train(config, data_parallel=...)
        return TrainResult(out_dir=str(tmp_path), history=[{"epoch": 5}], best_epoch=1, best_val=1.0,
                           test={"force_mae": 849.0, "energy_mae": 1.0}, units=("meV",), x_range=(0.0, 5.0),
                           finished=True, distance_scale=1.0, flags=flags)

    monkeypatch.setattr(posenc.trainer, "train", flagged)
    assert main(["train", *TINY, "--out-dir", str(tmp_path)]) == 3
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("FLAGGED: stuck at epoch 5")
