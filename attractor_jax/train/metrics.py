"""Run metrics: one JSON object per logged step in ``metrics.jsonl`` and TensorBoard scalars, plus FLOP/MFU
estimates that count the attractor solver's f-evaluations.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import numpy as np

# Peak dense bf16 FLOP/s per chip, for MFU; unknown kinds (e.g. CPUs) report no MFU.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def peak_flops(device_kind: str) -> float | None:
    for name, flops in PEAK_FLOPS.items():
        if device_kind.startswith(name) or name in device_kind:
            return flops
    return None


def flops_per_token(model_config: Any, counts: Mapping[str, Any], seq_len: int,
                    f_evals: float = 0.0, backward_vjps: float = 1.0) -> float:
    """Estimated training FLOPs per token (matmuls only; value-embedding tables cost a lookup, not FLOPs).

    * explicitly backpropagated weights (backbone, the tied unembedding): 6 N;
    * a Parcae core: 6 N_core per recurrence with gradient (``mean_backprop_depth``) and 2 N_core per recurrence
      without (``mean_recurrence - mean_backprop_depth``);
    * an attractor head: 2 N_h per forward f-evaluation (``f_evals``, measured: the batch's largest per-token
      count, since every token is evaluated until the last one exits), 2 N_h for the evaluation at
      y* kept for the backward, and 4 N_h per VJP in the backward (``backward_vjps``: Neumann k + 1, Phantom k,
      IFT iterations + 1);
    * causal attention scores and values: 2 · 2 · T · d / 2 per layer per forward pass, scaled likewise.

    ``counts`` is ``models.param_counts(cfg)`` (its ``split`` and ``detail``).
    """
    d = model_config.d_model
    split, detail = counts["split"], counts.get("detail", {})
    attn_fwd = 2 * 2 * seq_len * d / 2  # per layer, per token
    core = detail.get("core", 0)
    rec = getattr(model_config, "mean_recurrence", 0) if core else 0
    grad_rec = min(getattr(model_config, "mean_backprop_depth", 0), rec) if core else 0
    dense = split.get("backbone", 0) - core + split.get("embedding", 0)
    n_layers = sum(getattr(model_config, k, 0) for k in ("n_layers", "n_backbone_layers", "n_prelude", "n_coda"))
    total = 6 * dense + 3 * attn_fwd * n_layers
    if core:
        n_core = getattr(model_config, "n_core", 1)
        total += (6 * core + 3 * attn_fwd * n_core) * grad_rec + (2 * core + attn_fwd * n_core) * (rec - grad_rec)
    head = split.get("head", 0)
    if head:
        n_fp = getattr(model_config, "n_fp_blocks", 1)
        total += (2 * head + attn_fwd * n_fp) * (f_evals + 1) + (4 * head + 2 * attn_fwd * n_fp) * backward_vjps
    return float(total)


def backward_vjps(model_config: Any) -> float:
    """VJPs through the attractor head per training step implied by its backward mode (1 for other models)."""
    bk = getattr(model_config, "backward", None)
    return 1.0 if bk is None else bk.vjps(model_config.solver.max_iter)


class MetricsWriter:
    """Appends metrics to ``workdir/metrics.jsonl`` and, when tensorboardX is installed, ``workdir/tb``."""

    def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._fh = open(self.path, "a", buffering=1)
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"))

    @staticmethod
    def truncate_after(workdir: str | pathlib.Path, step: int) -> None:
        """Drop logged lines past ``step`` (a resumed run re-logs them; the curve stays one clean series)."""
        path = pathlib.Path(workdir) / "metrics.jsonl"
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict:
        row = {"step": int(step)}
        for k, v in metrics.items():
            v = np.asarray(v)
            if v.size == 1:
                x = v.item()
                row[k] = x if isinstance(x, (int, bool)) else (float(x) if math.isfinite(float(x)) else str(x))
            else:
                row[k] = v.tolist()
        self._fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
        return row

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
