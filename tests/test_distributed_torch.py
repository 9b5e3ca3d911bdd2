"""Torch data parallelism: two gloo ranks train the model one process trains, and survive losing a rank.

Each test starts two ranks as subprocesses (``torchrun``, or the environment protocol ``torchrun``
uses, where a test needs to kill one rank itself) and compares with ``posenc.trainer.train`` run
here, in one process on the whole batch. Float64, so that the only differences are the order of
additions (about 1e-15).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from posenc.parallel import split_batch
from posenc.torch.train import load_checkpoint
from posenc.trainer import train
from posenc.training import TrainConfig

#: A small float64 run on the toy Morse clusters. ``n_train`` 17 with batch 8: batches of 8, 8
#: and 1, so the last batch leaves rank 1 an empty part.
FLAGS = {"n_train": 17, "n_val": 6, "n_test": 6, "batch_size": 8, "epochs": 3, "n_layers": 2, "hidden": 16,
         "dtype": "float64", "seed": 3, "lam": 0.1, "lr": 3e-3, "schedule": "none", "warmup_epochs": 0.0}
TOLERANCE = 1e-6


def _args(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}" if k != "lam" else "--lambda", str(v))]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, resumable=True)["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def test_split_batch_parts_are_contiguous_and_cover_the_batch():
    idx = np.array([5, 2, 9, 0, 7])
    parts = split_batch(idx, 3)
    assert [p.tolist() for p in parts] == [[5, 2], [9, 0], [7]]
    assert [p.size for p in split_batch(idx[:1], 2)] == [1, 0]
    with pytest.raises(ValueError, match="n_parts"):
        split_batch(idx, 0)


@pytest.mark.parametrize("dataset", ["synthetic:md17", "synthetic:qm9"])
def test_two_gloo_ranks_match_one_process_on_the_doubled_batch(tmp_path, dataset):
    """MD17-shaped (equal atom counts, energy + forces) and QM9-shaped (3 to 7 atoms, no forces)."""
    flags = {**FLAGS, "dataset": dataset}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "posenc",
           "train", *_args(flags), "--out-dir", str(tmp_path / "ddp"), "--progress", "false", "--data-parallel", "2"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one = train(TrainConfig(**flags, out_dir=str(tmp_path / "one"), progress=False))
    assert _max_diff(_state(tmp_path / "ddp" / "last.pt"), _state(tmp_path / "one" / "last.pt")) < TOLERANCE
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    for row_ddp, row_one in zip(ddp["history"], one.history, strict=True):  # losses and validation, reduced
        for key in row_one:
            if key not in ("seconds", "flags"):
                assert row_ddp[key] == pytest.approx(row_one[key], rel=TOLERANCE), key
    assert ddp["test"] == pytest.approx(one.test, rel=TOLERANCE)


def test_data_parallel_outside_torchrun_names_the_command(tmp_path):
    with pytest.raises(ValueError, match="torchrun --nproc_per_node=2"):
        train(TrainConfig(**FLAGS, dataset="synthetic:md17", out_dir=str(tmp_path)), data_parallel=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_rank_stops_the_job_and_resume_reproduces_the_run(tmp_path):
    """Rank 1 is killed mid-run: rank 0 stops with a message naming the intact checkpoint, and a
    resumption in one process (another world size) ends where an uninterrupted run ends."""
    # Few steps (rounding differences grow step by step in any training run: about 1e-12 after 100
    # steps here), and a large validation set to make each epoch last long enough to be interrupted.
    flags = {**FLAGS, "dataset": "synthetic:md17", "n_train": 16, "n_val": 400, "epochs": 30, "n_layers": 1,
             "hidden": 8}
    out = tmp_path / "killed"
    port = _free_port()
    ranks = []
    for rank in (0, 1):  # torchrun's environment protocol, without its agent (which would kill rank 0 too)
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        ranks.append(subprocess.Popen([sys.executable, "-m", "posenc", "train", *_args(flags), "--out-dir", str(out),
                                       "--progress", "false"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.json").is_file() or len(json.loads((out / "metrics.json").read_text())) < 2:
            assert time.monotonic() < deadline and ranks[0].poll() is None, "the job did not get to epoch 2"
            time.sleep(0.02)
        ranks[1].send_signal(signal.SIGKILL)
        _, stderr = ranks[0].communicate(timeout=120)
    finally:
        for p in ranks:
            p.kill()
            p.wait()
    assert ranks[0].returncode == 4, stderr[-3000:]
    assert "lost contact with another rank" in stderr and "--resume" in stderr, stderr[-3000:]
    saved = load_checkpoint(out / "last.pt", resumable=True)  # intact: loads, with the whole state
    assert 2 <= saved["epoch"] < flags["epochs"]
    assert f"(epoch {saved['epoch']}) is intact" in stderr

    resumed = train(TrainConfig(**flags, out_dir=str(out), resume=True, progress=False))
    whole = train(TrainConfig(**flags, out_dir=str(tmp_path / "whole"), progress=False))
    assert resumed.finished and whole.finished
    assert _max_diff(_state(out / "last.pt"), _state(tmp_path / "whole" / "last.pt")) < TOLERANCE
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in whole.history],
                                                                       rel=TOLERANCE)
