"""Run flags on synthetic loss sequences, and the zero-prediction loss."""

import numpy as np
import pytest

from molecule_factory import random_molecules
from posenc.run_health import RunHealth, zero_prediction_loss
from posenc.training import output_stats


def epoch(losses, data=None):
    """``[n, 3]`` steps with these total losses (data losses equal unless given; smooth 0)."""
    losses = np.asarray(losses, dtype=float)
    data = losses if data is None else np.full_like(losses, data)
    return np.stack([losses, data, np.zeros_like(losses)], axis=1)


def watcher(**kw):
    return RunHealth(**{"zero_loss": 1.0, "warmup_steps": 20, "steps_per_epoch": 10, "epochs": 10, **kw})


def test_a_healthy_run_is_not_flagged():
    health = watcher()
    for k in range(10):
        assert health.check_epoch(k, epoch(np.linspace(1.0, 0.5, 10) * 0.8**k)) == []
    assert health.messages == [] and not health.stopped


def test_stuck_after_ten_post_warmup_epochs():
    health = watcher(epochs=20)
    flags = [health.check_epoch(k, epoch(np.full(10, 0.95))) for k in range(13)]
    assert flags == [[]] * 11 + [["stuck"], []]  # epochs 1-2 are the warm-up; 3..12 stuck -> epoch 12
    assert health.messages[0].startswith("stuck at epoch 12")


def test_a_slow_start_is_not_stuck():
    """Nine epochs at the plateau after the warm-up, then learning (raw d^2 on malonaldehyde)."""
    health = watcher(epochs=30)
    levels = [1.0] * 2 + [0.98] * 9 + [0.8, 0.5, 0.3]
    assert all(health.check_epoch(k, epoch(np.full(10, level))) == [] for k, level in enumerate(levels))


def test_stuck_resets_when_the_loss_falls():
    health = watcher()
    for k, level in enumerate([1.0, 1.0, 0.95, 0.95, 0.5, 0.95, 0.95]):
        assert "stuck" not in health.check_epoch(k, epoch(np.full(10, level)))


def test_stuck_in_a_short_run_needs_every_post_warmup_epoch():
    stuck = watcher(epochs=4)
    assert [stuck.check_epoch(k, epoch(np.full(10, 0.99))) for k in range(4)] == [[], [], [], ["stuck"]]
    fine = watcher(epochs=4)
    assert [fine.check_epoch(k, epoch(np.full(10, level))) for k, level in enumerate([1, 1, 0.99, 0.3])] == [[]] * 4


def test_spike_against_the_running_median_of_epochs_after_warmup():
    health = watcher()
    assert health.check_epoch(0, epoch([1e6] + [1.0] * 9)) == []  # in the warm-up: not flagged
    for k in (1, 2, 3):
        assert health.check_epoch(k, epoch([1.0] * 10)) == []
    assert health.check_epoch(4, epoch([1.0] * 3 + [30.0] + [1.0] * 6)) == []  # one bad batch: mean 3.9
    assert health.check_epoch(5, epoch([1.0] * 4 + [12.0] * 6)) == []  # mean 7.6 < 10 x median 1
    assert health.check_epoch(6, epoch([1.0] * 10)) == []
    assert health.check_epoch(7, epoch([1.0] * 2 + [20.0] * 8)) == ["spike"]  # diverged: mean 16.2 > 10 x 1
    assert health.messages[-1].startswith("spike at epoch 8: mean training loss 16.2 > 10 x the median")


def test_non_finite_stops():
    health = watcher()
    assert health.check_epoch(0, epoch([1.0, np.nan, 1.0])) == ["non-finite"]
    assert health.stopped and "step 2" in health.messages[0]
    assert watcher().check_epoch(0, epoch([1.0, 1.0], data=np.inf)) == ["non-finite"]


def test_state_round_trip_continues_the_window():
    a, b = watcher(), watcher()
    for k in range(3):
        a.check_epoch(k, epoch([1.0] * 10))
        b.check_epoch(k, epoch([1.0] * 10))
    b = RunHealth.from_state(b.state())
    spike = epoch([1.0] * 5 + [200.0] + [1.0] * 4)
    assert a.check_epoch(3, spike) == b.check_epoch(3, spike) == ["spike"]


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_zero_prediction_loss_is_the_loss_of_the_reference_fit(loss):
    train = random_molecules([5] * 20, seed=3)
    stats = output_stats(train, 100)
    err = np.square if loss == "mse" else np.abs
    mol = np.repeat(np.arange(len(train)), train.n_atoms)
    fit = np.bincount(mol, weights=stats["atom_ref"][train.z, 0]) + stats["mol_shift"][0]
    energy = np.mean(err((fit - train.targets[:, 0]) / stats["scale"][0]))
    forces = np.mean(err(train.forces / stats["scale"][0]))
    got = zero_prediction_loss(train, stats, loss=loss, energy_weight=0.01, force_weight=0.99)
    assert got == pytest.approx(0.01 * energy + 0.99 * forces, rel=1e-12)
    if loss == "mse":  # the force part is exactly the force weight (forces scaled by their rms)
        assert zero_prediction_loss(train, stats, energy_weight=0.0, force_weight=0.99) == pytest.approx(0.99)


def test_zero_prediction_loss_without_forces_is_one_for_mse():
    train = random_molecules([3, 4, 5, 6] * 5, seed=1, forces=False, n_targets=2)
    assert zero_prediction_loss(train, output_stats(train, 100)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="loss"):
        zero_prediction_loss(train, output_stats(train, 100), loss="huber")
