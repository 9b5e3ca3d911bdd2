"""Shared pytest fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """Runs a test with JAX 64-bit types, restoring the previous setting afterwards."""
    with jax.enable_x64(True):
        yield
