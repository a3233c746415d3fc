"""``create_model``/``list_presets`` and parameter accounting without allocation (``nnx.eval_shape``), for the
language models and the puzzle reasoners (TRM, Attractor reasoner)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
from flax import nnx

from attractor_jax.models.attractor import AttractorLM
from attractor_jax.models.config import (
    REASONER_CONFIGS,
    AttractorConfig,
    AttractorReasonerConfig,
    GPTConfig,
    LMConfig,
    ParcaeConfig,
    TRMConfig,
    apply_overrides,
    config_to_dict,
    kind_dict,
)
from attractor_jax.models.gpt import GPT
from attractor_jax.models.parcae import Parcae
from attractor_jax.models.presets import PRESETS, REFERENCE_PARAMS
from attractor_jax.models.reasoner import TRM, AttractorReasoner

MODEL_CLASSES = {
    AttractorConfig: AttractorLM,
    GPTConfig: GPT,
    ParcaeConfig: Parcae,
    TRMConfig: TRM,
    AttractorReasonerConfig: AttractorReasoner,
}
CONFIG_TYPES = (LMConfig, *REASONER_CONFIGS)


def is_reasoner(cfg: Any) -> bool:
    """True for the puzzle reasoners' configs (``TRMConfig`` and its subclasses)."""
    return isinstance(cfg, REASONER_CONFIGS)


def has_depth(cfg: Any) -> bool:
    """Whether a language model has a depth to vary at evaluation (``max_iter``): the Attractor's solver or
    Parcae's recurrence. A GPT has none."""
    return isinstance(cfg, (AttractorConfig, ParcaeConfig))


def depth_label(depth: int | None) -> str:
    """How a depth is named in results and tables: ``"full"`` for None (the configured solve), else the int."""
    return "full" if depth is None else str(depth)


def check_depths(cfg: Any, depths: Any) -> list[int | None]:
    """The evaluation depths of a language model as a list (None = the full solve / ``mean_recurrence``);
    ValueError for an empty list, a negative or non-int depth, or any finite depth of a model without a solver
    or recurrence (a GPT), where it would silently mean the same as the full model."""
    depths = list(depths)
    if not depths:
        raise ValueError("no solver depths to evaluate: expected e.g. --max-iter 0,1,2,4,full")
    bad = [d for d in depths if d is not None and (not isinstance(d, int) or d < 0)]
    if bad:
        raise ValueError(f"max_iter {bad[0]!r} is invalid: expected a non-negative int or 'full'")
    if not has_depth(cfg) and any(d is not None for d in depths):
        given = ",".join(depth_label(d) for d in depths)
        raise ValueError(f"--max-iter {given}: a {getattr(cfg, 'arch', type(cfg).__name__)} model has no solver "
                         "or recurrence, so its only depth is 'full' (omit --max-iter)")
    return depths


def list_presets() -> list[str]:
    """Names accepted by ``create_model``/``get_config``."""
    return list(PRESETS)


def get_config(name: str | LMConfig, **overrides: Any) -> LMConfig:
    """The preset's config (or a given config) with plain/dotted field overrides (``d_model=64``,
    ``**{"solver.tol": 1e-5}``). Unknown presets or fields raise ValueError naming the valid ones."""
    if isinstance(name, CONFIG_TYPES):
        cfg = name
    elif name in PRESETS:
        cfg = PRESETS[name]
    else:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return apply_overrides(cfg, overrides) if overrides else cfg


def _model_class(cfg: LMConfig):
    cls = MODEL_CLASSES.get(type(cfg))
    if cls is None:
        raise ValueError(f"no model for config type {type(cfg).__name__}; expected one of "
                         f"{[c.__name__ for c in MODEL_CLASSES]}")
    return cls


# Fields that never change parameter shapes or initial values: models differing only in these share one
# compiled initialiser.
_NON_PARAM_FIELDS = (
    "name", "solver", "backward", "solve_mixing", "bf16_tol", "dtype", "attention_impl", "fp_lr_scale", "fp_wd",
    "max_seq_len", "logit_scale", "logit_softcap", "embed_scale", "causal", "rope_base", "qk_norm", "norm_eps",
    "mean_recurrence", "mean_backprop_depth", "sampling", "state_init",
    # puzzle reasoners
    "H_cycles", "L_cycles", "halt_max_steps", "halt_exploration_prob", "no_ACT_continue", "rope_theta",
    "rms_norm_eps", "loss_type", "jacobian_weight", "jacobian_samples",
)


def _param_key(cfg: LMConfig) -> LMConfig:
    base = type(cfg)()
    fields = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: getattr(base, k) for k in _NON_PARAM_FIELDS if k in fields})


@functools.lru_cache(maxsize=32)
def _initializer(param_cfg: LMConfig):
    """Jitted ``key -> state``: one compiled program initialises every parameter (eager initialisation
    compiles each random/QR primitive per shape and is several times slower, even for tiny models)."""
    cls = _model_class(param_cfg)
    return jax.jit(lambda key: nnx.state(cls(param_cfg, rngs=nnx.Rngs(key))))


def build_model(cfg: LMConfig, *, seed: int = 0) -> nnx.Module:
    """Instantiate the model of ``cfg`` with parameters drawn from ``nnx.Rngs(seed)`` (initialised under
    jit)."""
    graphdef, _ = nnx.split(abstract_model(cfg))
    return nnx.merge(graphdef, _initializer(_param_key(cfg))(jax.random.key(seed)))


def create_model(name: str | LMConfig, *, seed: int = 0, **overrides: Any) -> nnx.Module:
    """Build the NNX model of a preset (or config), e.g. ``create_model("attractor-tiny", seed=1,
    d_model=64)``."""
    return build_model(get_config(name, **overrides), seed=seed)


def abstract_model(cfg: LMConfig) -> nnx.Module:
    """The model with ``ShapeDtypeStruct`` parameters: nothing is allocated or computed."""
    cls = _model_class(cfg)
    return nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))


def _group(cfg: LMConfig, path: tuple) -> tuple[str, str]:
    """(coarse group, detail group) of a parameter path."""
    top = str(path[0])
    if is_reasoner(cfg):
        if top in ("embed_tokens", "embed_pos"):
            return "embedding", top
        if top == "puzzle_emb":
            return "puzzle_embedding", "puzzle_embedding"
        if top == "L_level":
            return "blocks", "mlp_t" if "mlp_t" in map(str, path) else "blocks"
        return "heads", top
    if top == "embed":
        return "embedding", "embedding"
    if top == "value_embeds":
        return "value_embeddings", "value_embeddings"
    if isinstance(cfg, AttractorConfig):
        if top == "backbone":
            return "backbone", "backbone"
        if top == "head":
            return "head", "head_gates" if str(path[-1]).startswith("gate_") else "head_blocks"
        return "other", top
    if isinstance(cfg, ParcaeConfig):
        if top in ("prelude", "coda"):
            return "backbone", top
        if top == "core":
            return ("backbone", "core") if str(path[1]) == "blocks" else ("other", "injection")
        return "other", top
    if top == "blocks":
        return "backbone", "blocks"
    return "other", top


def param_counts(cfg: LMConfig) -> dict[str, Any]:
    """Total and grouped parameter counts of ``cfg``'s model, from abstract shapes (no allocation).

    ``split``: embedding / value_embeddings / backbone / head / other; ``detail``: finer groups (e.g. Parcae's
    prelude/core/coda/injection/C, the attractor's head blocks vs gates). For the puzzle reasoners ``split``
    is embedding / puzzle_embedding / blocks / heads, and ``total_without_puzzle_embedding`` is the number
    the reference logs print (its puzzle embedding is a buffer, not a parameter).
    """
    state = nnx.state(abstract_model(cfg), nnx.Param)
    if is_reasoner(cfg):
        split = {"embedding": 0, "puzzle_embedding": 0, "blocks": 0, "heads": 0}
    else:
        split = {"embedding": 0, "value_embeddings": 0, "backbone": 0, "head": 0, "other": 0}
    detail: dict[str, int] = {}
    for path, var in nnx.to_flat_state(state):
        n = math.prod(var.get_value().shape)
        coarse, fine = _group(cfg, path)
        split[coarse] += n
        detail[fine] = detail.get(fine, 0) + n
    out = {"total": sum(split.values()), "split": split, "detail": detail}
    if is_reasoner(cfg):
        out["total_without_puzzle_embedding"] = out["total"] - split["puzzle_embedding"]
    return out


def _depth_settings(cfg: LMConfig) -> dict[str, Any] | None:
    if is_reasoner(cfg):
        keys = ("H_cycles", "L_cycles", "halt_max_steps", "halt_exploration_prob")
        rec = {k: getattr(cfg, k) for k in keys}
        out = {"recursion": rec}
        if isinstance(cfg, AttractorReasonerConfig):
            out.update(solver=kind_dict(cfg.solver), backward=kind_dict(cfg.backward))
            rec.pop("L_cycles")
        return out
    if isinstance(cfg, AttractorConfig):
        return {"solver": kind_dict(cfg.solver), "backward": kind_dict(cfg.backward)}
    if isinstance(cfg, ParcaeConfig):
        return {"recurrence": {k: getattr(cfg, k) for k in ("mean_recurrence", "mean_backprop_depth", "sampling")}}
    return None


def preset_summary(name: str | LMConfig, **overrides: Any) -> dict[str, Any]:
    """Structured description: name, arch, parameter counts (total/split/detail), reference count (if any),
    solver or recurrence settings, and the full config dict. Computed without allocating the model."""
    cfg = get_config(name, **overrides)
    counts = param_counts(cfg)
    ref = REFERENCE_PARAMS.get(cfg.name) if not overrides else None
    return {"name": cfg.name, "arch": cfg.arch, **counts, "reference_total": ref, "depth": _depth_settings(cfg),
            "config": config_to_dict(cfg)}


def _solver_lines(d: dict, cfg: dict) -> list[str]:
    solve = {k: cfg[k] for k in ("solve_mixing", "bf16_tol") if k in cfg}
    return [f"  {head}: " + " ".join([items["kind"]] + [f"{k}={v}" for k, v in items.items() if k != "kind"])
            for head, items in (("solver", {**d["solver"], **solve}), ("backward", d["backward"]))]


def _split_lines(total: int, groups: dict) -> list[str]:
    return [f"  parameters: {total:,}"] + [f"    {k:<17}{v:>15,}  {100.0 * v / total:5.1f}%" for k, v in groups.items()]


def _describe_reasoner(s: dict) -> str:
    cfg = s["config"]
    lines = [f"{s['name'] or '(custom)'}  [{s['arch']}]  hidden={cfg['hidden_size']} heads={cfg['num_heads']} "
             f"L_layers={cfg['L_layers']} vocab={cfg['vocab_size']} seq_len={cfg['seq_len']} "
             f"puzzle_emb_len={cfg['puzzle_emb_len']} dtype={cfg['dtype']}"]
    lines += _split_lines(s["total"], s["split"])
    if s["reference_total"]:
        mine = s["total_without_puzzle_embedding"]
        dev = 100.0 * (mine - s["reference_total"]) / s["reference_total"]
        lines.append(f"    reference total  {s['reference_total']:>15,}  ({dev:+.2f}% vs {mine:,} without the puzzle "
                     "embedding, a buffer in the reference)")
    d = s["depth"]
    r = d["recursion"]
    inner = "solved z_L" if "solver" in d else f"L_cycles={r['L_cycles']}"
    lines.append(f"  recursion: H_cycles={r['H_cycles']} {inner}; ACT halt_max_steps={r['halt_max_steps']} "
                 f"exploration={r['halt_exploration_prob']}; mlp_t={cfg['mlp_t']} pos={cfg['pos_encodings']}")
    if "solver" in d:
        lines += _solver_lines(d, cfg)
        lines.append(f"  jacobian penalty: {cfg['jacobian_weight']:g} ({cfg['jacobian_samples']} probe(s))")
    return "\n".join(lines)


def describe_preset(name: str | LMConfig, **overrides: Any) -> str:
    """Human-readable parameter split and solver settings (what ``attractor-jax info --preset`` prints)."""
    s = preset_summary(name, **overrides)
    if s["arch"] in ("trm", "attractor_reasoner"):
        return _describe_reasoner(s)
    total, cfg = s["total"], s["config"]
    lines = [f"{s['name'] or '(custom)'}  [{s['arch']}]  d={cfg['d_model']} heads={cfg['n_heads']} "
             f"mlp={cfg['mlp_dim']} vocab={cfg['vocab_size']} dtype={cfg['dtype']}"]
    shown = {k: v for k, v in s["split"].items() if v or k in ("embedding", "backbone", "head", "other")}
    lines += _split_lines(total, shown)
    if s["reference_total"]:
        dev = 100.0 * (total - s["reference_total"]) / s["reference_total"]
        lines.append(f"    reference total  {s['reference_total']:>15,}  ({dev:+.2f}%)")
    d = s["depth"]
    if d and "solver" in d:
        lines += _solver_lines(d, cfg)
        lines.append(f"  head: {cfg['n_fp_blocks']} block(s), gates init {cfg['layer_scale_init']} / max "
                     f"{cfg['gamma_max']}; backbone {cfg['n_backbone_layers']} layers")
    elif d:
        r = d["recurrence"]
        lines.append(f"  recurrence: prelude/core/coda {cfg['n_prelude']}/{cfg['n_core']}/{cfg['n_coda']}, "
                     f"mean depth {r['mean_recurrence']} ({r['sampling']}), backprop depth {r['mean_backprop_depth']}")
    else:
        lines.append(f"  layers: {cfg['n_layers']}, value embeddings: {cfg['value_embeds']}")
    return "\n".join(lines)
