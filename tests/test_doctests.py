"""The docstring examples of every public module run and give what they show (doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import posenc

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PUBLIC_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(posenc.__path__, "posenc.")
    if not any(part.startswith("_") for part in m.name.split("."))
)


def runnable_examples(module) -> int:
    """The number of examples in the module's docstrings that are not marked ``+SKIP``."""
    tests = doctest.DocTestFinder().find(module)
    return sum(1 for t in tests for ex in t.examples if not ex.options.get(doctest.SKIP, False))


@pytest.mark.parametrize("name", ["posenc", *PUBLIC_MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    expected = runnable_examples(module)
    results = doctest.testmod(module, optionflags=FLAGS, verbose=False, report=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed in {name} (-s shows them)"
    assert results.attempted == expected  # every example that is not skipped ran


@pytest.mark.parametrize("name", ["posenc.torch.encodings", "posenc.haiku.encodings", "posenc.exercises"])
def test_main_entry_points_have_tested_examples(name):
    assert runnable_examples(importlib.import_module(name)) > 0


def test_hermite_encoding_examples_are_tested():
    for backend in ("torch", "haiku"):
        cls = importlib.import_module(f"posenc.{backend}").HermiteEncoding
        examples = doctest.DocTestParser().get_examples(cls.__doc__)
        assert any("HermiteEncoding(" in ex.source for ex in examples), backend
