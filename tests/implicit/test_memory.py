"""Compiled peak memory of a gradient through fixed_point: flat in max_iter except for Unrolled."""

import jax
import jax.numpy as jnp
import pytest

import attractor_jax as aj

B, D = 8, 256


def peak_bytes(backward, max_iter):
    def loss(w, x):
        f = lambda y, w, x: jnp.tanh(y @ w + x)  # noqa: E731
        sol = aj.fixed_point(f, jnp.zeros_like(x), w, x, solver=aj.Anderson(m=5, max_iter=max_iter),
                             backward=backward)
        return jnp.sum(sol.value ** 2)

    args = (jax.ShapeDtypeStruct((D, D), jnp.float32), jax.ShapeDtypeStruct((B, D), jnp.float32))
    mem = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile().memory_analysis()
    return mem.temp_size_in_bytes + mem.output_size_in_bytes + mem.argument_size_in_bytes


@pytest.mark.parametrize("backward", [aj.IFT(), aj.Neumann(k=1), aj.Phantom(k=2)], ids=["ift", "neumann", "phantom"])
def test_implicit_backward_memory_is_flat_in_depth(backward):
    assert peak_bytes(backward, 64) <= peak_bytes(backward, 4)


def test_unrolled_memory_grows_with_depth():
    small, large = peak_bytes(aj.Unrolled(), 4), peak_bytes(aj.Unrolled(), 64)
    # Each stored step keeps at least one [B, D] float32 activation.
    assert large - small >= 60 * B * D * 4
