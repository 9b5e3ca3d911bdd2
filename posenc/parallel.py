"""Data parallelism, the backend-neutral part: how one global batch is split across devices.

Both backends train one model data-parallel the same way: ``batch_size`` is the *global* batch,
the seeded batch order of an epoch (:func:`posenc.data.graphs.batches`) is the same on every
device, and each of the ``n`` devices (torch ranks under ``torchrun``, JAX devices of a mesh)
takes one contiguous part of every batch (:func:`split_batch`). The losses are means over the
global batch, so a step on ``n`` devices is the step of one process on the whole batch, and the
run, its checkpoints and its resumption do not depend on ``n``
(``tests/test_distributed_torch.py``, ``tests/test_distributed_haiku.py``).

Example:
  >>> import numpy as np
  >>> [part.tolist() for part in split_batch(np.array([7, 3, 5, 1, 9]), 2)]
  [[7, 3, 5], [1, 9]]
"""

from __future__ import annotations

import numpy as np

__all__ = ["DataParallelError", "split_batch"]


class DataParallelError(RuntimeError):
    """A data-parallel job cannot go on: a rank was lost, or the devices asked for are not there."""


def split_batch(idx: np.ndarray, n_parts: int) -> list[np.ndarray]:
    """``idx`` in ``n_parts`` contiguous parts whose sizes differ by at most one.

    A global batch shorter than ``n_parts`` (an epoch's last batch) leaves the last parts empty;
    each backend gives an empty part zero weight.

    Args:
      idx: ``[B]`` molecule indices of one global batch.
      n_parts: devices (>= 1).

    Returns:
      ``n_parts`` int64 arrays, in order; their concatenation is ``idx``.

    Raises:
      ValueError: ``n_parts < 1``.
    """
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    return [np.asarray(part, dtype=np.int64) for part in np.array_split(np.asarray(idx), n_parts)]
