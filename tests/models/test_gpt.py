"""GPT baseline: shapes, causality, value embeddings, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import attractor_jax.models as M


def test_gpt_forward_causality_and_gradients():
    model = M.create_model("gpt-tiny", d_model=64, n_heads=2, mlp_dim=128, n_layers=3)
    assert sorted(model.value_embeds.keys()) == ["0", "2"]  # alternating, last layer included
    assert model.blocks[1].attn.ve_gate is None and model.blocks[2].attn.ve_gate is not None
    gd, st = nnx.split(model)
    # scaled-zero init zeroes the output projections (no gradient reaches v or the value embeddings at step
    # 0): give them the values a first update would
    for i in range(3):
        blk = st["blocks"][i]
        for proj in (blk["attn"]["o"]["kernel"], blk["mlp"]["proj"]["kernel"]):
            proj.set_value(0.05 * jax.random.normal(jax.random.key(i), proj.get_value().shape))
    a = jax.random.randint(jax.random.key(0), (10,), 0, 256)
    toks = jnp.stack([a, a.at[5].set((a[5] + 7) % 256)])

    def loss(st, t):
        logits, aux = nnx.merge(gd, st)(t[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, t[:, 1:]).mean(), (logits, aux)

    g, (logits, aux) = jax.jit(jax.grad(loss, has_aux=True))(st, toks)
    assert logits.shape == (2, 9, 256) and logits.dtype == jnp.float32 and aux == {}
    np.testing.assert_array_equal(np.asarray(logits[0, :5]), np.asarray(logits[1, :5]))
    assert float(jnp.abs(logits[0, 5:] - logits[1, 5:]).max()) > 1e-4
    norm = lambda x: float(optax.tree.norm(x))  # noqa: E731
    assert norm(g["embed"]) > 0 and norm(g["value_embeds"]["0"]) > 0 and norm(g["value_embeds"]["2"]) > 0
    assert norm(g["blocks"][2]["attn"]["ve_gate"]) > 0
    assert all(norm(g["blocks"][i]) > 0 for i in range(3))


def test_gpt_value_embeddings_init_and_switch():
    model = M.create_model("gpt-tiny", seed=3, d_model=64, n_heads=2, mlp_dim=128, n_layers=3)
    table = model.value_embeds["2"].embedding[...]
    assert abs(float(jnp.std(table)) - 1.0) < 0.03  # N(0, 1) like torch's nn.Embedding
    gate = model.blocks[2].attn.ve_gate.kernel[...]
    assert float(jnp.abs(gate).max()) <= 32**-0.5  # torch Linear default U(±1/sqrt(32))
    plain = M.abstract_model(M.get_config("gpt-tiny", value_embeds=False))
    assert len(plain.value_embeds) == 0 and all(b.attn.ve_gate is None for b in plain.blocks)
