"""Perplexity of a language model on any text, per token and per byte, at each solver depth.

Every document is scored on its own. Its tokens follow one EOS (the separator the models are trained with,
here in the role of a beginning-of-document token), and that sequence is cut into consecutive,
non-overlapping windows of the model's context length ``seq_len`` (the last one padded and masked). So each
token of the document is predicted exactly once, from at most ``seq_len`` tokens of its own document, and the
EOS that would follow the document is not scored. The totals are summed in float64 on the host:

    nats/token = Σ nats / Σ tokens                      ppl      = exp(nats/token)
    nats/byte  = Σ nats / Σ UTF-8 bytes of the documents  byte ppl = exp(nats/byte),  bits/byte = nats/byte / ln 2

Per byte is the tokenizer-independent figure (the reference's ``bpb``): models with different vocabularies
compare on it. ``f_evals_per_token`` is the mean work of the depth per scored token: the attractor head's
solver f-evaluations (per token, as the solver reports them), or Parcae's core recurrences; a GPT has none.

Depths are ``max_iter`` values (None = the configured full solve / ``mean_recurrence``). Padding sits after the
real tokens of a window, and the per-token solve is exactly causal, so it changes no scored token (with
``solve_mixing="sequence"`` the padded positions share the sequence's mixing and exit test, as in any batch).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attractor_jax.progress import Progress
from attractor_jax.data.text import iter_documents
from attractor_jax.data.tokenizers import Tokenizer
from attractor_jax.models.registry import check_depths, depth_label

__all__ = ["document_windows", "pack_rows", "perplexity", "token_scorer"]

Scorer = Callable[[np.ndarray, np.ndarray, "int | None"], dict[str, np.ndarray]]


def _f_evals(aux: dict, shape: tuple[int, int]) -> jax.Array | None:
    if "iterations" in aux:  # attractor head: f-evaluations per token
        return aux["iterations"].astype(jnp.float32)
    if "depth" in aux:  # Parcae: core recurrences per sequence
        return jnp.broadcast_to(aux["depth"].astype(jnp.float32)[:, None], shape)
    return None


@functools.lru_cache(maxsize=8)
def _jitted_score(graphdef):
    """The jitted scoring function of one model structure (cached, so that several evaluations of a model in
    one process compile each shape and depth once)."""

    def score(state, inputs_BT, targets_BT, max_iter):
        logits_BTV, aux = nnx.merge(graphdef, state)(inputs_BT, max_iter=max_iter)
        logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
        out = {"nll": -jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0],
               "hit": jnp.argmax(logits_BTV, axis=-1) == targets_BT}
        fe = _f_evals(aux, inputs_BT.shape)
        if fe is not None:
            out["f_evals"] = fe
        return out

    return jax.jit(score, static_argnums=(3,))


def token_scorer(model: nnx.Module) -> Scorer:
    """``score(inputs_BT, targets_BT, max_iter) -> {"nll", "hit", ["f_evals"]}`` as numpy ``[B, T]``: the
    negative log-likelihood (nats, float32) of each target, whether it is the greedy (argmax) prediction, and
    the work spent on each position. Jitted once per model structure, shape and depth."""
    graphdef, state = nnx.split(model)
    jitted = _jitted_score(graphdef)

    def run(inputs_BT: np.ndarray, targets_BT: np.ndarray, max_iter: int | None) -> dict[str, np.ndarray]:
        return jax.device_get(jitted(state, jnp.asarray(inputs_BT, jnp.int32), jnp.asarray(targets_BT, jnp.int32),
                                     max_iter))

    return run


def document_windows(ids: Sequence[int], eos_id: int, seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(inputs, targets)`` windows of one document: ``[eos] + ids`` cut every ``seq_len`` tokens, so the
    targets of the windows are ``ids`` exactly, each predicted once. The last window may be shorter."""
    seq = np.concatenate([[eos_id], np.asarray(ids, np.int64)]).astype(np.int32)
    return [(seq[s:s + seq_len], seq[s + 1:s + 1 + seq_len]) for s in range(0, len(seq) - 1, seq_len)]


def pack_rows(rows: Sequence[tuple[np.ndarray, np.ndarray]], batch: int, seq_len: int, pad_id: int):
    """Right-padded ``inputs_BT, targets_BT, mask_BT`` (mask: a real target) of up to ``batch`` rows; missing
    rows are all padding, so every batch has the one compiled shape."""
    inputs = np.full((batch, seq_len), pad_id, np.int32)
    targets = np.zeros((batch, seq_len), np.int32)
    mask = np.zeros((batch, seq_len), bool)
    for i, (x, y) in enumerate(rows):
        inputs[i, :len(x)], targets[i, :len(y)], mask[i, :len(y)] = x, y, True
    return inputs, targets, mask


def _read_windows(data: Any, tokenizer: Tokenizer, seq_len: int, text_field: str, max_documents: int | None):
    """All windows of the source's documents, with the document, token and UTF-8 byte counts."""
    windows: list[tuple[np.ndarray, np.ndarray]] = []
    docs = tokens = nbytes = 0
    for text in iter_documents(data, text_field=text_field):
        if max_documents is not None and docs >= max_documents:
            break
        ids = tokenizer.encode(text)
        if not ids:
            continue
        windows.extend(document_windows(ids, tokenizer.eos_id, seq_len))
        docs, tokens, nbytes = docs + 1, tokens + len(ids), nbytes + len(text.encode("utf-8"))
    if not docs:
        raise ValueError(f"data {str(data)!r} contains no text to score (every document is empty)")
    return windows, docs, tokens, nbytes


def perplexity(model: nnx.Module, tokenizer: Tokenizer, data: Any, *, seq_len: int,
               depths: Iterable[int | None] = (None,), batch_size: int = 8, text_field: str = "text",
               max_documents: int | None = None, progress: bool = True) -> dict:
    """Perplexity per token and per byte of ``model`` on the documents of ``data`` (a file, folder, glob or
    ``hf://`` spec) at each depth, with f-evaluations per token. Returns a JSON-ready dict (see the module
    docstring); one pass over the data scores every depth."""
    depths = check_depths(model.config, depths)
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be >= 1")
    windows, docs, tokens, nbytes = _read_windows(data, tokenizer, seq_len, text_field, max_documents)
    batch_size = min(batch_size, len(windows))
    score = token_scorer(model)
    sums = {d: {"nats": 0.0, "f_evals": 0.0, "has_f": False} for d in depths}
    bar = Progress(math.ceil(len(windows) / batch_size), "batches", enabled=progress)
    try:
        for b in range(0, len(windows), batch_size):
            x, y, m = pack_rows(windows[b:b + batch_size], batch_size, seq_len, tokenizer.eos_id)
            for d in depths:
                out = score(x, y, d)
                sums[d]["nats"] += float(np.sum(out["nll"].astype(np.float64)[m]))
                if "f_evals" in out:
                    sums[d]["f_evals"] += float(np.sum(out["f_evals"].astype(np.float64)[m]))
                    sums[d]["has_f"] = True
            bar.update()
    finally:
        bar.close()
    res = {}
    for d, s in sums.items():
        per_tok, per_byte = s["nats"] / tokens, s["nats"] / nbytes
        r = {"nats": s["nats"], "loss": per_tok, "ppl": math.exp(min(per_tok, 700.0)),
             "nats_per_byte": per_byte, "bits_per_byte": per_byte / math.log(2),
             "byte_ppl": math.exp(min(per_byte, 700.0))}
        if s["has_f"]:
            r["f_evals_per_token"] = s["f_evals"] / tokens
        res[depth_label(d)] = r
    return {"task": "perplexity", "data": str(data), "documents": docs, "tokens": tokens, "bytes": nbytes,
            "seq_len": seq_len, "tokenizer": getattr(tokenizer, "spec", repr(tokenizer)), "depths": res}
