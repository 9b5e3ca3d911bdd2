"""The ``posenc`` command line: ``posenc train ...``.

Settings come from the :class:`posenc.training.TrainConfig` defaults, then a YAML file
(``--config``), then the flags given on the command line (each flag is a config field of the same
name, with dashes; ``--lambda`` is ``lam``). Example::

    posenc train --dataset md17:ethanol --backbone egnn --encoding hermite --lambda 0.1
    posenc train --config run.yaml --quick --out-dir runs/try
    posenc train --config run.yaml --resume          # continue runs/... where it stopped
    torchrun --nproc_per_node=2 -m posenc train --quick        # torch: 2 ranks, one model (DDP)
    posenc train --backend haiku --data-parallel 2 --quick     # Haiku: a mesh of 2 devices

``--data-parallel N`` splits every batch (``--batch-size`` is the global batch) across N devices:
torch ranks, which ``torchrun`` starts (the flag then only checks their number), or the first N
JAX devices. It is not a config field: the result does not depend on it, and a run may resume on
another number of devices (see :mod:`posenc.parallel`).

Exit status: 0 for a run that finished (or stopped as planned by ``--stop-after``) unflagged, 2 for
a bad config or checkpoint, 3 for a run flagged by :mod:`posenc.run_health` (stuck, spiking or
non-finite; the last line then starts with ``FLAGGED:``), 4 for a data-parallel job that lost a
rank (the message names the checkpoint to resume from).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from posenc.training import TrainConfig, mae_summary


#: Exit status of a flagged run.
FLAGGED_EXIT = 3
#: Exit status of a data-parallel job that lost a rank.
LOST_RANK_EXIT = 4


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _optional(kind: Callable[[str], Any]) -> Any:
    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


#: Help for each flag (the TrainConfig docstring has the details).
_HELP = {
    "dataset": "md17:<molecule>, qm9:<target>, synthetic:md17 or synthetic:qm9",
    "backbone": "egnn | transformer | dimenet",
    "backend": "torch | haiku (haiku: EGNN only)",
    "encoding": "raw | mlp | gaussian | bessel | linear | hermite | hermite5 | bspline",
    "lam": "weight lambda of the smoothness loss",
    "schedule": "cosine | plateau (torch) | none",
    "warmup_epochs": "epochs of linear learning-rate warm-up (0: none)",
    "out_dir": "output directory (default runs/<dataset>_<backbone>_<encoding>_lam<lambda>_seed<seed>)",
    "resume": "continue from OUT_DIR/last.*",
    "quick": "small subset, few epochs, small model (seconds to minutes on a laptop)",
    "stop_after": "stop after this many epochs (resume later)",
    "stop_patience": "end the run (tested on its best weights) after this many epochs without a better validation "
                     "error",
    "encoding_kwargs": "JSON dict of further encoding arguments, e.g. '{\"init\": \"gaussian\"}'",
}


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; absent flags stay absent (argparse.SUPPRESS)."""
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="YAML file of config fields")
    hints: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str, "bool": _bool}
    for f in dataclasses.fields(TrainConfig):
        flags = ["--lambda"] if f.name == "lam" else [f"--{f.name.replace('_', '-')}"]
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _HELP.get(f.name)}
        type_name = str(f.type).replace(" ", "")
        if f.name == "encoding_kwargs":
            kw["type"] = json.loads
        elif type_name == "bool":
            kw.update(nargs="?", const=True, type=_bool, metavar="BOOL")
        else:
            base = type_name.split("|")[0]
            kw["type"] = _optional(hints[base]) if "None" in type_name else hints[base]
        parser.add_argument(*flags, **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posenc",
                                     description="Learned, regularized positional encoding for molecules.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a backbone with a distance encoding",
                           description="Train EGNN / Transformer / DimeNet++ with a distance encoding on MD17 or QM9.")
    _add_train_flags(train)
    train.add_argument("--data-parallel", type=int, default=None, metavar="N",
                       help="split every batch across N devices (torch: the ranks torchrun starts, "
                            "default all of them; haiku: the first N JAX devices, default 1)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the YAML file, then the flags given."""
    values: dict[str, Any] = {}
    given = dict(vars(args))
    given.pop("command", None)
    given.pop("data_parallel", None)  # how many devices, not what is trained
    path = given.pop("config", None)
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise SystemExit(f"posenc train: cannot read config {path}: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise SystemExit(f"posenc train: {path} must hold a mapping of config fields")
        values.update({("lam" if k == "lambda" else k.replace("-", "_")): v for k, v in (loaded or {}).items()})
    values.update(given)
    try:
        return TrainConfig.from_dict(values)
    except ValueError as err:
        raise SystemExit(f"posenc train: {err}") from err


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``posenc`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from posenc.parallel import DataParallelError
        from posenc.trainer import train

        config = config_from_args(args)
        try:
            result = train(config, data_parallel=args.data_parallel)
        except (ValueError, FileNotFoundError, ImportError) as err:
            print(f"posenc train: error: {err}", file=sys.stderr)
            return 2
        except DataParallelError as err:
            print(f"posenc train: error: {err}", file=sys.stderr)
            return LOST_RANK_EXIT
        if os.environ.get("RANK", "0") != "0":  # another rank of a torchrun job: rank 0 reports
            return FLAGGED_EXIT if result.flags else 0
        if result.finished:
            print(f"{mae_summary(result.test, result.units)}; best epoch {result.best_epoch}; "
                  f"files in {result.out_dir}")
        elif not result.flags:
            print(f"stopped after epoch {result.history[-1]['epoch']}; resume with --resume "
                  f"(files in {result.out_dir})")
        if result.flags:
            print(f"FLAGGED: {'; '.join(result.flags)} (not a result; files in {result.out_dir})")
            return FLAGGED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
