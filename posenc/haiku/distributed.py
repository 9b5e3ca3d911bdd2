"""Haiku (JAX) data parallelism: one process, a one-axis device mesh, the batch sharded along it.

``posenc train --backend haiku --data-parallel N`` runs the jitted step over ``Mesh(devices,
("data",))`` of the first N JAX devices (``jax.sharding``; no ``pmap``). Every global batch is
split into N parts (:func:`posenc.parallel.split_batch`), each part padded to the same shapes and
the N graphs stacked along a new leading axis, which is sharded over the mesh; the parameters
and the optimiser state are replicated. The loss of the stacked graph is the masked mean over all
N parts, so the step is the one-device step on the whole batch, and XLA places the sum of the
gradients across devices itself.

On a CPU, JAX shows one device unless ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is
set before ``jax`` is imported (how ``tests/test_distributed_haiku.py`` runs two).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from posenc.parallel import split_batch

__all__ = ["DataParallel", "data_parallel"]

Graph = dict[str, jax.Array]


class DataParallel:
    """The devices a Haiku run trains on (``size == 1``: one device, no mesh in the step).

    Args:
      devices: the JAX devices of the mesh, in order.
    """

    def __init__(self, devices: list[Any]) -> None:
        self.size = len(devices)
        self.mesh = Mesh(np.array(devices), ("data",))
        #: the stacked batch: its leading axis split over the mesh
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        #: parameters and optimiser state: a whole copy on every device
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (one process drives every device)."""
        return jax.process_index() == 0

    def parts(self, idx: np.ndarray) -> list[np.ndarray]:
        """The ``size`` contiguous parts of a global batch ``idx`` (the last ones may be empty)."""
        return split_batch(idx, self.size)

    def put(self, graphs: list[Graph]) -> Graph:
        """``size`` padded graphs of equal shapes stacked along a new leading axis, sharded over the mesh."""
        if len(graphs) != self.size:
            raise ValueError(f"expected {self.size} graphs, one per device, got {len(graphs)}")
        stacked = {key: jnp.stack([g[key] for g in graphs]) for key in graphs[0]}
        return jax.device_put(stacked, self.batch)

    def replicate(self, tree: Any) -> Any:
        """``tree`` (parameters, optimiser state) copied to every device of the mesh."""
        return jax.device_put(tree, self.replicated)

    def close(self) -> None:
        """Nothing to release (the mirror of ``posenc.torch.distributed.DataParallel.close``)."""


def data_parallel(requested: int | None, device: str | None = None) -> DataParallel:
    """The first ``requested`` JAX devices as a :class:`DataParallel`.

    Args:
      requested: devices (None: 1).
      device: unused (the torch backend's device string; JAX picks its default backend).

    Raises:
      ValueError: fewer JAX devices than requested (the message tells how to get host devices).
    """
    del device
    n = 1 if requested is None else requested
    if n < 1:
        raise ValueError(f"data_parallel must be >= 1, got {n}")
    devices = jax.devices()
    if n > len(devices):
        raise ValueError(f"--data-parallel {n} asks for {n} JAX devices but there are {len(devices)} "
                         f"({devices[0].platform}); on a CPU set XLA_FLAGS=--xla_force_host_platform_device_count={n} "
                         "before jax is imported")
    return DataParallel(devices[:n])
