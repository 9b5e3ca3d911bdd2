"""Haiku data parallelism: a mesh of two host devices trains the model one device trains.

JAX fixes its number of CPU devices when it starts, so the runs happen in a subprocess started
with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``; this process (one device) compares
their checkpoints. Float64, so that the only differences are the order of additions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from posenc.haiku.train import load_checkpoint
from posenc.trainer import train
from posenc.training import TrainConfig

#: ``n_train`` 17 with batch 8: batches of 8, 8 and 1, so the last batch leaves device 1 an empty part.
FLAGS = {"backend": "haiku", "n_train": 17, "n_val": 6, "n_test": 6, "batch_size": 8, "epochs": 3, "n_layers": 2,
         "hidden": 16, "dtype": "float64", "seed": 3, "lam": 0.1, "lr": 3e-3, "schedule": "none",
         "warmup_epochs": 0.0, "progress": False}
TOLERANCE = 1e-6

#: Trains on one device, on two, and on two for one epoch resumed on one (another device count).
SCRIPT = """
import json, sys
import jax
from posenc.trainer import train
from posenc.training import TrainConfig
assert len(jax.devices()) == 2, jax.devices()
flags, out = json.loads(sys.argv[1]), sys.argv[2]
train(TrainConfig(**flags, out_dir=out + "/one"), data_parallel=1)
train(TrainConfig(**flags, out_dir=out + "/mesh"), data_parallel=2)
train(TrainConfig(**flags, out_dir=out + "/switched", stop_after=1), data_parallel=2)
train(TrainConfig(**flags, out_dir=out + "/switched", resume=True), data_parallel=1)
"""


def _params(path: Path) -> dict[str, np.ndarray]:
    params = load_checkpoint(path, resumable=True)["params"]
    return {f"{m}/{n}": v for m, leaves in params.items() for n, v in leaves.items()}


@pytest.mark.parametrize("dataset", ["synthetic:md17", "synthetic:qm9"])
def test_two_host_devices_match_one_device(tmp_path, dataset):
    """MD17-shaped (equal atom counts, energy + forces) and QM9-shaped (3 to 7 atoms, no forces)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps({**FLAGS, "dataset": dataset}), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = _params(tmp_path / "one" / "last.npz")
    for run in ("mesh", "switched"):
        other = _params(tmp_path / run / "last.npz")
        assert other.keys() == one.keys()
        assert max(float(np.abs(other[k] - one[k]).max()) for k in one) < TOLERANCE, run
        results = [json.loads((tmp_path / r / "result.json").read_text()) for r in ("one", run)]
        for a, b in zip(results[0]["history"], results[1]["history"], strict=True):  # losses, validation errors
            assert {k: v for k, v in a.items() if k not in ("seconds", "flags")} == pytest.approx(
                {k: v for k, v in b.items() if k not in ("seconds", "flags")}, rel=TOLERANCE)
        assert results[0]["test"] == pytest.approx(results[1]["test"], rel=TOLERANCE)


def test_more_devices_than_jax_has_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        train(TrainConfig(**FLAGS, dataset="synthetic:md17", out_dir=str(tmp_path)), data_parallel=64)
