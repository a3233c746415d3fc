"""The paper's evaluations of a run directory's newest checkpoint, as `attractor-jax eval --data/--task` runs
them: results written atomically to ``WORKDIR/eval/<task>-<data name>.json`` and summarised as one table."""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

from attractor_jax.models.registry import check_depths, has_depth, is_reasoner

__all__ = ["TASKS", "evaluate_text", "format_table", "summary"]

TASKS = ("perplexity", "lambada")


def result_name(task: str, data: str) -> str:
    """``<task>-<data name>``: the data's file or folder name without suffixes (or the hub dataset's
    ``OWNER_NAME``), in characters safe for a file name."""
    if data.startswith("hf://"):
        stem = data[len("hf://"):]
    else:
        stem = pathlib.Path(data.rstrip("/")).name.split(".")[0] or "data"
    return f"{task}-{re.sub(r'[^A-Za-z0-9_-]+', '_', stem).strip('_') or 'data'}"


def evaluate_text(workdir: str | os.PathLike, data: str, *, task: str = "perplexity",
                  depths: list[int | None] | None = None, batch_size: int | None = None,
                  max_documents: int | None = None, progress: bool = True, run=None) -> tuple[dict, pathlib.Path]:
    """Run ``task`` (perplexity or lambada) on ``data`` with the newest checkpoint of the language model in
    ``workdir`` at each depth (default: the run's ``eval_depths`` and the full solve; a GPT has only 'full').
    ``run``: the workdir's `RunConfig` when the caller has read it already (`trainer.read_run`).
    Returns ``(results, path of the JSON written)``. Bad input raises before anything is written."""
    from attractor_jax.data.text import resolve_text_files
    from attractor_jax.data.tokenizers import make_tokenizer
    from attractor_jax.eval.lambada import lambada, read_lambada
    from attractor_jax.eval.perplexity import perplexity
    from attractor_jax.train.rundir import write_json_atomic
    from attractor_jax.train.trainer import load_model, read_run

    if task not in TASKS:
        raise ValueError(f"--task {task!r} is unknown: expected one of {', '.join(TASKS)}")
    wd = pathlib.Path(workdir)
    run = read_run(wd) if run is None else run
    if is_reasoner(run.model):
        raise ValueError(f"workdir {str(wd)!r} holds a puzzle reasoner ({type(run.model).__name__}): --task {task} "
                         "needs a language model")
    if depths is None:
        depths = [*run.train.eval_depths, None] if has_depth(run.model) else [None]
    depths = check_depths(run.model, depths)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} must be >= 1")
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"--max-docs {max_documents} must be >= 1")
    texts = read_lambada(data) if task == "lambada" else None
    if texts is None and not str(data).startswith("hf://"):
        resolve_text_files(data)  # a missing or unsupported path fails before the checkpoint is read
    model, run, step = load_model(wd, run)
    tok = make_tokenizer(run.data.tokenizer)
    common = dict(seq_len=run.train.seq_len, depths=depths, batch_size=batch_size or run.train.batch_size,
                  progress=progress)
    if texts is not None:
        res = lambada(model, tok, texts[:max_documents], **common)
    else:
        res = perplexity(model, tok, data, text_field=run.data.text_field, max_documents=max_documents, **common)
    res = {"step": step, "workdir": str(wd), "model": run.model.name, "data": str(data), **res}
    out = wd / "eval" / f"{result_name(task, str(data))}.json"
    out.parent.mkdir(exist_ok=True)
    write_json_atomic(out, res)
    return res, out


def _fmt(r: dict, key: str, width: int, spec: str) -> str:
    return format(r[key], f"{width}{spec}") if key in r else "-".rjust(width)


def format_table(res: dict) -> str:
    """One table of a result of `evaluate_text` (a row per depth)."""
    if res["task"] == "lambada":
        lines = [f"step {res['step']}: LAMBADA on {res['data']} ({res['examples']} examples, "
                 f"{res['target_tokens']} target tokens; ppl is per target word)",
                 f"  {'depth':>5s}  {'ppl':>10s}  {'ppl/token':>10s}  {'acc':>6s}  {'f-evals/token':>13s}"]
        for label, r in res["depths"].items():
            lines.append(f"  {label:>5s}  {r['ppl']:10.5g}  {r['ppl_per_token']:10.5g}  {r['acc']:6.3f}  "
                         f"{_fmt(r, 'f_evals_per_token', 13, '.2f')}")
        return "\n".join(lines)
    lines = [f"step {res['step']}: perplexity on {res['data']} ({res['documents']} documents, "
             f"{res['tokens']} tokens, {res['bytes']} bytes; windows of {res['seq_len']})",
             f"  {'depth':>5s}  {'loss':>8s}  {'ppl':>10s}  {'bits/byte':>9s}  {'byte ppl':>8s}  "
             f"{'f-evals/token':>13s}"]
    for label, r in res["depths"].items():
        lines.append(f"  {label:>5s}  {r['loss']:8.4f}  {r['ppl']:10.5g}  {r['bits_per_byte']:9.4f}  "
                     f"{r['byte_ppl']:8.4f}  {_fmt(r, 'f_evals_per_token', 13, '.2f')}")
    return "\n".join(lines)


def summary(res: dict[str, Any], path: pathlib.Path) -> str:
    """The table and where the results were written."""
    return format_table(res) + f"\nwrote {path}"
