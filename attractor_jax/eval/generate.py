"""Text generation: one prefill of the prompt, then one-token decode steps, every attention layer with a KV cache.

The models' incremental forward is ``model.init_cache(batch, max_len, max_iter)`` and ``model.extend(tokens,
cache)`` (GPT; Parcae with one cache per core block and recurrence step; the Attractor's backbone plus its
*equilibrium* head cache, see `attractor_jax.models.attractor`). Here they are driven by a jitted prefill and a
``lax.scan`` of decode steps, compiled once per (shape, sampling settings):

    tokens = aj.generate(model, prompt_BT, max_new_tokens=64, temperature=0.8, top_k=50, key=jax.random.key(0))

Sampling: ``temperature`` 0 is greedy (argmax); otherwise logits / temperature, restricted to the ``top_k``
largest and then to the smallest set whose probability reaches ``top_p`` (nucleus), then a categorical draw.
Once a row emits ``eos_id`` it keeps emitting it. For the Attractor, each generated token's solver iterations
come back with ``return_stats=True`` (the iterations of the solve whose logits chose that token).

The cache reproduces recomputing the whole sequence at every step: exactly for GPT and Parcae (see
`attractor_jax.models.parcae` for its random initial state), and for the Attractor to the solver's tolerance
when the solve converges (a past token's fixed point does not depend on later tokens). With ``max_iter`` 1 or
2 (plain steps, not a solve) a new token iterates against the prefix's returned states instead of the
matching iterates, so there the two differ.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["generate", "generate_stream", "sample_logits", "prefill", "decode"]


@dataclasses.dataclass(frozen=True)
class _Options:
    """Static settings of one compiled generation function (hashable)."""

    temperature: float
    top_k: int | None
    top_p: float | None
    eos_id: int | None
    max_iter: int | None
    tol: float | None


def sample_logits(
    logits_BV: jax.Array, key: jax.Array | None, temperature: float, top_k: int | None = None,
    top_p: float | None = None,
) -> jax.Array:
    """One token per row, int32 ``[B]``: greedy for temperature 0, else a draw from the (top-k, top-p
    truncated) softmax of ``logits / temperature``."""
    logits_BV = logits_BV.astype(jnp.float32)
    if temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    x = logits_BV / temperature
    if top_k is not None and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][:, -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if top_p is not None and top_p < 1.0:
        srt = -jnp.sort(-x, axis=-1)
        probs = jax.nn.softmax(srt, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass of the strictly larger tokens
        n_keep = jnp.sum(before < top_p, axis=-1, keepdims=True)  # >= 1: the first token has 0 before it
        cut = jnp.take_along_axis(srt, n_keep - 1, axis=-1)
        x = jnp.where(x < cut, -jnp.inf, x)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


def _iterations(aux: dict, batch: int) -> jax.Array:
    """Solver iterations of the last position, int32 ``[B]`` (zeros for models without a solve)."""
    it = aux.get("iterations")
    return jnp.zeros((batch,), jnp.int32) if it is None else it[:, -1].astype(jnp.int32)


def _choose(logits_B1V, key, done_B, opts: _Options):
    """Sample the next token and apply the end-of-sequence rule."""
    key, sub = jax.random.split(key)
    tok = sample_logits(logits_B1V[:, -1], sub, opts.temperature, opts.top_k, opts.top_p)
    if opts.eos_id is not None:
        tok = jnp.where(done_B, opts.eos_id, tok)
        done_B = done_B | (tok == opts.eos_id)
    return tok, key, done_B


def prefill(model, tokens_BT: jax.Array, max_len: int, *, max_iter=None, tol=None):
    """Run the prompt through a fresh cache of ``max_len`` positions: ``(last logits [B, 1, V], cache, aux)``."""
    cache = model.init_cache(tokens_BT.shape[0], max_len, max_iter)
    return model.extend(tokens_BT, cache, max_iter, tol, last_only=True)


def decode(model, tokens_B: jax.Array, cache: dict, *, max_iter=None, tol=None):
    """One decode step: ``(logits [B, 1, V], cache, aux)`` for one new token per row."""
    return model.extend(tokens_B[:, None], cache, max_iter, tol)


def _prefill_step(graphdef, state, prompt_BT, key, max_len: int, opts: _Options):
    model = nnx.merge(graphdef, state)
    b = prompt_BT.shape[0]
    logits, cache, aux = prefill(model, prompt_BT, max_len, max_iter=opts.max_iter, tol=opts.tol)
    tok, key, done = _choose(logits, key, jnp.zeros((b,), bool), opts)
    return tok, done, cache, key, (_iterations(aux, b), logits[:, -1])


def _decode_steps(graphdef, state, tok_B, done_B, cache, key, n: int, opts: _Options, with_logits: bool = False):
    """``n`` decode steps in one ``lax.scan``: each feeds the previous token and samples the next. Returns the
    tokens ``[B, n]``, the stats (iterations ``[B, n]``, and logits ``[B, n, V]`` or None) and the carry."""
    model = nnx.merge(graphdef, state)

    def step(carry, _):
        tok, done, cache, key = carry
        logits, cache, aux = decode(model, tok, cache, max_iter=opts.max_iter, tol=opts.tol)
        tok, key, done = _choose(logits, key, done, opts)
        return (tok, done, cache, key), (tok, _iterations(aux, tok.shape[0]), logits[:, 0] if with_logits else None)

    (tok_B, done_B, cache, key), (toks_NB, iters_NB, logits_NBV) = jax.lax.scan(
        step, (tok_B, done_B, cache, key), None, length=n
    )
    logits = None if logits_NBV is None else logits_NBV.transpose(1, 0, 2)
    return toks_NB.T, (iters_NB.T, logits), tok_B, done_B, cache, key


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len", "n", "opts", "with_logits"))
def _generate_jit(graphdef, state, prompt_BT, key, max_len: int, n: int, opts: _Options, with_logits: bool):
    tok, done, cache, key, (it0, logits0) = _prefill_step(graphdef, state, prompt_BT, key, max_len, opts)
    toks, (iters, logits), *_ = _decode_steps(graphdef, state, tok, done, cache, key, n - 1, opts, with_logits)
    stats = {"iterations": jnp.concatenate([it0[:, None], iters], axis=1)}
    if with_logits:
        stats["logits"] = jnp.concatenate([logits0[:, None], logits], axis=1)
    return jnp.concatenate([prompt_BT, tok[:, None], toks], axis=1), stats


_prefill_jit = jax.jit(_prefill_step, static_argnames=("graphdef", "max_len", "opts"))
_decode_jit = jax.jit(_decode_steps, static_argnames=("graphdef", "n", "opts", "with_logits"),
                      donate_argnames=("cache",))


def _check(model, prompt_BT, max_new_tokens, temperature, top_k, top_p, key, eos_id, max_iter) -> np.ndarray:
    """Validate the arguments on the host; returns the prompt as an int32 array."""
    cfg = model.config
    if not hasattr(model, "extend"):
        raise ValueError(f"generate: {type(model).__name__} has no cached forward (a language model expected)")
    prompt = np.asarray(prompt_BT)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"generate: prompt_tokens_BT must be integer tokens [batch, T >= 1], got "
                         f"{prompt.dtype} {prompt.shape}")
    if prompt.min() < 0 or prompt.max() >= cfg.vocab_size:
        bad = int(prompt[(prompt < 0) | (prompt >= cfg.vocab_size)][0])
        raise ValueError(f"generate: token id {bad} is outside the vocabulary [0, {cfg.vocab_size})")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens!r} must be an int >= 0")
    if prompt.shape[1] + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"generate: prompt of {prompt.shape[1]} tokens + max_new_tokens={max_new_tokens} exceeds "
                         f"the model's max_seq_len={cfg.max_seq_len}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"generate: temperature={temperature!r} must be a finite number >= 0")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"generate: top_k={top_k!r} must be None or an int >= 1")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"generate: top_p={top_p!r} must be None or in (0, 1]")
    if eos_id is not None and not (isinstance(eos_id, (int, np.integer)) and 0 <= eos_id < cfg.vocab_size):
        raise ValueError(f"generate: eos_id={eos_id!r} must be None or a token id in [0, {cfg.vocab_size})")
    if max_iter is not None and (not isinstance(max_iter, (int, np.integer)) or max_iter < 0):
        raise ValueError(f"generate: max_iter={max_iter!r} must be None or an int >= 0")
    if key is None and temperature > 0:
        raise ValueError("generate: sampling (temperature > 0) needs a PRNG key (key=jax.random.key(seed))")
    return prompt.astype(np.int32)


def _options(temperature, top_k, top_p, eos_id, max_iter, tol) -> _Options:
    return _Options(float(temperature), None if top_k is None else int(top_k),
                    None if top_p is None else float(top_p), None if eos_id is None else int(eos_id),
                    None if max_iter is None else int(max_iter), None if tol is None else float(tol))


def generate(
    model,
    prompt_tokens_BT: Any,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    key: jax.Array | None,
    eos_id: int | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    return_stats: bool = False,
):
    """Continue every prompt row by ``max_new_tokens`` tokens: int32 ``[B, T + N]`` (prompt included).

    key: PRNG key of the draws (may be None for greedy decoding). max_iter / tol: solver depth and tolerance
    (Attractor) or recurrence depth (Parcae), as in the models' forward. With ``return_stats`` also returns
    ``{"iterations": int32 [B, N], "logits": float32 [B, N, V]}``: the solver iterations (zeros without a
    solve) and the logits behind each generated token.
    """
    prompt = _check(model, prompt_tokens_BT, max_new_tokens, temperature, top_k, top_p, key, eos_id, max_iter)
    b, t = prompt.shape
    if max_new_tokens == 0:
        out = jnp.asarray(prompt)
        stats = {"iterations": jnp.zeros((b, 0), jnp.int32),
                 "logits": jnp.zeros((b, 0, model.config.vocab_size), jnp.float32)}
        return (out, stats) if return_stats else out
    graphdef, state = nnx.split(model)
    key = jax.random.key(0) if key is None else key
    opts = _options(temperature, top_k, top_p, eos_id, max_iter, tol)
    tokens, stats = _generate_jit(graphdef, state, jnp.asarray(prompt), key, t + max_new_tokens,
                                  int(max_new_tokens), opts, bool(return_stats))
    return (tokens, stats) if return_stats else tokens


def generate_stream(
    model,
    prompt_tokens_BT: Any,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    key: jax.Array | None,
    eos_id: int | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    chunk: int = 8,
) -> Iterator[np.ndarray]:
    """`generate`, yielding the new tokens as they are produced: int32 arrays ``[B, k]`` (the first token, then
    chunks of up to ``chunk``), stopping early once every row has emitted ``eos_id``. Each chunk is one jitted
    ``lax.scan``; the sampling, key schedule and cache size are `generate`'s, so the same key gives the same
    tokens (up to floating-point reassociation between the compiled programs)."""
    prompt = _check(model, prompt_tokens_BT, max_new_tokens, temperature, top_k, top_p, key, eos_id, max_iter)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"generate_stream: chunk={chunk!r} must be an int >= 1")
    if max_new_tokens == 0:
        return
    b, t = prompt.shape
    graphdef, state = nnx.split(model)
    key = jax.random.key(0) if key is None else key
    opts = _options(temperature, top_k, top_p, eos_id, max_iter, tol)
    tok, done, cache, key, _ = _prefill_jit(graphdef, state, jnp.asarray(prompt), key, t + max_new_tokens, opts)
    yield np.asarray(tok)[:, None]
    left = max_new_tokens - 1  # whole chunks, then one shorter chunk (a second compile) for the remainder
    while left > 0 and not (eos_id is not None and bool(np.all(np.asarray(done)))):
        n = min(chunk, left)
        toks, _, tok, done, cache, key = _decode_jit(graphdef, state, tok, done, cache, key, n, opts)
        yield np.asarray(toks)
        left -= n


def run_tokenizer(run) -> Any:
    """The tokenizer a run directory's config names (``data.tokenizer``: byte, SentencePiece or HF JSON)."""
    from attractor_jax.data import make_tokenizer

    if str(run.data.path).startswith("seqio:"):
        raise ValueError(f"generate: run data {run.data.path!r} is a seqio task; its vocabulary is not a tokenizer "
                         "generate can load (use a run trained on text with data.tokenizer)")
    return make_tokenizer(run.data.tokenizer)


def generate_text(model, tokenizer, prompt: str, *, out=None, chunk: int = 8, **kwargs) -> str:
    """Continue ``prompt`` (one sequence), writing the prompt and then the new text to ``out`` (a text stream,
    e.g. sys.stdout) as it is produced; returns the new text. Stops at the tokenizer's end-of-text token.
    ``kwargs`` are `generate_stream`'s (max_new_tokens, temperature, top_k, top_p, key, max_iter, tol)."""
    ids = tokenizer.encode(prompt) or [tokenizer.eos_id]  # an empty prompt starts a new document
    new: list[int] = []
    shown = ""
    for i, toks in enumerate(generate_stream(model, np.asarray([ids], np.int32), eos_id=tokenizer.eos_id,
                                             chunk=chunk, **kwargs)):
        if i == 0 and out is not None:  # the arguments have been checked: echo the prompt
            out.write(prompt)
        new.extend(int(t) for t in toks[0] if t != tokenizer.eos_id)
        text = tokenizer.decode(new).rstrip("\ufffd")  # hold back a multi-byte character cut in half
        if out is not None and text.startswith(shown) and len(text) > len(shown):
            out.write(text[len(shown):])
            out.flush()
            shown = text
    text = tokenizer.decode(new)
    if out is not None:
        out.write(text[len(shown):] if text.startswith(shown) else "")
        out.flush()
    return text
