"""The authors' checkpoint format ↔ our models: config fields and tensor names.

Config: the authors' ``config.json`` holds their dataclass fields and ``_class_name`` (``GPTConfig``,
``AttractorConfig``, ``ParcaeConfig``). `config_from_reference` maps each field that changes the forward onto
our `LMConfig` fields, and raises one ValueError naming the field when its value changes the forward in a way
our models cannot compute (another block/norm/MLP class, biases, a non-diagonal injection, ...). Fields that
only steer training (sampling, curricula, checkpointing, backends) are mapped where we have them and otherwise
ignored.

Tensors: `tensor_names` translates each of our parameter paths to the authors' state-dict name and whether the
matrix is transposed (torch ``Linear`` weights are ``[out, in]``, our kernels ``[in, out]``). Rules beyond the
one-to-one names:

* ``lm_head.weight`` — with ``tie_embeddings`` the forward reads ``transformer.wte.weight`` only, so
  ``lm_head.weight`` may be absent, the same tensor, or any tensor of a head's shape (the authors' GPT keeps an
  unused ``[d, V]`` one): it is ignored. Without ``tie_embeddings`` the forward reads ``lm_head`` and the import
  succeeds only if it equals the embedding exactly (our models tie the unembedding).
* Parcae value embeddings — the authors place tables ``value_embeds.{j}`` by the alternating rule over
  j ∈ prelude + core + coda, and the attention's ``ve_gate`` by the same rule over the block's ``layer_id``
  (prelude i, core n_prelude + i, coda n_prelude + n_core·mean_recurrence + i) with n_layer = n_core ×
  mean_backprop_depth. A block mixes only where it has both, so our ``ParcaeConfig.ve_layers`` is set to those
  blocks; a stored table or gate the forward never reads is shape-checked and dropped. Export writes the tables
  and gates their code constructs, zero where ours has none (a zero table adds nothing to v).
* ``freqs_cis`` (the persistent RoPE buffer) is compared with our RoPE at the config's base and not stored.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attractor_jax import implicit
from attractor_jax.models.config import AttractorConfig, GPTConfig, LMConfig, ParcaeConfig

CLASS_ARCH = {"GPTConfig": "gpt", "AttractorConfig": "attractor", "ParcaeConfig": "parcae"}
ARCH_CLASS = {v: k for k, v in CLASS_ARCH.items()}

# The authors' dataclass defaults for the fields we read (used where a config.json omits one).
_BASE_DEFAULTS: dict[str, Any] = {
    "block_size": 4096, "n_embd": 4096, "intermediate_size": None, "num_attention_heads": 32,
    "num_key_value_heads": None, "vocab_size": 50254, "padding_multiple": 512, "padded_vocab_size": None,
    "rope_settings": {"use_rope": True, "rope_condense_ratio": 1, "rope_base": 50_000}, "use_abacus": False,
    "block_class_name": "TransformerPreNormBlock", "norm_class_name": "LayerNorm", "norm_eps": 1e-5,
    "mlp_class_name": "BaseMLP", "nonlin_name": "GELU", "bias": False, "qk_bias": False,
    "init_strategy": "scaled", "init_orthogonal": False, "mup_model_scaling_factor": 1, "clip_qkv": None,
    "qk_norm": False, "logit_softcap": None, "causal": True,
}
_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt": {"n_layer": 16, "tie_embeddings": False},
    "attractor": {
        "n_backbone_layers": 6, "n_fp_blocks": 1, "tie_embeddings": True, "solver": "anderson", "max_iter": 12,
        "min_iter": 0, "tol": 1e-3, "anderson_m": 5, "anderson_beta": 1.0, "backward_type": "onestep",
        "backward_max_iter": None, "backward_tol": None, "adjoint_grad_clip": 1.0, "layer_scale_init": 0.25,
        "gamma_max": 1.0, "fp_lr_scale": 0.75, "fp_wd": 0.0, "recurrent_embedding_dimension": None,
    },
    "parcae": {
        "injection_type": "diagonal", "n_layers_in_recurrent_block": 4, "n_layers_in_prelude": 1,
        "n_layers_in_coda": 1, "state_init": "like-init", "recurrent_embedding_dimension": 1024,
        "recurrent_intermediation_embedding_dimension": 3520, "recurrent_num_attention_heads": None,
        "prelude_norm": False, "sampling_scheme": "poisson-truncated-full", "mean_recurrence": 32,
        "mean_backprop_depth": 8, "tie_embeddings": False, "qk_norm": False,
    },
}
# Initialisation strategies whose forward scales are not 1: (embedding scale, logit scale) as functions of d.
_SCALED_INITS = {
    "takase": lambda d: (math.sqrt(d), 1.0),
    "takase-scaled": lambda d: (math.sqrt(d), math.sqrt(2 / 5) / math.sqrt(d)),
    **{k: (lambda d: (1.0, 1 / math.sqrt(d))) for k in (
        "llama-by-dim-ls", "noci-anagnostidis", "shaped", "deep-scale-simple", "deep-scale-full",
        "scaled-and-logit-scale")},
}
_UNIT_INITS = ("scaled-zero", "scaled", "small", "scaled-geiping", "scaled-stuck", "mitchell", "normal", "llama",
               "llama-by-dim", "kaiming", "bert", "megatron", "megatron2", "wang", "deepnorm-straight",
               "deepnorm-subln", "bernstein", "illiterate", "scaled-large-embed")
# field -> the only value (or values) our models compute
_REQUIRED = {
    "block_class_name": ("TransformerPreNormBlock",), "norm_class_name": ("RMSNorm",),
    "mlp_class_name": ("BaseMLP",), "nonlin_name": ("ReLU2",), "bias": (False,), "qk_bias": (False,),
    "clip_qkv": (None,), "use_abacus": (False,), "mup_model_scaling_factor": (1,),
}


def _unsupported(field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"reference config field {field}={value!r} is not supported: {why}")


class _Fields:
    """A reference config with the authors' defaults filled in; ``get`` records what was read."""

    def __init__(self, ref: dict, arch: str):
        self.d = {**_BASE_DEFAULTS, **_ARCH_DEFAULTS[arch], **ref}

    def __getitem__(self, k: str) -> Any:
        return self.d[k]

    def require(self, field: str, allowed: tuple, why: str = "") -> Any:
        v = self.d[field]
        if v not in allowed:
            raise _unsupported(field, v, why or f"our models compute {' or '.join(map(repr, allowed))} only")
        return v


def reference_arch(ref: dict) -> str:
    """``gpt`` | ``attractor`` | ``parcae`` from ``_class_name``; anything else is a ValueError."""
    name = ref.get("_class_name") if isinstance(ref, dict) else None
    if name not in CLASS_ARCH:
        raise ValueError(f"reference config _class_name={name!r} is not known; expected one of {sorted(CLASS_ARCH)}")
    return CLASS_ARCH[name]


def _scales(f: _Fields, d: int) -> tuple[float, float]:
    s = f["init_strategy"]
    if s in _SCALED_INITS:
        return _SCALED_INITS[s](d)
    if s in _UNIT_INITS:
        return 1.0, 1.0
    raise _unsupported("init_strategy", s, "its embedding/logit scales are not known")


def _common(f: _Fields, arch: str) -> dict[str, Any]:
    for field, allowed in _REQUIRED.items():
        f.require(field, allowed)
    rope = {**_BASE_DEFAULTS["rope_settings"], **(f["rope_settings"] or {})}
    if not rope["use_rope"]:
        raise _unsupported("rope_settings.use_rope", False, "our attention always applies RoPE")
    if rope["rope_condense_ratio"] != 1:
        raise _unsupported("rope_settings.rope_condense_ratio", rope["rope_condense_ratio"], "ours is 1")
    d, heads = f["n_embd"], f["num_attention_heads"]
    if d % heads:
        raise _unsupported("num_attention_heads", heads, f"n_embd={d} must be a multiple of it")
    padded = f["padded_vocab_size"] or -(-f["vocab_size"] // f["padding_multiple"]) * f["padding_multiple"]
    embed_scale, logit_scale = _scales(f, d)
    return dict(
        name=str(f.d.get("name") or ""), vocab_size=int(padded), d_model=d, n_heads=heads,
        n_kv_heads=f["num_key_value_heads"] if f["num_key_value_heads"] not in (None, heads) else None,
        mlp_dim=f["intermediate_size"] or 4 * d, mlp_type="relu2", norm_eps=float(f["norm_eps"]),
        rope_base=float(rope["rope_base"]), qk_norm=bool(f["qk_norm"]), causal=bool(f["causal"]),
        max_seq_len=int(f["block_size"]), init_orthogonal=bool(f["init_orthogonal"]),
        embed_scale=embed_scale, logit_scale=1.0 if arch == "gpt" else logit_scale,  # their GPT never scales
        logit_softcap=None if f["logit_softcap"] is None else float(f["logit_softcap"]),
    )


def _attractor_fields(f: _Fields) -> dict[str, Any]:
    d = f["n_embd"]
    if f["recurrent_embedding_dimension"] not in (None, d):
        raise _unsupported("recurrent_embedding_dimension", f["recurrent_embedding_dimension"], f"must be n_embd={d}")
    common = dict(max_iter=int(f["max_iter"]), min_iter=int(f["min_iter"]), tol=float(f["tol"]))
    solver_kind = f.require("solver", ("anderson", "fpi"))
    solver = (implicit.Anderson(m=int(f["anderson_m"]), beta=float(f["anderson_beta"]), **common)
              if solver_kind == "anderson" else implicit.Picard(**common))
    bw = f.require("backward_type", ("onestep", "anderson", "picard"))
    if bw == "onestep":
        clip = f["adjoint_grad_clip"]
        backward = implicit.Neumann(k=1, clip=None if clip is None else float(clip))
    else:
        backward = implicit.IFT(solver=bw, tol=f["backward_tol"], max_iter=f["backward_max_iter"])
    gmax = f["gamma_max"]
    return dict(
        n_backbone_layers=int(f["n_backbone_layers"]), n_fp_blocks=int(f["n_fp_blocks"]),
        layer_scale_init=f["layer_scale_init"], gamma_max=1.0 if gmax is None else float(gmax),
        solver=solver, backward=backward, fp_lr_scale=float(f["fp_lr_scale"]), fp_wd=float(f["fp_wd"]),
    )


def parcae_gate_ids(n_prelude: int, n_core: int, n_coda: int, mean_recurrence: int) -> list[int]:
    """The authors' ``layer_id`` of each Parcae block, in prelude + core + coda order."""
    coda0 = n_prelude + n_core * mean_recurrence
    return [*range(n_prelude), *(n_prelude + i for i in range(n_core)), *(coda0 + i for i in range(n_coda))]


def parcae_reference_placement(cfg: ParcaeConfig) -> tuple[list[bool], list[bool]]:
    """(has table, has gate) per block in the authors' Parcae, for the layer counts of ``cfg``."""
    p, c, o = cfg.n_prelude, cfg.n_core, cfg.n_coda
    n_eff, n_layer = p + c + o, c * cfg.mean_backprop_depth
    tables = [j % 2 == (n_eff - 1) % 2 for j in range(n_eff)]
    gates = [lid % 2 == (n_layer - 1) % 2 for lid in parcae_gate_ids(p, c, o, cfg.mean_recurrence)]
    return tables, gates


def _parcae_fields(f: _Fields, base: dict[str, Any]) -> dict[str, Any]:
    d = f["n_embd"]
    f.require("injection_type", ("diagonal",))
    if f["recurrent_embedding_dimension"] != d:
        raise _unsupported("recurrent_embedding_dimension", f["recurrent_embedding_dimension"], f"must be n_embd={d}")
    if f["recurrent_intermediation_embedding_dimension"] != base["mlp_dim"]:
        raise _unsupported("recurrent_intermediation_embedding_dimension",
                           f["recurrent_intermediation_embedding_dimension"],
                           f"must be intermediate_size={base['mlp_dim']}")
    if f["recurrent_num_attention_heads"] not in (None, base["n_heads"]):
        raise _unsupported("recurrent_num_attention_heads", f["recurrent_num_attention_heads"],
                           f"must be num_attention_heads={base['n_heads']}")
    if base["n_kv_heads"] is not None:  # their core blocks always use as many KV heads as query heads
        raise _unsupported("num_key_value_heads", base["n_kv_heads"],
                           "Parcae's core blocks would use num_attention_heads KV heads, its other blocks fewer")
    sampling = f.require("sampling_scheme", ("poisson-truncated-full", "fixed"))
    fields = dict(
        n_prelude=int(f["n_layers_in_prelude"]), n_core=int(f["n_layers_in_recurrent_block"]),
        n_coda=int(f["n_layers_in_coda"]), mean_recurrence=int(f["mean_recurrence"]),
        mean_backprop_depth=int(f["mean_backprop_depth"]), sampling=sampling,
        state_init=f.require("state_init", ("like-init", "zero")), prelude_norm=bool(f["prelude_norm"]),
    )
    probe = ParcaeConfig(**base, **fields)
    tables, gates = parcae_reference_placement(probe)
    fields["ve_layers"] = tuple(j for j, (t, g) in enumerate(zip(tables, gates)) if t and g)
    return fields


def config_from_reference(ref: dict) -> LMConfig:
    """Our model config for the authors' ``config.json`` contents (see the module docstring)."""
    arch = reference_arch(ref)
    f = _Fields(ref, arch)
    base = _common(f, arch)
    if arch == "gpt":
        return GPTConfig(**base, n_layers=int(f["n_layer"]), value_embeds=True)
    if arch == "attractor":
        return AttractorConfig(**base, **_attractor_fields(f))
    return ParcaeConfig(**base, **_parcae_fields(f, base))


def tied(ref: dict) -> bool:
    arch = reference_arch(ref)
    return bool(_Fields(ref, arch)["tie_embeddings"])


# ---------------------------------------------------------------------------------------------------------------
# Export: our config -> the authors' config.json


def _init_strategy(cfg: LMConfig, base: dict) -> str:
    """An init strategy whose forward scales are ``cfg``'s (the imported one when it still fits)."""
    want = (cfg.embed_scale, cfg.logit_scale)
    candidates = [base.get("init_strategy"), "scaled-zero", *_SCALED_INITS]
    for s in candidates:
        if s is None:
            continue
        scales = _SCALED_INITS[s](cfg.d_model) if s in _SCALED_INITS else (1.0, 1.0) if s in _UNIT_INITS else None
        if scales is not None and cfg.arch == "gpt":
            scales = (scales[0], 1.0)
        if scales is not None and np.allclose(scales, want, rtol=1e-12):
            return s
    raise ValueError(f"{cfg.arch}: embed_scale={cfg.embed_scale}, logit_scale={cfg.logit_scale} match no "
                     "initialisation strategy of the reference code; it cannot be exported")


def _check_exportable(cfg: LMConfig) -> None:
    def bad(field: str, value: Any, why: str) -> ValueError:
        return ValueError(f"cannot export {cfg.arch} config field {field}={value!r}: {why}")

    if cfg.mlp_type != "relu2":
        raise bad("mlp_type", cfg.mlp_type, "the reference's BaseMLP is ReLU²")
    if cfg.head_dim not in (None, cfg.d_model // cfg.n_heads) or cfg.d_model % cfg.n_heads:
        raise bad("head_dim", cfg.head_dim, "the reference's head size is d_model / n_heads")
    if isinstance(cfg, AttractorConfig):
        if cfg.injection != "additive":
            raise bad("injection", cfg.injection, "the reference's head is additive")
        if cfg.solve_init != "proposal":
            raise bad("solve_init", cfg.solve_init, "the reference starts from the proposal c")
    if isinstance(cfg, ParcaeConfig) and cfg.n_kv_heads not in (None, cfg.n_heads):
        raise bad("n_kv_heads", cfg.n_kv_heads, "the reference's Parcae core uses n_heads KV heads")


def config_to_reference(cfg: LMConfig, base: dict | None = None) -> dict:
    """The authors' ``config.json`` for ``cfg``: ``base`` (an imported model's original config) with every field
    that our config determines replaced, or a complete config of their defaults for a model of ours."""
    _check_exportable(cfg)
    arch = cfg.arch
    if arch not in ARCH_CLASS:
        raise ValueError(f"cannot export a {arch!r} model: the reference format holds gpt, attractor or parcae")
    base = dict(base or {})
    if base and base.get("_class_name") != ARCH_CLASS[arch]:
        base = {}
    out = {**_BASE_DEFAULTS, **_ARCH_DEFAULTS[arch], **base}
    vocab = base.get("vocab_size") if base.get("padded_vocab_size") == cfg.vocab_size else cfg.vocab_size
    out.update(
        name=cfg.name or out.get("name", ""), block_size=cfg.max_seq_len, n_embd=cfg.d_model,
        intermediate_size=cfg.mlp_dim, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads or cfg.n_heads, vocab_size=vocab,
        padding_multiple=base.get("padding_multiple", 64), padded_vocab_size=cfg.vocab_size,
        rope_settings={**_BASE_DEFAULTS["rope_settings"], **(base.get("rope_settings") or {}),
                       "rope_base": cfg.rope_base},
        block_class_name="TransformerPreNormBlock", norm_class_name="RMSNorm", norm_eps=cfg.norm_eps,
        mlp_class_name="BaseMLP", nonlin_name="ReLU2", qk_norm=cfg.qk_norm, causal=cfg.causal,
        logit_softcap=cfg.logit_softcap, init_strategy=_init_strategy(cfg, base),
        init_orthogonal=cfg.init_orthogonal, tie_embeddings=True,
    )
    if isinstance(cfg, GPTConfig):
        out.update(n_layer=cfg.n_layers)
    elif isinstance(cfg, AttractorConfig):
        s, b = cfg.solver, cfg.backward
        out.update(n_backbone_layers=cfg.n_backbone_layers, n_fp_blocks=cfg.n_fp_blocks,
                   solver="anderson" if s.kind == "anderson" else "fpi", max_iter=s.max_iter, min_iter=s.min_iter,
                   tol=s.tol, layer_scale_init=cfg.layer_scale_init, gamma_max=cfg.gamma_max,
                   fp_lr_scale=cfg.fp_lr_scale, fp_wd=cfg.fp_wd, recurrent_embedding_dimension=cfg.d_model,
                   model_class_name="Attractor")
        if s.kind == "anderson":
            out.update(anderson_m=s.m, anderson_beta=s.beta)
        if b.kind == "neumann":
            out.update(backward_type="onestep", adjoint_grad_clip=b.clip)
        elif b.kind == "ift" and b.solver in ("anderson", "picard"):
            out.update(backward_type=b.solver, backward_tol=b.tol, backward_max_iter=b.max_iter)
    else:
        out.update(n_layers_in_prelude=cfg.n_prelude, n_layers_in_recurrent_block=cfg.n_core,
                   n_layers_in_coda=cfg.n_coda, mean_recurrence=cfg.mean_recurrence,
                   mean_backprop_depth=cfg.mean_backprop_depth, sampling_scheme=cfg.sampling,
                   state_init=cfg.state_init, prelude_norm=cfg.prelude_norm, injection_type="diagonal",
                   recurrent_embedding_dimension=cfg.d_model,
                   recurrent_intermediation_embedding_dimension=cfg.mlp_dim, recurrent_num_attention_heads=None,
                   model_class_name="Parcae")
        out.setdefault("recurrent_iteration_method", "per-sequence")
    out["_class_name"] = ARCH_CLASS[arch]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Tensor names


def _block_name(path: tuple, prefix: str) -> tuple[str, bool]:
    """Name of a parameter inside one block (``path`` after the block index)."""
    head = path[:-1]
    if head[-1:] in (("norm_1",), ("norm_2",)):
        return f"{prefix}.{head[-1]}.weight", False
    if path in (("gate_attn",), ("gate_mlp",)):
        return f"{prefix}.raw_gamma_{path[0][5:]}", False
    torch_names = {("attn", "q"): "attn.c_q", ("attn", "k"): "attn.c_k", ("attn", "v"): "attn.c_v",
                   ("attn", "o"): "attn.c_proj", ("attn", "ve_gate"): "attn.ve_gate", ("mlp", "fc"): "mlp.fc",
                   ("mlp", "proj"): "mlp.proj"}
    if tuple(head) in torch_names and path[-1] == "kernel":
        return f"{prefix}.{torch_names[tuple(head)]}.weight", True
    raise KeyError(path)


_LISTS = {
    "gpt": {"blocks": "transformer.h"},
    "attractor": {"backbone": "transformer.prelude", "head": "transformer.core_block"},
    "parcae": {"prelude": "transformer.prelude", "core": "transformer.core_block", "coda": "transformer.coda"},
}
_SINGLE = {
    ("embed", "embedding"): ("transformer.wte.weight", False),
    ("final_norm", "scale"): ("transformer.ln_f.weight", False),
    ("prelude_norm", "scale"): ("transformer.ln_prelude.weight", False),
    ("core", "injection", "A_log"): ("transformer.adapter.A_log", False),
    ("core", "injection", "dt_bias"): ("transformer.adapter.dt_bias", False),
    ("core", "injection", "B"): ("transformer.adapter.B", True),
    ("C", "kernel"): ("transformer.C.weight", True),
}


def reference_name(arch: str, path: tuple) -> tuple[str, bool]:
    """``(state-dict name, transposed)`` of our parameter at ``path`` (a flat NNX state path)."""
    path = tuple(path)
    if path in _SINGLE:
        return _SINGLE[path]
    if path[0] == "value_embeds" and path[-1] == "embedding":
        return f"value_embeds.{path[1]}.weight", False
    lists = _LISTS[arch]
    if path[0] == "head" and path[1] == "blocks":  # the attractor head's blocks
        return _block_name(path[3:], f"{lists['head']}.{path[2]}")
    if path[0] == "core" and path[1] == "blocks":
        return _block_name(path[3:], f"{lists['core']}.{path[2]}")
    if path[0] in lists and isinstance(path[1], int):
        return _block_name(path[2:], f"{lists[path[0]]}.{path[1]}")
    raise KeyError(f"parameter {'/'.join(map(str, path))} has no reference name")


def rope_table(head_dim: int, length: int, base: float) -> np.ndarray:
    """The authors' ``freqs_cis`` buffer ``[1, T, 1, H/2, 2]`` (cos, sin), float32, as their code computes it."""
    inv = (1.0 / (np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))))
    ang = np.outer(np.arange(length, dtype=np.float32), inv.astype(np.float32)).astype(np.float32)
    return np.stack([np.cos(ang), np.sin(ang)], -1)[None, :, None].astype(np.float32)


def unused_parcae_names(cfg: ParcaeConfig) -> dict[str, tuple[int, ...]]:
    """State-dict names (with shapes) the authors' Parcae holds but its forward never reads for ``cfg``'s layer
    counts: value tables and gates of blocks that do not have both."""
    tables, gates = parcae_reference_placement(cfg)
    bc = cfg.block_config()
    width = bc.num_kv_heads * bc.dim_head
    p, c = cfg.n_prelude, cfg.n_core
    out = {}
    for j, (t, g) in enumerate(zip(tables, gates)):
        if t and not (g and cfg.mixes_value_embed(j)):
            out[f"value_embeds.{j}.weight"] = (cfg.vocab_size, width)
        if g and not (t and cfg.mixes_value_embed(j)):
            prefix = (f"transformer.prelude.{j}" if j < p else f"transformer.core_block.{j - p}" if j < p + c
                      else f"transformer.coda.{j - p - c}")
            out[f"{prefix}.attn.ve_gate.weight"] = (bc.num_kv_heads, bc.ve_gate_channels)
    return out


def missing_reference_names(cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """Value tables and gates the authors' model constructs for ``cfg`` but ours does not hold (export writes
    them as zeros: a zero table adds nothing to v). A block of ours that mixes a value embedding where theirs
    cannot is a ValueError."""
    if isinstance(cfg, ParcaeConfig):
        tables, gates = parcae_reference_placement(cfg)
        for j, (t, g) in enumerate(zip(tables, gates)):
            if cfg.mixes_value_embed(j) and not (t and g):
                raise ValueError(f"cannot export parcae: layer {j} mixes a value embedding, which the reference's "
                                 "placement rules give no table and gate there (ve_layers)")
        return unused_parcae_names(cfg)
    if isinstance(cfg, GPTConfig) and not cfg.value_embeds:
        bc = cfg.block_config()
        n, out = cfg.n_layers, {}
        for i in range(n):
            if i % 2 == (n - 1) % 2:
                out[f"value_embeds.{i}.weight"] = (cfg.vocab_size, bc.num_kv_heads * bc.dim_head)
                out[f"transformer.h.{i}.attn.ve_gate.weight"] = (bc.num_kv_heads, bc.ve_gate_channels)
        return out
    return {}
