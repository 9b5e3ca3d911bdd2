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
