"""fixed_point on inputs sharded over an 8-device CPU mesh gives the single-device numbers."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import attractor_jax as aj

    assert jax.device_count() == 8, jax.devices()
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    w = jax.random.normal(k1, (32, 32)) * 0.8 / np.sqrt(32)
    x = jax.random.normal(k2, (16, 4, 32))   # [B, T, D], solved per (b, t)

    def step(w, x):
        def loss(w):
            f = lambda y, w, x: jnp.tanh(y @ w + x)
            sol = aj.fixed_point(f, jnp.zeros_like(x), w, x, solver=aj.Anderson(tol=1e-5, max_iter=50),
                                 backward=aj.IFT(), batch_axis=(0, 1))
            return jnp.mean(sol.value ** 2), sol.stats.iterations
        return jax.value_and_grad(loss, has_aux=True)(w)

    (ref_loss, ref_it), ref_g = jax.jit(step)(w, x)
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    xs = jax.device_put(x, NamedSharding(mesh, P("data", "model", None)))
    ws = jax.device_put(w, NamedSharding(mesh, P()))
    (loss, it), g = jax.jit(step)(ws, xs)
    assert len(xs.sharding.device_set) == 8
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(it), np.asarray(ref_it))
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref_g), rtol=1e-4, atol=1e-6)
    print("SHARDED-OK", it.sharding)
    """
)


def test_sharded_batch_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDED-OK" in out.stdout
