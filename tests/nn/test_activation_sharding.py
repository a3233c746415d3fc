"""shard_batch: the batch-axis constraint appears exactly where a training mesh makes it meaningful."""

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, PartitionSpec as P

from attractor_jax.nn import shard_batch


def _constraints(fn, x):
    jaxpr = jax.make_jaxpr(fn)(x)
    return [e.params["sharding"].spec for e in jaxpr.eqns if e.primitive.name == "sharding_constraint"]


def test_identity_without_a_mesh_and_batch_constraint_under_one():
    x = jnp.ones((8, 4, 16))
    assert _constraints(shard_batch, x) == []
    mesh = AbstractMesh((4, 2, 1), ("data", "fsdp", "tensor"))
    with jax.sharding.use_abstract_mesh(mesh):
        assert _constraints(shard_batch, x) == [P(("data", "fsdp"), None, None)]
        assert _constraints(shard_batch, jnp.ones((6, 4))) == []  # 6 rows do not split over 8 devices
    with jax.sharding.use_abstract_mesh(AbstractMesh((1, 4, 2), ("data", "fsdp", "tensor"))):
        assert _constraints(shard_batch, x) == [P(("fsdp",), None, None)]  # size-1 axes left out
    with jax.sharding.use_abstract_mesh(AbstractMesh((1, 1, 8), ("data", "fsdp", "tensor"))):
        assert _constraints(shard_batch, x) == []  # pure tensor parallelism: the batch is not split
