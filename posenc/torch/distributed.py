"""Torch data parallelism: ``torchrun`` ranks, DistributedDataParallel, sums across ranks.

``torchrun --nproc_per_node=N -m posenc train ...`` starts N processes and tells each its rank
through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`data_parallel` reads it and joins the process group (NCCL on GPUs, one
GPU per local rank; gloo on CPUs). Every rank builds the same model from the same seed, takes
its part of every global batch (:func:`posenc.parallel.split_batch`), and DDP averages the
gradients across ranks during ``backward``. The batch-size-independent arithmetic of the loss
(why the average gives the single-process gradient of the whole batch, smoothness term
included) is in ``posenc.torch.train.Backend``.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) the run is one process and nothing
here starts a process group.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from posenc.parallel import DataParallelError, split_batch

__all__ = ["DataParallel", "data_parallel"]

#: What ``torchrun`` (or any launcher using its environment protocol) sets in every rank.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: How a failed exchange between ranks names itself in a RuntimeError.
TRANSPORTS = ("gloo", "NCCL", "c10d")


class DataParallel:
    """This process's place in a data-parallel torch job (``size == 1``: a plain run).

    Args:
      size: ranks in the job.
      rank: this process's rank, ``0..size - 1``.
      device: where this rank's model and batches live (``"cpu"``, ``"cuda:<local rank>"``).
      owns_group: whether :meth:`close` should destroy the process group (it was started here).
    """

    def __init__(self, size: int, rank: int, device: str, owns_group: bool = False) -> None:
        self.size, self.rank, self.device, self._owns_group = size, rank, device, owns_group

    @property
    def main(self) -> bool:
        """Whether this rank writes the run's files (rank 0)."""
        return self.rank == 0

    def part(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of a global batch ``idx`` (possibly empty)."""
        return split_batch(idx, self.size)[self.rank]

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (itself when ``size == 1``); DDP copies rank 0's
        parameters and buffers to every rank, here."""
        if self.size == 1:
            return model
        # A [1, H] output weight gets its gradient transposed (strides (1, 1)); DDP copies it into
        # its bucket and warns once per rank. The copy is H numbers.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        device = torch.device(self.device)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (a copy; ``values`` itself when ``size == 1``)."""
        if self.size == 1:
            return values
        total = values.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def barrier(self) -> None:
        """Waits for every rank (so that a file rank 0 has written can be read by all)."""
        if self.size > 1:
            dist.barrier()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turns a failed collective (a rank died or hung up) into :class:`posenc.parallel.DataParallelError`."""
        try:
            yield
        except RuntimeError as err:
            # a collective raises DistError, but DDP's reducer re-raises a transport failure in
            # backward as a plain RuntimeError that names the transport
            if not isinstance(err, dist.DistError) and not any(t in str(err) for t in TRANSPORTS):
                raise
            raise DataParallelError(f"rank {self.rank} of {self.size} lost contact with another rank "
                                    f"({type(err).__name__}: {str(err).splitlines()[0]})") from err

    def close(self) -> None:
        """Leaves the process group this object started (nothing otherwise)."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False


def data_parallel(requested: int | None, device: str) -> DataParallel:
    """Joins the data-parallel job ``torchrun`` started, or describes a plain one-process run.

    Args:
      requested: ranks the caller asks for (``posenc train --data-parallel N``); None: as many as
        the launcher started (1 outside one).
      device: the config's device; ``"cuda"`` becomes ``"cuda:<LOCAL_RANK>"`` in a job (NCCL),
        anything else stays as it is (gloo).

    Returns:
      The rank's :class:`DataParallel`; with more than one rank the process group is started.

    Raises:
      ValueError: ``requested`` > 1 outside ``torchrun`` (with the command to use instead), or a
        ``requested`` that differs from the launcher's world size.
    """
    if requested is not None and requested < 1:
        raise ValueError(f"data_parallel must be >= 1, got {requested}")
    if not all(v in os.environ for v in LAUNCHER_VARIABLES):
        if requested not in (None, 1):
            raise ValueError(f"the torch backend trains data-parallel under torchrun: "
                             f"torchrun --nproc_per_node={requested} -m posenc train ... "
                             f"(found no {'/'.join(LAUNCHER_VARIABLES)} in the environment)")
        return DataParallel(1, 0, device)
    size, rank, local = (int(os.environ[v]) for v in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    if requested is not None and requested != size:
        raise ValueError(f"--data-parallel {requested} but torchrun started {size} ranks")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if size == 1:
        return DataParallel(1, 0, device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size)
    return DataParallel(size, rank, device, owns_group=owns)
