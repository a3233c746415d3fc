"""Generation with KV caches: cached decoding agrees with recomputing the whole sequence at every step.

The oracle is the models' uncached forward over a fixed-length buffer (one compile): the forward is causal, so
the logits at position t do not depend on the placeholder tokens after it. The models are tiny and random, with
every weight matrix perturbed (scaled-zero init leaves the output projections at zero, which would make
attention, and so the cache, irrelevant).
"""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attractor_jax as aj
import attractor_jax.models as M
from attractor_jax.eval.generate import generate_stream, generate_text, sample_logits

SMALL = dict(d_model=32, n_heads=2, mlp_dim=64, vocab_size=48, max_seq_len=32, init_orthogonal=False)
PROMPT_LEN, NEW = 5, 6
MODELS = {
    "gpt": ("gpt-tiny", dict(n_layers=2), 2),
    # batch 1: the random initial state is then prefix-consistent (see models/parcae.py)
    "parcae": ("parcae-tiny", dict(n_prelude=1, n_core=1, n_coda=1, mean_recurrence=2), 1),
    # a tight tolerance, so that both solves converge to the same point
    "attractor": ("attractor-tiny", {"n_backbone_layers": 1, "solver.tol": 1e-6, "solver.max_iter": 40}, 2),
}


def _perturbed(preset, overrides, seed=0):
    model = M.create_model(preset, seed=seed, **SMALL, **overrides)
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    rng = np.random.default_rng(seed + 1)
    leaves = [x + 0.05 * rng.standard_normal(x.shape, np.float32) if x.ndim == 2 else x for x in leaves]
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))


def _recompute_greedy(full, prompt, n):
    """Greedy decoding by running the uncached forward on the whole sequence for every new token."""
    b, t = prompt.shape
    buf = np.zeros((b, t + n), np.int32)
    buf[:, :t] = prompt
    for i in range(t, t + n):
        buf[:, i] = np.asarray(jnp.argmax(full(jnp.asarray(buf))[:, i - 1], axis=-1))
    return buf, np.asarray(full(jnp.asarray(buf)))


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    preset, overrides, batch = MODELS[request.param]
    model = _perturbed(preset, overrides)
    prompt = np.asarray(jax.random.randint(jax.random.key(3), (batch, PROMPT_LEN), 0, SMALL["vocab_size"]))
    tokens, stats = aj.generate(model, prompt, max_new_tokens=NEW, temperature=0.0, key=None, return_stats=True)
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda st, toks: nnx.merge(graphdef, st)(toks)[0])
    full = lambda toks: jitted(state, toks)  # noqa: E731
    oracle_tokens, oracle_logits = _recompute_greedy(full, prompt, NEW)
    return request.param, full, prompt, np.asarray(tokens), stats, oracle_tokens, oracle_logits


def test_cached_greedy_equals_recomputed_greedy(case):
    name, _, prompt, tokens, _, oracle_tokens, _ = case
    assert tokens.shape == (prompt.shape[0], PROMPT_LEN + NEW)
    np.testing.assert_array_equal(tokens[:, :PROMPT_LEN], prompt)
    np.testing.assert_array_equal(tokens, oracle_tokens, err_msg=name)


def test_cached_logits_equal_full_forward_logits(case):
    name, _, _, tokens, stats, _, oracle_logits = case
    expected = oracle_logits[:, PROMPT_LEN - 1 : -1]  # the logits that chose each generated token
    np.testing.assert_allclose(np.asarray(stats["logits"]), expected, atol=2e-5, rtol=0, err_msg=name)
    it = np.asarray(stats["iterations"])
    assert it.shape == (tokens.shape[0], NEW)
    if name == "attractor":  # each new token's own solve: several Anderson steps, within the cap
        assert 2 <= it.min() and it.max() < 40
    else:
        assert (it == 0).all()


def test_logits_depend_on_the_prefix(case):
    """Guards the comparison above against a model in which attention does nothing."""
    _, full, _, tokens, _, _, oracle_logits = case
    changed = tokens.copy()
    changed[:, 0] = (changed[:, 0] + 1) % SMALL["vocab_size"]
    logits = full(jnp.asarray(changed))
    assert np.abs(np.asarray(logits)[:, -1] - oracle_logits[:, -1]).max() > 1e-3


@pytest.fixture(scope="module")
def gpt():
    """The GPT of ``case`` (same weights, same compiled greedy `generate` for a [2, PROMPT_LEN] prompt)."""
    return _perturbed("gpt-tiny", MODELS["gpt"][1])


def _greedy(model, prompt):
    return np.asarray(aj.generate(model, prompt, max_new_tokens=NEW, temperature=0.0, key=None, return_stats=True)[0])


def test_top_k_1_equals_greedy(gpt):
    prompt = np.arange(2 * PROMPT_LEN, dtype=np.int32).reshape(2, PROMPT_LEN)
    greedy = _greedy(gpt, prompt)
    top1 = aj.generate(gpt, prompt, max_new_tokens=NEW, temperature=1.0, top_k=1, key=jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(top1), greedy)


def test_sample_logits_against_closed_forms():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 4000)
    freq = lambda toks: np.bincount(np.asarray(toks), minlength=4) / len(toks)
    # top_p=0.7: the nucleus is {0, 1} (0.5 < 0.7, 0.8 >= 0.7), renormalised to 5/8, 3/8
    np.testing.assert_allclose(freq(jax.vmap(lambda k: sample_logits(logits, k, 1.0, top_p=0.7)[0])(keys)),
                               [5 / 8, 3 / 8, 0, 0], atol=0.03)
    # top_k=3 renormalises the three largest: 0.5/0.95, 0.3/0.95, 0.15/0.95
    np.testing.assert_allclose(freq(jax.vmap(lambda k: sample_logits(logits, k, 1.0, top_k=3)[0])(keys)),
                               np.array([0.5, 0.3, 0.15, 0]) / 0.95, atol=0.03)
    # temperature 2: probabilities ∝ p^(1/2)
    p = np.sqrt([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(freq(jax.vmap(lambda k: sample_logits(logits, k, 2.0)[0])(keys)), p / p.sum(),
                               atol=0.03)


def test_rows_keep_emitting_eos(gpt):
    """With an eos id, a row's tokens are those drawn without one (same key) up to its first eos, then eos."""
    prompt = np.arange(2 * PROMPT_LEN, dtype=np.int32).reshape(2, PROMPT_LEN)
    kw = dict(max_new_tokens=NEW, temperature=1.0, key=jax.random.key(7))
    free = np.asarray(aj.generate(gpt, prompt, **kw))
    row0 = free[0, PROMPT_LEN:]
    # an eos that row 0 draws at step j and follows with other tokens (so that stopping shows)
    j = next(j for j in range(NEW - 1) if (row0[j + 1 :] != row0[j]).any())
    eos = int(row0[j])
    out = np.asarray(aj.generate(gpt, prompt, eos_id=eos, **kw))
    for row in range(2):
        new, ref = out[row, PROMPT_LEN:], free[row, PROMPT_LEN:]
        hits = np.flatnonzero(ref == eos)
        stop = hits[0] if hits.size else NEW
        np.testing.assert_array_equal(new[: stop + 1], ref[: stop + 1])  # identical up to the first eos
        assert (new[stop:] == eos).all()
    assert (out[0, PROMPT_LEN + j :] == eos).all() and (free[0, PROMPT_LEN + j :] != eos).any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=-1), "max_new_tokens=-1"),
        (dict(max_new_tokens=30), "exceeds the model's max_seq_len=32"),
        (dict(max_new_tokens=2, top_p=0.0), r"top_p=0.0 must be None or in \(0, 1\]"),
        (dict(max_new_tokens=2, top_p=1.5), r"top_p=1.5"),
        (dict(max_new_tokens=2, top_k=0), "top_k=0"),
        (dict(max_new_tokens=2, temperature=-1.0), "temperature=-1.0"),
        (dict(max_new_tokens=2, eos_id=48), "eos_id=48"),
        (dict(max_new_tokens=2, temperature=1.0, key=None), "needs a PRNG key"),
    ],
)
def test_bad_arguments_are_one_clear_value_error(gpt, kwargs, match):
    args = {"temperature": 0.0, "key": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        aj.generate(gpt, np.zeros((1, PROMPT_LEN), np.int32), **args)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        aj.generate(gpt, np.full((1, 3), 48, np.int32), max_new_tokens=1, temperature=0.0, key=None)


class _Letters:
    """A stand-in tokenizer over the model's 48 ids: id 0 ends a text, ids 1..47 are characters."""

    eos_id, vocab_size = 0, 48
    chars = "".join(chr(ord("a") + i) for i in range(26)) + "ABCDEFGHIJKLMNOPQRSTU"

    def encode(self, text):
        return [self.chars.index(ch) + 1 for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i - 1] for i in ids if i != self.eos_id)


def test_stream_and_text_follow_generate(gpt):
    """generate_stream yields the first token, then chunks (4, then the remainder 1); generate_text writes the
    prompt and the decoded tokens up to the end-of-text id, i.e. what `generate` produces."""
    tok = _Letters()
    prompt = np.asarray([tok.encode("hello")], np.int32)
    ref = np.asarray(aj.generate(gpt, prompt, max_new_tokens=NEW, temperature=0.0, key=None, eos_id=0))[0, 5:]
    chunks = list(generate_stream(gpt, prompt, max_new_tokens=NEW, temperature=0.0, key=None, eos_id=0, chunk=4))
    if 0 not in ref[:-1]:
        assert [c.shape[1] for c in chunks] == [1, 4, 1]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1)[0], ref[: sum(c.shape[1] for c in chunks)])
    out = io.StringIO()
    text = generate_text(gpt, tok, "hello", out=out, max_new_tokens=NEW, temperature=0.0, key=None, chunk=4)
    assert text == tok.decode(ref[: np.flatnonzero(np.r_[ref, 0] == 0)[0]])
    assert out.getvalue() == "hello" + text


def test_cli_generate_reports_a_missing_run(tmp_path, capsys):
    from attractor_jax.cli import main

    assert main(["generate", "--workdir", str(tmp_path / "none"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "none" in err
