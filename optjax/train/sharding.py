"""Data parallelism with :mod:`jax.sharding`: a one-axis mesh over every device, the batch split
along it, everything else replicated.

On one device the same code runs unchanged. On several hosts (after
``jax.distributed.initialize()``), each process passes the rows of the global batch that its
own devices hold (:func:`process_rows`) and :func:`global_batch` assembles the global array.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optjax.config import ConfigError

__all__ = ["data_mesh", "replicated", "batch_sharding", "process_rows", "global_batch",
           "replicate", "host_value"]

AXIS = "data"


def data_mesh() -> Mesh:
    """A 1-D mesh named ``"data"`` over all devices of all processes."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the devices."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    devices = mesh.devices.size
    if batch_size % devices:
        raise ConfigError(
            f"{what} {batch_size} is not divisible by the {devices} devices of the data-parallel "
            f"mesh; choose a multiple of {devices}")


def process_rows(global_size: int) -> slice:
    """The rows of a global batch of ``global_size`` that this process feeds (all of them on a
    single host). Assumes devices are ordered by process, as :func:`data_mesh` lays them out."""
    per_process = global_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def global_batch(mesh: Mesh, *local: np.ndarray) -> tuple[jax.Array, ...]:
    """Global batch arrays sharded along ``"data"`` from this process's rows."""
    sharding = batch_sharding(mesh)
    return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a)) for a in local)


def host_value(leaf: Any) -> np.ndarray:
    """A replicated array's value as numpy: this process's copy (every device holds all of it,
    so this works on several hosts, where ``np.asarray`` of a global array would not)."""
    if isinstance(leaf, jax.Array):
        return np.asarray(leaf.addressable_data(0))
    return np.asarray(leaf)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Place every leaf of ``tree`` on all devices."""
    return jax.device_put(tree, replicated(mesh))
