"""The project's scripts (``scripts/*.py``, not a package) imported by name for their tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as the module ``name``, loaded once per test session.

    It is registered in ``sys.modules`` because dataclasses look their module up by name, and a
    script that imports a sibling (``campaign`` imports ``run_grid``) then finds the same module.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"no script {name}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tiny_grid_budget() -> Any:
    """A ``run_grid.Budget`` for tests: one epoch of a one-layer model on a few toy molecules."""
    grid = load_script("run_grid")
    return grid.Budget("tiny", md17_epochs_9=1, md17_cost_power=0.0, min_epochs=1, qm9_epochs=1, qm9_subset=None,
                       config={"n_layers": 1, "hidden": 8, "batch_size": 8, "n_train": 16, "n_val": 8,
                               "n_test": 8})
