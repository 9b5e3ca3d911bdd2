"""The converged campaign: the paper's Table 1 at convergence, run by the protocol of
``results/campaign/protocol.md`` (fixed before the first run).

Stages, each planned from the committed results of the one before (so one invocation runs the
whole campaign in order, and a second one resumes it):

1. ``tune``: every EGNN arm but ``smooth`` at each rate of :data:`LR_CANDIDATES`, ethanol split 1,
   :data:`TUNE_EPOCHS` epochs; the rate with the lowest validation force MAE wins.
2. ``tune-smooth``: ``smooth`` (posenc's model with the smoothness loss) at posenc's chosen rate,
   each lambda of :data:`LAM_CANDIDATES`, chosen the same way.
3. ``main``: every arm at its chosen setting for :data:`EPOCHS` epochs on every molecule and split
   of :func:`main_plan`, split-major, so a cut-short campaign is balanced. A flagged main run is run
   once more at the next lower rate of :data:`LR_CANDIDATES` (the protocol's amendment 1, the same
   rule for every arm), right after it, into ``<arm>-lr<rate>``; its cell reports that run. Where
   ``posenc`` and ``frozen`` finished at different rates, the one at the higher rate also runs at
   the lower (``<arm>-ratematched``, amendment 2): the trained-against-frozen control at one rate.
4. ``qm9``: the QM9 subset (:data:`QM9_TARGETS` x :data:`QM9_ARMS` x :data:`QM9_SEEDS`, one rate
   for every arm, stopped once validation stops improving), after the MD17 runs.

The runs train through :func:`run_grid.run_grid` (resume from scratch checkpoints, flags, kept
files) into ``results/campaign/runs/<dataset>/<backbone>/<arm>/seed<k>/``. Only validation errors
choose settings; the tuning runs' test errors are recorded and never read here.

Examples::

    python scripts/campaign.py --dry-run          # the plan and the state of each run
    python scripts/campaign.py                    # run (or resume) the whole campaign
    python scripts/campaign.py --jobs 2           # two runs at a time (one thread each)
    python scripts/campaign.py --molecules ethanol malonaldehyde aspirin benzene
    python scripts/campaign.py --report           # README.md, table1.csv, paired.csv, curves

The report (``--report``, also written after every run) reads only the committed files:
``README.md`` (the tuning, Table 1 beside the paper's, the paired differences with their verdict,
the rate-matched control, the failed runs, what is not run yet), ``table1.csv``, ``paired.csv``,
``controls.csv``, ``tuning.csv``, ``qm9.csv``, ``status.json`` (how far the campaign has got, the
chosen settings) and ``learning_curves.png``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from posenc.runs import is_flagged, qm9_cell, spread_cell

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_grid  # noqa: E402  (the sibling script, importable once its folder is on the path)

RESULTS = run_grid.DEFAULT_RESULTS / "campaign"
#: Epochs of every main run (cosine horizon too).
EPOCHS = 1000
#: Epochs of the tuning runs, whose *validation* error picks each arm's rate and smooth's lambda.
TUNE_EPOCHS = 200
LR_CANDIDATES = (3e-4, 1e-3, 3e-3)
LAM_CANDIDATES = (0.01, 0.1, 1.0)
#: Where settings are tuned: (molecule, split).
TUNE_ON = ("ethanol", 1)
#: Every run's fixed part of the config (the engine's default recipe otherwise).
BASE_CONFIG: dict[str, Any] = {"n_layers": 4, "hidden": 64, "batch_size": 16, "schedule": "cosine",
                               "device": "cpu", "md17_labels": "md17"}


@dataclasses.dataclass(frozen=True)
class CampaignArm:
    """One arm: its encoding and fixed changes; ``rate_of`` names the arm whose tuned rate it uses
    (itself by default), and ``tune_lam`` whether lambda is tuned instead of the rate."""

    encoding: str
    changes: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""
    rate_of: str | None = None
    tune_lam: bool = False


ARMS: dict[str, CampaignArm] = {
    "raw": CampaignArm("raw", note="the backbone's own distance feature (EGNN: d^2 / mean d^2)"),
    "posenc": CampaignArm("hermite", note="Hermite table, 64 bins x 32, sinusoidal init, lambda = 0"),
    "smooth": CampaignArm("hermite", note="posenc with the smoothness loss (tuned lambda)",
                          rate_of="posenc", tune_lam=True),
    "frozen": CampaignArm("hermite", {"freeze_tables": True},
                          note="posenc's sinusoidal table never trained (a fixed basis)"),
    "gaussian": CampaignArm("gaussian", note="Gaussian RBF, 50 fixed centres (what practitioners use)"),
}
#: QM9's "+MLP" row (the paper's 2-layer ReLU MLP of d); a QM9 arm only.
MLP_ARM = CampaignArm("mlp", note="the paper's 2-layer ReLU MLP of d (QM9's +MLP row)")
#: The QM9 subset's protocol: targets, molecules, arms, seeds, recipe (one rate for every arm).
QM9_TARGETS = ("U0", "homo", "mu")
QM9_SUBSET = 10_000
QM9_ARMS = ("raw", "mlp", "posenc", "smooth")
QM9_SEEDS = (1, 2, 3)
QM9_CONFIG: dict[str, Any] = {"n_layers": 4, "hidden": 64, "batch_size": 96, "schedule": "cosine", "device": "cpu",
                              "lr": 5e-4, "loss": "l1", "epochs": 300, "stop_patience": 30,
                              "qm9_subset": QM9_SUBSET}
#: Arms per (backbone, molecule kind): aspirin (21 atoms, ~4x the cost) runs four arms on split 1.
EGNN_ARMS = ("raw", "posenc", "smooth", "frozen", "gaussian")
ASPIRIN_ARMS = ("raw", "posenc", "smooth", "frozen")
TRANSFORMER_ARMS = ("raw", "posenc", "smooth")
#: The paper's Table 1 molecules; the first two run on splits 1-3, aspirin on split 1, the rest
#: only when named with ``--molecules`` (their rows read "not run" until then).
PAPER_MOLECULES = ("aspirin", "benzene", "ethanol", "malonaldehyde", "naphthalene", "salicylic",
                   "toluene", "uracil")
DEFAULT_MOLECULES = ("ethanol", "malonaldehyde", "aspirin")
SPLITS = (1, 2, 3)


def _spec(molecule: str, split: int, backbone: str, arm: str, config: dict[str, Any]) -> run_grid.RunSpec:
    dataset = f"md17:{molecule}"
    full = {**BASE_CONFIG, **config, "dataset": dataset, "backbone": backbone, "md17_split": split,
            "seed": split}
    return run_grid.RunSpec(dataset, backbone, arm, split, full)


def tune_specs() -> list[run_grid.RunSpec]:
    """Stage 1: the rate candidates of every arm that tunes its rate."""
    molecule, split = TUNE_ON
    return [_spec(molecule, split, "egnn", f"tune-{name}-lr{lr:g}",
                  {"encoding": arm.encoding, "lam": 0.0, "lr": lr, "epochs": TUNE_EPOCHS, **arm.changes})
            for lr in LR_CANDIDATES for name, arm in ARMS.items() if arm.rate_of is None]


def tune_lam_specs(posenc_lr: float) -> list[run_grid.RunSpec]:
    """Stage 2: smooth's lambda candidates at posenc's chosen rate."""
    molecule, split = TUNE_ON
    arm = ARMS["smooth"]
    return [_spec(molecule, split, "egnn", f"tune-smooth-lam{lam:g}",
                  {"encoding": arm.encoding, "lam": lam, "lr": posenc_lr, "epochs": TUNE_EPOCHS, **arm.changes})
            for lam in LAM_CANDIDATES]


def _best_by_validation(specs: Sequence[run_grid.RunSpec], results_dir: Path) -> run_grid.RunSpec | None:
    """The finished, unflagged spec with the lowest ``best_val``; None while any is unfinished.

    Raises:
      RuntimeError: every candidate finished flagged (the arm cannot be tuned).
    """
    scores = {}
    for k, spec in enumerate(specs):
        state = run_grid.run_state(spec, results_dir)
        if state in ("todo", "conflict"):
            return None
        if state == "done":
            scores[k] = json.loads((results_dir / spec.rel_dir / "result.json").read_text())["best_val"]
    if not scores:
        raise RuntimeError(f"every tuning run of {[str(s.rel_dir) for s in specs]} is flagged")
    return specs[min(scores, key=scores.__getitem__)]


def chosen_settings(results_dir: Path = RESULTS) -> dict[str, dict[str, float]]:
    """``arm -> {"lr": ..., ("lam": ...)}`` for every arm whose tuning has finished."""
    tuned = tune_specs()
    out: dict[str, dict[str, float]] = {}
    for name, arm in ARMS.items():
        if arm.rate_of is None:
            best = _best_by_validation([s for s in tuned if s.arm.startswith(f"tune-{name}-lr")], results_dir)
            if best is not None:
                out[name] = {"lr": best.config["lr"], "lam": 0.0}
    posenc = out.get("posenc")
    if posenc is not None:
        best = _best_by_validation(tune_lam_specs(posenc["lr"]), results_dir)
        if best is not None:
            out["smooth"] = {"lr": posenc["lr"], "lam": best.config["lam"]}
    return out


def main_plan(molecules: Sequence[str] = DEFAULT_MOLECULES) -> list[tuple[str, int, str, str]]:
    """``(molecule, split, backbone, arm)`` of every main run, split-major (each split's ethanol and
    malonaldehyde first, then the Transformer, then aspirin, then any other molecule)."""
    bad = [m for m in molecules if m not in PAPER_MOLECULES]
    if bad:
        raise ValueError(f"unknown MD17 molecule(s) {bad}; choose from {PAPER_MOLECULES}")
    plan = []
    for split in SPLITS:
        for molecule in ("ethanol", "malonaldehyde"):
            if molecule in molecules:
                plan += [(molecule, split, "egnn", arm) for arm in EGNN_ARMS]
    if "ethanol" in molecules:
        plan += [("ethanol", 1, "transformer", arm) for arm in TRANSFORMER_ARMS]
    if "aspirin" in molecules:
        plan += [("aspirin", 1, "egnn", arm) for arm in ASPIRIN_ARMS]
    for molecule in molecules:
        if molecule not in ("ethanol", "malonaldehyde", "aspirin"):
            plan += [(molecule, 1, "egnn", arm) for arm in ASPIRIN_ARMS]
    return plan


#: Marks a fallback run's folder: ``<arm>-lr<rate>`` (amendment 1 of the protocol).
FALLBACK = "-lr"


def fallback_spec(spec: run_grid.RunSpec) -> run_grid.RunSpec | None:
    """The run that stands in for a flagged main run: the same run at the next lower rate of
    :data:`LR_CANDIDATES`, in ``<arm>-lr<rate>``; None below the lowest candidate."""
    lower = [lr for lr in LR_CANDIDATES if lr < spec.config["lr"]]
    if not lower:
        return None
    return dataclasses.replace(spec, arm=f"{spec.arm}{FALLBACK}{max(lower):g}",
                               config={**spec.config, "lr": max(lower)})


#: The rate-matched control (amendment 2): trained against frozen table at one rate.
CONTROL = ("posenc", "frozen")
#: Marks a rate-matched control run's folder: ``<arm>-ratematched``.
MATCHED = "-ratematched"


def _main_spec(molecule: str, split: int, backbone: str, arm: str,
               settings: dict[str, dict[str, float]]) -> run_grid.RunSpec:
    return _spec(molecule, split, backbone, arm,
                 {"encoding": ARMS[arm].encoding, **settings[arm], "epochs": EPOCHS, **ARMS[arm].changes})


def main_specs(settings: dict[str, dict[str, float]], molecules: Sequence[str] = DEFAULT_MOLECULES,
               results_dir: Path | None = None) -> list[run_grid.RunSpec]:
    """Stage 3: the main runs of every arm whose setting is chosen (the others wait).

    With ``results_dir``, each flagged run is followed by its :func:`fallback_spec` (amendment 1;
    none after a flagged fallback); and once both arms of :data:`CONTROL` have a result on a split
    at different rates, the one at the higher rate is run again at the lower rate, into
    ``<arm>-ratematched`` (amendment 2).
    """
    specs = []
    for molecule, split, backbone, arm in main_plan(molecules):
        if arm not in settings:
            continue
        spec = _main_spec(molecule, split, backbone, arm, settings)
        specs.append(spec)
        if results_dir is None:
            continue
        fallback = fallback_spec(spec)
        if fallback is not None and run_grid.run_state(spec, results_dir) == "failed":
            specs.append(fallback)
        if arm == CONTROL[1] and CONTROL[0] in settings:
            specs += _rate_matched(molecule, split, backbone, settings, results_dir)
    return specs


def _rate_matched(molecule: str, split: int, backbone: str, settings: dict[str, dict[str, float]],
                  results_dir: Path) -> list[run_grid.RunSpec]:
    """Amendment 2: the :data:`CONTROL` arm that finished at the higher rate, again at the lower."""
    finished = {}
    for arm in CONTROL:
        spec = _main_spec(molecule, split, backbone, arm, settings)
        for candidate in (spec, fallback_spec(spec)):
            if candidate is not None and run_grid.run_state(candidate, results_dir) == "done":
                finished[arm] = candidate
    if len(finished) < 2 or len({s.config["lr"] for s in finished.values()}) == 1:
        return []
    high, low = sorted(finished.values(), key=lambda s: -s.config["lr"])
    return [dataclasses.replace(high, arm=f"{high.arm.split(FALLBACK)[0]}{MATCHED}",
                                config={**high.config, "lr": low.config["lr"]})]


def qm9_specs(settings: dict[str, dict[str, float]]) -> list[run_grid.RunSpec]:
    """The QM9 subset's runs, seed-major; ``smooth`` waits for its lambda (chosen on MD17)."""
    specs = []
    for seed in QM9_SEEDS:
        for target in QM9_TARGETS:
            for arm in QM9_ARMS:
                if arm == "smooth" and "smooth" not in settings:
                    continue
                encoding = MLP_ARM.encoding if arm == "mlp" else ARMS[arm].encoding
                lam = settings["smooth"]["lam"] if arm == "smooth" else 0.0
                config = {**QM9_CONFIG, "dataset": f"qm9:{target}", "backbone": "egnn", "encoding": encoding,
                          "lam": lam, "seed": seed}
                specs.append(run_grid.RunSpec(f"qm9:{target}", "egnn", arm, seed, config))
    return specs


def plan(results_dir: Path = RESULTS, molecules: Sequence[str] = DEFAULT_MOLECULES, qm9: bool = True,
         md17: bool = True, device: str | None = None) -> list[run_grid.RunSpec]:
    """Every run that can be configured now, in the order they should run: the tuning, then (with
    ``md17``) the MD17 runs, then (with ``qm9``) the QM9 subset.

    Args:
      device: train on this torch device instead of the protocol's ``cpu`` (an execution setting:
        :func:`run_grid.run_state` does not compare it, so a run may resume on another device).
    """
    specs = tune_specs()
    settings = chosen_settings(results_dir)
    if "posenc" in settings:
        specs += tune_lam_specs(settings["posenc"]["lr"])
    specs += (main_specs(settings, molecules, results_dir) if md17 else []) + (qm9_specs(settings) if qm9 else [])
    if device is not None:
        specs = [dataclasses.replace(s, config={**s.config, "device": device}) for s in specs]
    return specs


def run(results_dir: Path, scratch_dir: Path, molecules: Sequence[str], qm9: bool = True, log: Any = print,
        jobs: int = 1, md17: bool = True, device: str | None = None) -> int:
    """Runs the campaign, ``jobs`` runs at a time, always the next ones of a plan made afresh
    whenever a run ends: tuning unlocks later stages, and a flagged run its fallback.

    Returns:
      How many runs were trained.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")

    def todo() -> list[run_grid.RunSpec]:
        return [s for s in plan(results_dir, molecules, qm9, md17, device)
                if run_grid.run_state(s, results_dir) not in ("done", "failed")]

    if jobs > 1:  # local processes, refilled from the plan as each ends
        return len(run_grid.submit_runs([], results_dir, scratch_dir, jobs=jobs, executor="local", log=log,
                                        refill=todo))
    trained = 0
    while next_runs := todo():
        run_grid.run_grid(next_runs[:1], results_dir, scratch_dir, jobs=1, log=log)
        trained += 1
    return trained


# ----------------------------------------------------------------------------------------------
# The report (reads only committed files)

#: The paper's Table 1 (EGNN rows and the Transformer's), beside ours.
PAPER_TABLE = run_grid.DEFAULT_RESULTS / "paper_table1.csv"
#: Arm pairs whose per-split difference is reported: (a, b) means a - b.
PAIRS = (("posenc", "raw"), ("smooth", "posenc"), ("smooth", "raw"), ("posenc", "frozen"),
         ("gaussian", "raw"))


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished main run: its test errors (meV/Angstrom, meV), setting and validation curve."""

    molecule: str
    backbone: str
    arm: str
    split: int
    force_mae: float
    energy_mae: float
    best_val: float
    lr: float
    lam: float
    epochs: int
    cpu_seconds: float
    flags: tuple[str, ...]
    val_curve: tuple[float, ...]
    #: Whether this run is a fallback (amendment 1): ``arm`` is then its arm, ``lr`` the lower rate.
    fallback: bool = False


def read_runs(results_dir: Path = RESULTS, tuning: bool = False) -> list[Run]:
    """Every finished or flagged run under ``results_dir/runs`` (tuning runs only if ``tuning``)."""
    runs = []
    for path in sorted((results_dir / "runs").glob("md17-*/*/*/seed*/result.json")):
        dataset_dir, backbone, arm, seed_dir = path.parts[-5:-1]
        if arm.startswith("tune-") != tuning:
            continue
        result = json.loads(path.read_text())
        if not result.get("finished") and not is_flagged(result):
            continue
        info_path = path.parent / "run_info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        cfg, test = result["config"], result.get("test") or {}
        fallback = not tuning and FALLBACK in arm
        runs.append(Run(dataset_dir.split("-", 1)[1], backbone, arm.split(FALLBACK)[0] if fallback else arm,
                        int(seed_dir[4:]),
                        test.get("force_mae", float("nan")), test.get("energy_mae", float("nan")),
                        result.get("best_val", float("nan")), cfg["lr"], cfg["lam"], cfg["epochs"],
                        info.get("cpu_seconds", float("nan")), tuple(result.get("flags", [])),
                        tuple(h["val_force_mae"] for h in result.get("history", [])), fallback))
    return runs


def paper_rows(path: Path = PAPER_TABLE) -> dict[tuple[str, str, str], float]:
    """``(molecule, backbone, arm) -> force MAE`` of the paper's Table 1 (its EGNN and Transformer rows)."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["backbone"] and row["arm"]:
                out[(row["molecule"], row["backbone"], row["arm"])] = float(row["force_mae"])
    return out


def table1(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Mean and std over splits of every (molecule, backbone, arm) with an unflagged run (a
    fallback run stands in for its flagged first run; ``fallback_splits`` names those splits and
    ``lr`` gives each split's rate)."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        if not run.flags and run.arm in ARMS:  # not the rate-matched control (amendment 2)
            groups.setdefault((run.molecule, run.backbone, run.arm), []).append(run)
    paper = paper_rows()
    rows = []
    for (molecule, backbone, arm), members in sorted(groups.items()):
        members.sort(key=lambda r: r.split)
        force, force_std = run_grid.mean_std([r.force_mae for r in members])
        energy, energy_std = run_grid.mean_std([r.energy_mae for r in members])
        rows.append({"molecule": molecule, "backbone": backbone, "arm": arm, "n": len(members),
                     "splits": " ".join(str(r.split) for r in members), "force_mae": force,
                     "force_mae_std": force_std, "energy_mae": energy, "energy_mae_std": energy_std,
                     "fallback_splits": " ".join(str(r.split) for r in members if r.fallback),
                     "lr": " ".join(f"{r.lr:g}" for r in members), "lam": members[0].lam, "epochs": members[0].epochs,
                     "cpu_minutes": float(np.mean([r.cpu_seconds for r in members])) / 60,
                     "paper_force_mae": paper.get((molecule, backbone, arm), float("nan"))})
    return rows


def paired(runs: Sequence[Run], pairs: Sequence[tuple[str, str]] = PAIRS) -> list[dict[str, Any]]:
    """The per-split force-MAE difference of every pair of arms in ``pairs`` with a common split.

    A difference is ``real`` when it has the same sign on every split and its mean exceeds the
    split-to-split spread (the larger std of the two arms over the common splits; needs >= 2
    splits), ``within noise`` otherwise. ``rates`` gives each split's two learning rates: where
    they differ, the difference is of arm *and* rate.
    """
    by_key = {(r.molecule, r.backbone, r.arm, r.split): r for r in runs if not r.flags}
    cases = sorted({(r.molecule, r.backbone) for r in runs})
    rows = []
    for molecule, backbone in cases:
        for a, b in pairs:
            splits = [s for s in SPLITS
                      if (molecule, backbone, a, s) in by_key and (molecule, backbone, b, s) in by_key]
            if not splits:
                continue
            ra = [by_key[(molecule, backbone, a, s)] for s in splits]
            rb = [by_key[(molecule, backbone, b, s)] for s in splits]
            ruled = compare([r.force_mae for r in ra], [r.force_mae for r in rb], a, b, "split")
            rates = " ".join(f"{x.lr:g}/{y.lr:g}" for x, y in zip(ra, rb))
            rows.append({"molecule": molecule, "backbone": backbone, "a": a, "b": b,
                         "splits": " ".join(map(str, splits)), "differences": ruled.pop("differences"),
                         "mean": ruled.pop("mean"), "rates": rates, **ruled})  # the CSV's column order
    return rows


def compare(errors_a: Sequence[float], errors_b: Sequence[float], a: str, b: str, unit: str,
            fmt: str = "+.2f") -> dict[str, Any]:
    """The protocol's paired rule for two arms' errors on the same splits (or seeds), in order.

    A difference a - b is ``real`` when it has the same sign on every ``unit`` and its mean
    exceeds the spread (the larger std of the two arms; needs >= 2), ``within noise`` otherwise.

    Returns:
      ``differences`` (text, each in format ``fmt``), ``mean``, ``spread``, ``ratio_b_over_a`` and ``verdict``.
    """
    fa, fb = np.asarray(errors_a, dtype=float), np.asarray(errors_b, dtype=float)
    diff = fa - fb
    spread = max(float(fa.std(ddof=1)), float(fb.std(ddof=1))) if diff.size > 1 else float("nan")
    if diff.size < 2:
        verdict = f"one {unit}: no verdict"
    elif (np.all(diff < 0) or np.all(diff > 0)) and abs(diff.mean()) > spread:
        verdict = f"real: {a if diff.mean() < 0 else b} lower"
    else:
        verdict = "within noise"
    return {"differences": " ".join(f"{d:{fmt}}" for d in diff),
            "mean": float(diff.mean()), "spread": spread, "ratio_b_over_a": float(fb.mean() / fa.mean()),
            "verdict": verdict}


def flagged_main(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Every flagged run of a main arm beside the run that stands in for it (amendment 1).

    A flagged run is no result: it is never averaged into a table or a paired difference. A spike or
    a late start does not stop training, though, so most flagged runs still ran to their last epoch
    and were tested; this list reports what each scored and what its stand-in scored, so that the
    price of the rule is on the record. ``force_mae`` is NaN for a run that stopped (a non-finite
    loss), ``standin_force_mae`` while the stand-in runs; ``standin_flagged`` says the stand-in
    failed too (the cell then has no result: amendment 1 runs one stand-in).
    """
    standins = {(r.molecule, r.backbone, r.arm, r.split): r for r in runs if r.fallback}
    rows = []
    for run in runs:
        if not run.flags or run.fallback or run.arm not in ARMS:
            continue
        standin = standins.get((run.molecule, run.backbone, run.arm, run.split))
        curve = np.asarray(run.val_curve, dtype=float)
        finite = np.isfinite(curve)
        rows.append({"molecule": run.molecule, "backbone": run.backbone, "arm": run.arm, "split": run.split,
                     "lr": run.lr, "flag": run.flags[0].split(":")[0], "epochs_run": curve.size,
                     "best_epoch": int(np.argmin(np.where(finite, curve, np.inf))) + 1 if finite.any() else 0,
                     "force_mae": run.force_mae,
                     "standin_lr": standin.lr if standin else float("nan"),
                     "standin_force_mae": standin.force_mae if standin else float("nan"),
                     "standin_flagged": bool(standin and standin.flags)})
    return rows


def controls(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Amendment 2's control: on each split with a ``<arm>-ratematched`` run, :data:`CONTROL`'s two
    arms at that run's rate, compared by :func:`paired`'s rule (a = trained, b = frozen)."""
    a, b = (f"{arm}, one rate" for arm in CONTROL)
    picked = []
    for m in runs:
        if m.arm.endswith(MATCHED) and not m.flags:
            for arm, name in zip(CONTROL, (a, b)):
                family = (arm, f"{arm}{MATCHED}")
                picked += [dataclasses.replace(r, arm=name) for r in runs
                           if (r.molecule, r.backbone, r.split, r.lr) == (m.molecule, m.backbone, m.split, m.lr)
                           and r.arm in family and not r.flags]
    return paired(picked, ((a, b),))


PAPER_TABLE2 = run_grid.DEFAULT_RESULTS / "paper_table2.csv"


def paper_qm9_rows(path: Path = PAPER_TABLE2) -> dict[tuple[str, str], float]:
    """``(target, arm) -> MAE`` of the paper's Table 2 EGNN rows."""
    with open(path, newline="") as f:
        return {(row["target"], row["arm"]): float(row["mae"]) for row in csv.DictReader(f)
                if row["backbone"] == "egnn" and row["arm"]}


QM9Runs = dict[tuple[str, str], list[dict[str, Any]]]


def qm9_runs(results_dir: Path = RESULTS) -> QM9Runs:
    """``(target, arm) -> result.json`` of every finished, unflagged QM9 run, in seed order."""
    groups: QM9Runs = {}
    for path in sorted((results_dir / "runs").glob("qm9-*/egnn/*/seed*/result.json")):
        result = json.loads(path.read_text())
        if not result.get("finished") or is_flagged(result):
            continue
        target, arm = path.parts[-5].split("-", 1)[1], path.parts[-3]
        groups.setdefault((target, arm), []).append(result)
    for members in groups.values():
        members.sort(key=lambda m: m["config"]["seed"])
    return groups


def cap_ended(result: Mapping[str, Any]) -> bool:
    """Whether the epoch cap, not the patience, ended a run: it ran every epoch, and its best
    validation epoch lies within the patience window of the last one (it was still improving)."""
    config = result["config"]
    return (len(result["history"]) == config["epochs"]
            and config["epochs"] - result["best_epoch"] < config["stop_patience"])


def qm9_table(runs: QM9Runs) -> list[dict[str, Any]]:
    """Mean and std over seeds of the test MAE of every (target, arm) of :func:`qm9_runs`, with
    the epochs the runs lasted (they stop when validation stops improving) and how many of them
    the epoch cap ended instead (:func:`cap_ended`)."""
    paper = paper_qm9_rows()
    rows = []
    for (target, arm), members in sorted(runs.items()):
        mae, std = run_grid.mean_std([m["test"]["mae"] for m in members])
        rows.append({"target": target, "arm": arm, "unit": members[0]["units"][0], "n": len(members),
                     "seeds": " ".join(str(m["config"]["seed"]) for m in members),
                     "maes": " ".join(f"{m['test']['mae']:.4g}" for m in members), "mae": mae, "mae_std": std,
                     "epochs_run": " ".join(str(len(m["history"])) for m in members),
                     "cap_ended": sum(map(cap_ended, members)),
                     "devices": " ".join(sorted({m["config"]["device"] for m in members})),
                     "paper_mae": paper.get((target, arm), float("nan"))})
    return rows


#: QM9 arm pairs whose per-seed difference is reported: (a, b) means a - b.
QM9_PAIRS = (("posenc", "raw"), ("posenc", "mlp"), ("smooth", "posenc"), ("mlp", "raw"))


def qm9_paired(runs: QM9Runs) -> list[dict[str, Any]]:
    """The per-seed test-MAE difference of every pair of :data:`QM9_PAIRS` on each target, on the
    seeds both arms finished, by the rule of :func:`compare` (seeds in place of splits)."""
    cells = {key: {m["config"]["seed"]: m["test"]["mae"] for m in members} for key, members in runs.items()}
    rows = []
    for target in QM9_TARGETS:
        for a, b in QM9_PAIRS:
            ea, eb = cells.get((target, a), {}), cells.get((target, b), {})
            seeds = [s for s in ea if s in eb]
            if seeds:
                rows.append({"target": target, "a": a, "b": b, "seeds": " ".join(map(str, seeds)),
                             **compare([ea[s] for s in seeds], [eb[s] for s in seeds], a, b, "seed", "+.3g")})
    return rows


def tuning_rows(tuning_runs: Sequence[Run], chosen: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Each tuning candidate's validation error, flags and whether it is the ``chosen`` setting."""
    rows = []
    for run in tuning_runs:
        arm = run.arm.split("-")[1]
        setting = chosen.get(arm)
        rows.append({"arm": arm, "lr": run.lr, "lam": run.lam, "epochs": run.epochs, "best_val": run.best_val,
                     "flags": "; ".join(run.flags),
                     "chosen": setting is not None and setting["lr"] == run.lr and setting["lam"] == run.lam})
    order = {name: k for k, name in enumerate(ARMS)}
    return sorted(rows, key=lambda r: (order[r["arm"]], r["lr"], r["lam"]))


def plot_curves(runs: Sequence[Run], path: Path) -> bool:
    """Validation force MAE against epoch (log-log) of every arm on split 1, one panel per molecule
    and backbone, one colour per arm: a flagged run dashed and faint, its stand-in at a lower rate
    solid. Returns False (and writes nothing) without finished runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r.molecule, r.backbone) for r in runs if r.split == 1 and r.val_curve})
    if not cases:
        return False
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases) + 1.6, 3.4), squeeze=False)
    labels: dict[str, Any] = {}
    for ax, (molecule, backbone) in zip(axes[0], cases):
        for k, arm in enumerate(ARMS):
            for run in runs:
                if (run.molecule, run.backbone, run.arm, run.split) == (molecule, backbone, arm, 1) and run.val_curve:
                    label = arm + (f" (lr {run.lr:g})" if run.fallback else "") + (" (flagged)" if run.flags else "")
                    (line,) = ax.plot(np.arange(1, len(run.val_curve) + 1), run.val_curve, color=f"C{k}",
                                      lw=0.8 if run.flags else 1.0, ls="--" if run.flags else "-",
                                      alpha=0.45 if run.flags else 1.0)
                    labels.setdefault(label, line)
        ax.set(xscale="log", yscale="log", xlabel="epoch", title=f"{molecule}, {backbone}, split 1")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("validation force MAE (meV/Å)")
    fig.legend(labels.values(), labels.keys(), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / (4.2 * len(cases) + 1.6), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def qm9_composition(results_dir: Path = RESULTS) -> list[dict[str, Any]]:
    """The composition-only baseline (least squares on atom counts, :mod:`posenc.baselines`) of
    every QM9 target of the subset: QM9's twin of MD17's "F = 0". Written once to
    ``qm9_composition.csv`` (it is deterministic) and read back afterwards."""
    path = results_dir / "qm9_composition.csv"
    if path.is_file():
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    from posenc.baselines import composition_mae
    from posenc.data.qm9 import load_qm9

    data = load_qm9(split="egnn", targets=list(QM9_TARGETS), subset=QM9_SUBSET, progress=False)
    rows = [{"target": t, "unit": data["train"].target_units[k], "n_train": len(data["train"]),
             "n_test": len(data["test"]), "test_mae": composition_mae(data["train"], data["test"], t),
             "test_std": float(data["test"].targets[:, k].std())}
            for k, t in enumerate(QM9_TARGETS)]
    run_grid.write_csv(path, rows)
    return rows


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if not np.isfinite(value) else f"{value:.{digits}f}"


def _fmt_sig(value: float) -> str:
    """Two significant figures: QM9's spreads run from 1e-4 D (μ) to 10 meV."""
    return "-" if not np.isfinite(value) else f"{value:.2g}"


def _pair_lines(pairs: Sequence[dict[str, Any]]) -> list[str]:
    """The markdown table of :func:`paired`'s rows (none without rows)."""
    if not pairs:
        return []
    return ["Rates: each split's learning rates of a and b; where they differ, so does more than the arm.", "",
            "| molecule | backbone | a - b | splits | rates a/b | per split | mean | spread | b / a | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *(f"| {p['molecule']} | {p['backbone']} | {p['a']} - {p['b']} | {p['splits']} | {p['rates']} | "
              f"{p['differences']} | {p['mean']:+.2f} | {_fmt(p['spread'], 2)} | {p['ratio_b_over_a']:.2f} | "
              f"{p['verdict']} |" for p in pairs)]


def _flagged_line(row: dict[str, Any]) -> str:
    """One :func:`flagged_main` row as a line of the README's markdown table."""
    standin_lr = "-" if np.isnan(row["standin_lr"]) else f"{row['standin_lr']:g}"
    standin = _fmt(row["standin_force_mae"], 2) + (" (failed too)" if row["standin_flagged"] else "")
    return (f"| {row['molecule']} | {row['backbone']} | {row['arm']} | {row['split']} | {row['lr']:g} | "
            f"{row['flag']} | {row['epochs_run']} | {row['best_epoch']} | {_fmt(row['force_mae'], 2)} | "
            f"{standin_lr} | {standin} |")


def write_report(results_dir: Path = RESULTS, molecules: Sequence[str] = DEFAULT_MOLECULES) -> None:
    """``README.md``, ``learning_curves.png``, ``status.json`` and the CSV files of ``results_dir``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    runs, tuning_runs = read_runs(results_dir), read_runs(results_dir, tuning=True)
    settings = chosen_settings(results_dir)
    rows, pairs, tuning = table1(runs), paired(runs), tuning_rows(tuning_runs, settings)
    run_grid.write_csv(results_dir / "table1.csv", rows)
    run_grid.write_csv(results_dir / "paired.csv", pairs)
    run_grid.write_csv(results_dir / "tuning.csv", tuning)
    curves = plot_curves(runs, results_dir / "learning_curves.png")
    planned = main_specs({arm: {"lr": 0.0, "lam": 0.0} for arm in ARMS}, molecules)
    done = {(r.molecule, r.backbone, r.arm, r.split) for r in runs if not r.flags}
    cpu = sum(r.cpu_seconds for r in [*runs, *tuning_runs] if np.isfinite(r.cpu_seconds))
    finished = sum(1 for s in planned if (s.dataset.split(':')[1], s.backbone, s.arm, s.seed) in done)
    qm9_results = qm9_runs(results_dir)
    qm9 = qm9_table(qm9_results)
    qm9_planned, qm9_finished = len(QM9_TARGETS) * len(QM9_ARMS) * len(QM9_SEEDS), sum(r["n"] for r in qm9)
    (results_dir / "status.json").write_text(json.dumps(
        {"main_runs_planned": len(planned), "main_runs_finished": finished, "tuning_runs_finished": len(tuning),
         "qm9_runs_planned": qm9_planned, "qm9_runs_finished": qm9_finished,
         "epochs": EPOCHS, "tune_epochs": TUNE_EPOCHS, "cpu_hours": round(cpu / 3600, 2),
         "settings": settings}, indent=1) + "\n")
    lines = ["# The converged campaign", "",
             "Written by `scripts/campaign.py --report` from the committed runs (do not edit by hand). The",
             "protocol, fixed before the first run, is [protocol.md](protocol.md). Force MAE in meV/Å, energy",
             "MAE in meV, on each split's 1,000 test frames; `mean ± std (number of splits)`. †: on some",
             "split the run at the arm's tuned rate was flagged and its run at the next lower rate stands in",
             "(the protocol's amendment 1; `table1.csv`'s `fallback_splits`).", "",
             f"{finished} of "
             f"{len(planned)} planned main runs and {len(tuning)} tuning runs are finished; they took "
             f"{cpu / 3600:.1f} CPU-hours (one thread per run; a run cut and resumed counts its last part only). "
             f"{qm9_finished} of {qm9_planned} QM9 runs are finished (on "
             f"{', '.join(sorted({d for r in qm9 for d in r['devices'].split()})) or 'no device yet'}).",
             "", "## Tuning (ethanol split 1, validation force MAE)", ""]
    if tuning:
        lines += ["| arm | lr | λ | epochs | best validation force MAE | flags | chosen |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['arm']} | {r['lr']:g} | {r['lam']:g} | {r['epochs']} | {_fmt(r['best_val'], 2)} | "
                  f"{r['flags'] or '-'} | {'yes' if r['chosen'] else ''} |" for r in tuning]
    else:
        lines.append("No tuning run has finished yet.")
    cell = {(r["molecule"], r["backbone"], r["arm"]): r for r in rows}
    failed_cells = {(r.molecule, r.backbone, r.arm) for r in runs if r.flags}
    paper = paper_rows()
    for backbone, arms in (("egnn", EGNN_ARMS), ("transformer", TRANSFORMER_ARMS)):
        for metric, unit in (("force_mae", "meV/Å"), ("energy_mae", "meV")):
            name = "EGNN" if backbone == "egnn" else "Transformer"
            title = f"## {name}: test {metric.split('_')[0]} MAE ({unit})"
            head = "| molecule | " + " | ".join(arms) + " |"
            rule = "|---|" + "---|" * len(arms)
            if metric == "force_mae":
                head += " paper raw | paper +PosEnc | paper +Smooth |"
                rule += "---|---|---|"
            lines += ["", title, "", head, rule]
            for molecule in PAPER_MOLECULES:
                cells = []
                for arm in arms:
                    row = cell.get((molecule, backbone, arm))
                    missing = "failed" if (molecule, backbone, arm) in failed_cells else "not run"
                    text = spread_cell(row[metric], row[f"{metric}_std"], row["n"]) if row else missing
                    cells.append(text + (" †" if row and row["fallback_splits"] else ""))
                line = f"| {molecule} | " + " | ".join(cells) + " |"
                if metric == "force_mae":
                    line += " " + " | ".join(_fmt(paper.get((molecule, backbone, a), float("nan")))
                                             for a in ("raw", "posenc", "smooth")) + " |"
                lines.append(line)
    lines += ["", "## Paired differences (force MAE, a - b on each split)", ""]
    lines += _pair_lines(pairs) or ["No pair of arms shares a finished split yet."]
    matched = controls(runs)
    run_grid.write_csv(results_dir / "controls.csv", matched)
    lines += ["", "## Rate-matched control (amendment 2): trained against frozen table at one rate", "",
              "Where posenc and frozen finished a split at different rates, the one at the higher rate was run",
              f"again at the lower (`<arm>{MATCHED}`): the trained and the frozen table at one rate. A diagnostic,",
              "listed here only (never in Table 1 or the paired differences above).", ""]
    lines += _pair_lines(matched) or ["No rate-matched pair has finished yet."]
    qm9_pairs = qm9_paired(qm9_results)
    run_grid.write_csv(results_dir / "qm9.csv", qm9)
    run_grid.write_csv(results_dir / "qm9_paired.csv", qm9_pairs)
    composition = {r["target"]: r for r in qm9_composition(results_dir)}
    by_cell = {(r["target"], r["arm"]): r for r in qm9}
    paper_qm9 = paper_qm9_rows()
    lines += ["", f"## QM9 subset ({QM9_SUBSET:,} molecules of the EGNN split): test MAE", "",
              "The paper's numbers are full-data (100,000 training molecules) and stand beside ours for",
              "the ordering of the arms only. Composition: least squares on atom counts (no geometry).", "",
              "| target | unit | " + " | ".join(QM9_ARMS) + " | composition | test std | paper: "
              + " | paper: ".join(QM9_ARMS) + " |", "|---|---|" + "---|" * (2 * len(QM9_ARMS) + 2)]
    for target in QM9_TARGETS:
        comp = composition[target]
        ours = [by_cell.get((target, a)) for a in QM9_ARMS]
        cells = [qm9_cell(r["mae"], r["mae_std"], r["n"]) if r else "not run" for r in ours]
        paper_cells = [f"{paper_qm9[(target, a)]:.3g}" if (target, a) in paper_qm9 else "-" for a in QM9_ARMS]
        lines.append(f"| {target} | {comp['unit']} | " + " | ".join(cells) + f" | {float(comp['test_mae']):.4g} | "
                     f"{float(comp['test_std']):.4g} | " + " | ".join(paper_cells) + " |")
    if qm9:
        capped = [f"{t} {sum(r['cap_ended'] for r in qm9 if r['target'] == t)} of "
                  f"{sum(r['n'] for r in qm9 if r['target'] == t)}" for t in QM9_TARGETS]
        lines += ["", "`qm9.csv` gives each cell's seeds, their errors, epochs and devices (amendment 3).",
                  "", "Runs the epoch cap ended while validation was still improving (`cap_ended` in `qm9.csv`): "
                  + ", ".join(capped) + ".",
                  "", "Paired differences per seed (the same rule as Table 1's, seeds in place of splits; "
                  "`qm9_paired.csv`):", "",
                  "| target | a - b | seeds | per seed | mean | spread | b / a | verdict |", "|---" * 8 + "|",
                  *(f"| {p['target']} | {p['a']} - {p['b']} | {p['seeds']} | {p['differences']} | {p['mean']:+.3g} | "
                    f"{_fmt_sig(p['spread'])} | {p['ratio_b_over_a']:.2f} | {p['verdict']} |" for p in qm9_pairs)]
    failed = [r for r in [*runs, *tuning_runs] if r.flags]
    lines += ["", "## Failed (flagged) runs", ""]
    lines += [f"- {r.molecule} {r.backbone} {r.arm} split {r.split} (lr {r.lr:g}): {'; '.join(r.flags)}"
              for r in failed] or ["None."]
    flagged = flagged_main(runs)
    run_grid.write_csv(results_dir / "flagged.csv", flagged)
    if flagged:
        lines += ["", "What the flagged main runs scored all the same, beside their stand-ins (`flagged.csv`). A",
                  "flagged run is no result and is in no table or difference above; this is the rule's price.", "",
                  "| molecule | backbone | arm | split | lr | flag | epochs run | best epoch | test force MAE | "
                  "stand-in lr | stand-in test force MAE |", "|---" * 11 + "|",
                  *map(_flagged_line, flagged)]
    if curves:
        lines += ["", "## Learning curves", "", "![validation force MAE against epoch](learning_curves.png)"]
    (results_dir / "README.md").write_text("\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--molecules", nargs="+", default=list(DEFAULT_MOLECULES), choices=PAPER_MOLECULES,
                   help="MD17 molecules of the main stage (the paper's other five run split 1, four arms)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--scratch-dir", type=Path, default=run_grid.DEFAULT_SCRATCH / "campaign",
                   help="checkpoints (git-ignored, never committed)")
    p.add_argument("--dry-run", action="store_true", help="list the runs planned now and their state")
    p.add_argument("--report", action="store_true", help="only rewrite the report from the committed runs")
    p.add_argument("--no-qm9", dest="qm9", action="store_false", help="plan and run the MD17 part only")
    p.add_argument("--no-md17", dest="md17", action="store_false",
                   help="plan and run the QM9 part only (after the tuning, which chooses smooth's lambda)")
    p.add_argument("--device", default=None, help="torch device of the runs (default: the protocol's cpu)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, the next ones in the plan (one thread each)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        for spec in plan(args.results_dir, args.molecules, args.qm9, args.md17, args.device):
            print(f"{run_grid.run_state(spec, args.results_dir):8s} {spec.rel_dir}  "
                  f"lr={spec.config['lr']:g} lam={spec.config['lam']:g} epochs={spec.config['epochs']}")
        return 0
    if not args.report:
        def log(line: str) -> None:
            print(line, flush=True)
            write_report(args.results_dir, args.molecules)

        run(args.results_dir, args.scratch_dir, args.molecules, args.qm9, log=log, jobs=args.jobs, md17=args.md17,
            device=args.device)
    write_report(args.results_dir, args.molecules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
