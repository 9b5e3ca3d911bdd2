"""Same public name, same thing: every ``posenc/torch/X.py`` has a ``posenc/haiku/X.py`` with the same names.

The public names of a module are its ``__all__`` when it defines one, else the functions and
classes defined in it whose names do not start with ``_``. The only exceptions are listed here,
each with its reason; a new name in one backend must appear in the other or be added below.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import posenc

ROOT = Path(posenc.__file__).parent

#: Modules with no Haiku counterpart: the Triton kernels (CUDA), the Transformer and DimeNet++
#: backbones and the registry that builds them (the Haiku backend has the EGNN only).
TORCH_ONLY_MODULES = frozenset({"_triton_kernels", "triton_kernel", "models.dimenet", "models.transformer",
                                "models.registry"})
#: Torch-only names: the Triton path's hook; the wrapper that gives DimeNet++ (torch only) its
#: output statistics, and the setter of those statistics as buffers after construction (Haiku
#: takes them as constructor arguments); the per-layer encodings helper of the three torch
#: backbones (the Haiku EGNN builds each layer's encoding in that layer's scope, which fixes
#: its parameter names).
TORCH_ONLY_NAMES = frozenset({"set_fused_interpolate", "WithOutputStats", "set_output_stats", "layer_encodings"})
#: Haiku-only names: the torch -> Haiku statistics copy, the tracing test of an eager check, and
#: the Haiku forms of a torch module (``hk.transform`` builders; statistics set in the params;
#: ``torch.nn.Linear`` with its parameters readable before a call, and a block-wise weight
#: initialiser where torch initialises a slice of the weight in place).
HAIKU_ONLY_NAMES = frozenset({"stats_from_torch", "is_concrete", "pair_energy_model", "cluster_energy_model",
                              "set_normalisation", "Linear", "block_uniform"})
#: Batches differ in form: torch's edge lists (``Batch``) against JAX's padded, masked dict.
DIFFERENT_FORMS = {"batching": ({"Batch", "collate"}, {"collate_jax"})}


def _relative_names() -> list[str]:
    """``X`` of every ``posenc/torch/X.py`` (``models.egnn``; ``""`` for the package itself)."""
    names = []
    for path in sorted((ROOT / "torch").rglob("*.py")):
        parts = path.relative_to(ROOT / "torch").with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _module_name(backend: str, rel: str) -> str:
    return f"posenc.{backend}" + (f".{rel}" if rel else "")


def public_names(name: str) -> set[str]:
    """``__all__``, else the public functions and classes defined in module ``name``."""
    module = importlib.import_module(name)
    if hasattr(module, "__all__"):
        return set(module.__all__)
    return {n for n, v in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == name}


def _from_torch_only_module(module_name: str, name: str) -> bool:
    """Whether ``name`` of ``module_name`` comes from a torch-only module.

    Functions and classes by their ``__module__``; constants (no ``__module__``) when a package
    re-exports one of a torch-only module (``BACKBONES``).
    """
    value = getattr(importlib.import_module(module_name), name)
    torch_only = {_module_name("torch", rel) for rel in TORCH_ONLY_MODULES}
    if hasattr(value, "__module__"):
        return value.__module__ in torch_only
    is_package = hasattr(importlib.import_module(module_name), "__path__")
    return is_package and any(vars(importlib.import_module(m)).get(name) is value for m in torch_only)


def test_every_torch_module_has_a_haiku_twin_or_is_listed():
    missing = [rel for rel in _relative_names()
               if rel not in TORCH_ONLY_MODULES and not (ROOT / "haiku" / (rel.replace(".", "/") or ".")).with_suffix(
                   ".py").exists() and not (ROOT / "haiku" / rel.replace(".", "/") / "__init__.py").exists()]
    assert missing == []
    stale = [rel for rel in TORCH_ONLY_MODULES if rel not in _relative_names()]
    assert stale == [], "listed as torch-only but gone"


@pytest.mark.parametrize("rel", [r for r in _relative_names() if r not in TORCH_ONLY_MODULES])
def test_same_public_names(rel):
    torch_name, haiku_name = _module_name("torch", rel), _module_name("haiku", rel)
    torch_names, haiku_names = public_names(torch_name), public_names(haiku_name)
    torch_form, haiku_form = DIFFERENT_FORMS.get(rel, (set(), set()))
    torch_only = {n for n in torch_names - haiku_names - TORCH_ONLY_NAMES - torch_form
                  if not _from_torch_only_module(torch_name, n)}
    haiku_only = haiku_names - torch_names - HAIKU_ONLY_NAMES - haiku_form
    assert (sorted(torch_only), sorted(haiku_only)) == ([], []), f"{torch_name} vs {haiku_name}"


def test_the_allow_lists_are_used():
    """Every listed exception still names something (no stale entries)."""
    torch_all = set().union(*(public_names(_module_name("torch", r)) for r in _relative_names()
                              if r not in TORCH_ONLY_MODULES))
    haiku_all = set().union(*(public_names(_module_name("haiku", r)) for r in _relative_names()
                              if r not in TORCH_ONLY_MODULES))
    assert TORCH_ONLY_NAMES <= torch_all and HAIKU_ONLY_NAMES <= haiku_all
