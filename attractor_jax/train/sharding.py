"""Device mesh and logical-axis sharding rules for the trainer.

One `jax.sharding.Mesh` with axes ``(data, fsdp, tensor)``:

* ``data``   pure data parallelism (parameters replicated);
* ``fsdp``   data parallelism with parameters and optimizer state sharded along ``embed`` (ZeRO-3 style);
* ``tensor`` Megatron-style tensor parallelism over heads / MLP width / vocabulary.

The models name every parameter axis (``vocab, embed, heads, kv, kv_heads, ve_in, mlp, norm, state``; see
`attractor_jax.nn.init`); `LOGICAL_RULES` maps those names onto mesh axes, and activations use ``batch`` →
``(data, fsdp)``. A dimension that a mesh axis does not divide is replicated rather than padded.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("kv_heads", None),
    ("ve_in", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("state", None),
)


def parse_mesh(spec: str | None, n_devices: int) -> dict[str, int]:
    """``"data=2,fsdp=2,tensor=2"`` → axis sizes (missing axes are 1; one axis may be -1 = the rest).

    None means all devices on ``data``. The product must equal ``n_devices``.
    """
    if spec is None or spec == "":
        return {"data": n_devices, "fsdp": 1, "tensor": 1}
    sizes: dict[str, int] = {}
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\w+)\s*=\s*(-?\d+)\s*", part)
        if not m or m.group(1) not in MESH_AXES or m.group(1) in sizes:
            raise ValueError(f"mesh {spec!r}: bad entry {part!r}; expected comma-separated AXIS=N with AXIS in "
                             f"{MESH_AXES}, each at most once (e.g. data=2,fsdp=2,tensor=2)")
        n = int(m.group(2))
        if n == 0 or n < -1:
            raise ValueError(f"mesh {spec!r}: {m.group(1)}={n} must be a positive size or -1")
        sizes[m.group(1)] = n
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"mesh {spec!r}: at most one axis may be -1")
    known = math.prod(v for v in sizes.values() if v != -1)
    for axis in MESH_AXES:
        sizes.setdefault(axis, 1)
    if -1 in sizes.values():
        if n_devices % known:
            raise ValueError(f"mesh {spec!r} does not divide the {n_devices} available devices")
        sizes = {k: (n_devices // known if v == -1 else v) for k, v in sizes.items()}
    if math.prod(sizes.values()) != n_devices:
        raise ValueError(f"mesh {spec!r} has {math.prod(sizes.values())} devices but {n_devices} are available; "
                         "the product of the axis sizes must equal the device count")
    return {axis: sizes[axis] for axis in MESH_AXES}


def check_batch(batch_size: int, grad_accum: int, spec: str | None, n_devices: int) -> dict[str, int]:
    """The mesh sizes of ``spec`` over ``n_devices``; ValueError unless every micro-batch
    (``batch_size / grad_accum`` rows) splits evenly over the data-parallel devices (data × fsdp)."""
    sizes = parse_mesh(spec, n_devices)
    n_data, micro = sizes["data"] * sizes["fsdp"], batch_size // grad_accum
    if micro % n_data:
        per = f" (per micro-batch {micro})" if grad_accum > 1 else ""
        raise ValueError(f"train.batch_size={batch_size}{per} is not divisible by the {n_data} data-parallel "
                         f"devices (data × fsdp) of mesh {spec!r}")
    return sizes


def make_mesh(spec: str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec, len(devices))
    grid = np.array(devices).reshape(tuple(sizes[a] for a in MESH_AXES))
    return Mesh(grid, MESH_AXES)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Make a rule-derived spec valid for ``shape``: a mesh axis used by an earlier dimension (e.g. ``vocab`` and
    ``kv`` both on ``tensor``) or not dividing its dimension is dropped (replicated instead of padded)."""
    out, used = [], set()
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        names = tuple(a for a in names if a not in used)
        size = math.prod(mesh.shape[a] for a in names)
        if names and dim % size == 0:
            used.update(names)
            out.append(names[0] if len(names) == 1 else names)
        else:
            out.append(None)
    return P(*out)


def state_shardings(tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedShardings for a pytree holding NNX variables (parameters, or optimizer moments that mirror them),
    as arrays or ShapeDtypeStructs, from the variables' logical axis names. Leaves without axis names (step
    counters, scalars) are replicated; empty nodes (``optax.MaskedNode``) pass through."""
    with nnx.logical_axis_rules(rules):
        specs = nnx.get_partition_spec(tree)

    def one(spec, x):
        if not jax.tree_util.tree_leaves(x):  # an empty node such as optax.MaskedNode
            return x
        if isinstance(spec, P):
            return NamedSharding(mesh, _fit(spec, tuple(x.shape), mesh))
        return jax.tree_util.tree_map(lambda _: replicated(mesh), x)

    return jax.tree_util.tree_map(one, specs, tree, is_leaf=lambda v: isinstance(v, P))


def under_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """``fn`` traced with ``mesh`` as the ambient (abstract) mesh, so the models' `shard_batch` constraints pin
    activations to the batch sharding. Wrap a step before ``jax.jit``."""

    @functools.wraps(fn)
    def traced_under_mesh(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced_under_mesh


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch-major arrays: the leading axis over ``(data, fsdp)``, the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
