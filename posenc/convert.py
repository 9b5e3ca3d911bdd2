"""Move parameters between a torch module and a Haiku params tree, both ways.

Naming rule (the two backends are written to follow it): torch submodule ``a`` of a module that
Haiku calls ``name`` is the Haiku module ``name/~/a`` -- Haiku's name for a submodule constructed
in the parent's ``__init__`` (as ``hk.nets.MLP`` does), so Haiku modules build their submodules
there; list items ``layers.0`` become ``layers_0``. ``nn.Linear`` weights ``[out, in]`` map to Haiku's
``w`` ``[in, out]`` and ``bias`` to ``b``; every other parameter keeps its name (``values``, ``slopes``, ...).
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn


def _haiku_path(name: str, torch_path: str) -> str:
    if not torch_path:
        return name
    parts = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", torch_path).split(".")
    return "/~/".join([name, *parts])


def _haiku_entries(module: nn.Module, name: str):
    """Yields (haiku module path, haiku param name, torch parameter, needs transpose)."""
    for mod_path, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if isinstance(mod, nn.Linear):
                yield _haiku_path(name, mod_path), {"weight": "w", "bias": "b"}[p_name], p, p_name == "weight"
            else:
                yield _haiku_path(name, mod_path), p_name, p, False


def torch_to_haiku(module: nn.Module, name: str) -> dict[str, dict[str, np.ndarray]]:
    """A Haiku params tree (numpy leaves) holding ``module``'s parameters.

    Args:
      module: a torch module whose structure mirrors the Haiku module.
      name: the Haiku module's name (e.g. ``"hermite_encoding"``).

    Returns:
      ``{module_path: {param_name: array}}``, usable as ``params`` in ``apply`` (jnp converts).
    """
    params: dict[str, dict[str, np.ndarray]] = {}
    for path, p_name, p, transpose in _haiku_entries(module, name):
        arr = p.detach().cpu().numpy()
        params.setdefault(path, {})[p_name] = arr.T.copy() if transpose else arr.copy()
    return params


def haiku_to_torch(params: dict, module: nn.Module, name: str) -> nn.Module:
    """Copies a Haiku params tree into ``module`` in place (and returns it).

    Raises:
      KeyError: a parameter of ``module`` has no counterpart in ``params``, or ``params`` holds
        entries the module does not have.
      ValueError: a shape differs.
    """
    seen = set()
    with torch.no_grad():
        for path, p_name, p, transpose in _haiku_entries(module, name):
            if path not in params or p_name not in params[path]:
                raise KeyError(f"params has no {path}/{p_name} for torch parameter of shape {tuple(p.shape)}")
            arr = np.asarray(params[path][p_name])
            arr = arr.T if transpose else arr
            if arr.shape != tuple(p.shape):
                raise ValueError(f"{path}/{p_name}: Haiku shape {arr.shape} != torch shape {tuple(p.shape)}")
            # np.array(copy=True): JAX hands out read-only views, and 0-d arrays must stay 0-d
            p.copy_(torch.from_numpy(np.array(arr, copy=True)).to(p.dtype).reshape(p.shape))
            seen.add((path, p_name))
    extra = sorted(f"{m}/{k}" for m, d in params.items() for k in d if (m, k) not in seen)
    if extra:
        raise KeyError(f"params entries with no torch counterpart: {extra}")
    return module
