"""LAMBADA as the paper's Table 1 reports it: perplexity of the final word, plus last-word accuracy.

Data: the standard jsonl layout, one ``{"text": ...}`` object a line (e.g. ``lambada_openai``'s
``lambada_test_en.jsonl``). The target is the last whitespace-delimited word of the (right-stripped) text;
the context is everything before it, *including* the whitespace. The whole text is tokenised once, after one
EOS (the models' beginning-of-document token, as in `attractor_jax.eval.perplexity`), and the target is the
trailing tokens not wholly inside the context: with a byte tokenizer the word's bytes; with a BPE/SentencePiece
tokenizer that merges the space into the word's first token, that token (as lm-eval-harness's split, which
puts the space in the continuation, gives). Every target token is scored; a context longer than the model's
window loses its oldest tokens.

Metrics per depth, over N examples with target log-likelihood ℓᵢ (nats, summed over the word's tokens):

    ppl            = exp(−Σ ℓᵢ / N)          per target *word*: lm-eval-harness's ``lambada_openai`` perplexity,
                                              which the paper reports (0-shot) in Table 1
    ppl_per_token  = exp(−Σ ℓᵢ / Σ tokens)   per target token, for reference
    acc            = fraction of examples whose every target token is the greedy (argmax) prediction

and ``f_evals_per_token``, the depth's work per position over every scored position (context and word).

The paper's table uses lm-eval's split, whose continuation is " word" (the space is scored too). For
tokenizers that merge the space into the word both splits coincide; a byte-level model here is scored on the
word's bytes only (the brief's definition), so its numbers are not those of lm-eval's byte-level split.
"""

from __future__ import annotations

import math
import pathlib
import re
from typing import Iterable

import numpy as np
from flax import nnx

from attractor_jax.progress import Progress
from attractor_jax.data.text import jsonl_field
from attractor_jax.data.tokenizers import Tokenizer
from attractor_jax.eval.perplexity import pack_rows, token_scorer
from attractor_jax.models.registry import check_depths, depth_label

__all__ = ["lambada", "read_lambada", "split_last_word", "target_split"]

_LAST_WORD = re.compile(r"\s(\S+)$")


def read_lambada(path: str | pathlib.Path) -> list[str]:
    """The texts of a LAMBADA-format jsonl file; ValueError naming the line for anything else (not an object,
    no string "text", or a text without a context before its last word)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"LAMBADA file {str(p)!r} does not exist (expected a .jsonl of {{\"text\": ...}})")
    texts = []
    for lineno, text in jsonl_field(p, "text"):
        if not isinstance(text, str):
            raise ValueError(f"{p}:{lineno}: expected a JSON object with a string field 'text'")
        split_last_word(text, where=f"{p}:{lineno}")
        texts.append(text)
    if not texts:
        raise ValueError(f"LAMBADA file {str(p)!r} has no examples")
    return texts


def split_last_word(text: str, where: str = "text") -> tuple[str, str]:
    """``(context, word)``: the right-stripped text cut before its last whitespace-delimited word (the context
    keeps the whitespace)."""
    m = _LAST_WORD.search(text.rstrip())
    if m is None or not text[:m.start(1)].strip():
        raise ValueError(f"{where}: expected a context followed by a last word, got {text[:60]!r}")
    return text[:m.start(1)], m.group(1)


def target_split(tokenizer: Tokenizer, text: str) -> tuple[list[int], int]:
    """``(ids, k)``: the tokens of the right-stripped text and the number of leading tokens that decode to a
    prefix of the context; the remaining ``len(ids) - k`` tokens are the target (the last word)."""
    context, _ = split_last_word(text)
    ids = tokenizer.encode(text.rstrip())
    k = len(ids) - 1
    context = context.lstrip()  # some decoders drop a leading space
    while k > 0 and not context.startswith(tokenizer.decode(ids[:k]).lstrip()):
        k -= 1
    return ids, k


def _rows(tokenizer: Tokenizer, texts: list[str], seq_len: int):
    """Per example: the (inputs, targets) row (left-truncated to ``seq_len``) and its number of targets."""
    rows = []
    for i, text in enumerate(texts):
        ids, k = target_split(tokenizer, text)
        n = len(ids) - k
        if n > seq_len:
            raise ValueError(f"example {i}: its last word is {n} tokens, more than the context length {seq_len}")
        seq = np.asarray([tokenizer.eos_id, *ids], np.int32)[-(seq_len + 1):]
        rows.append(((seq[:-1], seq[1:]), n))
    return rows


def lambada(model: nnx.Module, tokenizer: Tokenizer, texts: list[str], *, seq_len: int,
            depths: Iterable[int | None] = (None,), batch_size: int = 8, progress: bool = True) -> dict:
    """Final-word perplexity and last-word accuracy of ``model`` on LAMBADA-format ``texts`` at each depth
    (see the module docstring); JSON-ready."""
    depths = check_depths(model.config, depths)
    rows = _rows(tokenizer, texts, seq_len)
    batch_size = max(1, min(batch_size, len(rows)))
    score = token_scorer(model)
    nll = {d: np.zeros(len(rows)) for d in depths}
    hit = {d: np.zeros(len(rows), bool) for d in depths}
    fev = {d: [0.0, 0, False] for d in depths}
    bar = Progress(math.ceil(len(rows) / batch_size), "batches", enabled=progress)
    try:
        for b in range(0, len(rows), batch_size):
            chunk = rows[b:b + batch_size]
            x, y, m = pack_rows([r for r, _ in chunk], batch_size, seq_len, tokenizer.eos_id)
            for d in depths:
                out = score(x, y, d)
                for i, ((_, tgt), n) in enumerate(chunk):
                    span = slice(len(tgt) - n, len(tgt))
                    nll[d][b + i] = float(np.sum(out["nll"][i, span].astype(np.float64)))
                    hit[d][b + i] = bool(np.all(out["hit"][i, span]))
                if "f_evals" in out:
                    fev[d] = [fev[d][0] + float(np.sum(out["f_evals"][m])), fev[d][1] + int(m.sum()), True]
            bar.update()
    finally:
        bar.close()
    n_tokens = sum(n for _, n in rows)
    res = {}
    for d in depths:
        total = float(np.sum(nll[d]))
        r = {"ppl": math.exp(min(total / len(rows), 700.0)), "ppl_per_token": math.exp(min(total / n_tokens, 700.0)),
             "acc": float(np.mean(hit[d])), "nats_per_word": total / len(rows)}
        if fev[d][2]:
            r["f_evals_per_token"] = fev[d][0] / fev[d][1]
        res[depth_label(d)] = r
    return {"task": "lambada", "examples": len(rows), "target_tokens": n_tokens, "seq_len": seq_len,
            "tokenizer": getattr(tokenizer, "spec", repr(tokenizer)), "depths": res}
