"""Activation sharding: pin the batch axis of activations to the data-parallel mesh axes.

Parameters carry logical axis names (``attractor_jax.nn.init``); activations carry none, and with weights
sharded on ``embed`` (FSDP) the compiler's propagation can give up the batch split of the residual stream and of
the attractor's solver state, so every chip holds the whole batch's activations. ``shard_batch`` constrains an
activation's leading axis to ``(data, fsdp)`` when the function is traced under a mesh with those axes (the
trainer traces its steps under ``jax.sharding.use_abstract_mesh``); without one (a single device, generation, a
user's own jit) it is the identity, so nothing changes numerically outside sharded training.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def shard_batch(x: jax.Array) -> jax.Array:
    """``x`` with its leading axis constrained to the ambient mesh's ``data × fsdp`` axes (those of size > 1);
    the identity without such a mesh or when they do not divide the leading dimension."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    if not axes or x.ndim == 0 or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
        return x
    return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))


def platform() -> str:
    """The platform being compiled for: the ambient mesh's (so ahead-of-time compilation for a TPU from a CPU host
    sees ``"tpu"``), else the default backend's (``"cpu"``, ``"gpu"``, ``"tpu"``)."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()
