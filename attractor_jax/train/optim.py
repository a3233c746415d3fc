"""Optimisers: AdamW, or Muon for the backbone's matrices with AdamW for everything else, grouped as the
reference trainer groups parameters (``recpre/optim/muon_adamw.py``); learning-rate schedules; global-norm
gradient clipping; non-finite gradients skipped and counted.

Groups (labels computed from each parameter's state path and rank, see ``param_labels``):

===============  ===============================================  =========================================
label            parameters                                       update
===============  ===============================================  =========================================
``muon``         2-D matrices of the backbone / blocks (q, k, v,  Muon at ``muon_lr``, cautious decoupled
                 o, fc, proj, the value-embedding gates)          weight decay ``muon_wd`` (linear taper)
``adamw``        token and value embeddings; with                 AdamW at ``lr``, decoupled weight decay
                 ``optimizer="adamw"`` also the matrices above    ``weight_decay``
``adamw_no_wd``  norms, biases, every other 1-D parameter, and    AdamW at ``lr``, no weight decay
                 Parcae's injection (A_log, dt_bias, B) and C
``head``         attractor-head matrices                          AdamW at ``lr·fp_lr_scale``, decoupled
                                                                  weight decay ``fp_wd``
``head_no_wd``   attractor-head norms and LayerScale gates        AdamW at ``lr·fp_lr_scale``, no decay
``puzzle_emb``   (``optimizer="trm"``) the reasoners' puzzle      sparse SignSGD at ``puzzle_emb_lr``, decay
                 embedding table; every other parameter is        ``puzzle_emb_weight_decay`` (TRM's recipe)
                 ``adamw`` (decay on all, biases included)
===============  ===============================================  =========================================

Every group's step is multiplied by the schedule's multiplier m(t) ∈ [0, 1], decoupled weight decay included
(as in the reference: p ← p − lr·m(t)·(u + wd·p)). Muon (``optax.contrib.scale_by_muon``) follows the
reference's recipe: Nesterov momentum warmed up 0.85 → 0.95 over 300 steps, Newton–Schulz with the
Polar-Express coefficients (the reference's 1.02 safety factor folded into the first step), NorMuon
second-moment normalisation, cautious weight decay (only where update and parameter agree in sign), and the
width scale sqrt(max(1, fan_out / fan_in)) on kernels stored ``[in, out]``.

The returned transformation works on any parameter pytree: an ``nnx.State`` of ``nnx.Param`` (from
``nnx.split(model, nnx.Param, ...)``) or its pure dict, inside a plain ``jax.jit`` train step::

    tx = make_optimizer(OptimConfig(), params, model.config, total_steps=N)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)      # params are required (weight decay)
    params = optax.apply_updates(params, updates)
    optimizer_metrics(opt_state)   # {"opt_step", "skipped_steps", "grad_norm", "lr/<group>", ...}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

OPTIMIZERS = ("adamw", "muon", "trm")
SCHEDULES = ("trapezoid", "warmup_cosine", "wsd")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")
MUON_WD_SCHEDULES = ("linear", "constant")
PUZZLE_EMB = "puzzle_emb"
LABELS = ("muon", "adamw", "adamw_no_wd", "head", "head_no_wd", "puzzle_emb")

# Polar-Express coefficients for five Newton–Schulz steps (Amsel et al. 2025, as in modded-nanogpt and the
# reference's muon_adamw.py).
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# Keller Jordan's quintic, repeated (optax's default).
STANDARD_NS_COEFFS = (3.4445, -4.7750, 2.0315)
# The Dion schedule shipped with optax.
DION_NS_COEFFS = ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
                  (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012))
NS_COEFFS = ("polar_express", "standard", "dion")


def _bad(field: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"OptimConfig.{field}={value!r} is not valid; expected {expected}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any, lo: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo


# OptimConfig's numeric fields: (check, what is expected); the optional ones may also be None.
_POSITIVE = (lambda x: x > 0, "a number > 0")
_NON_NEGATIVE = (lambda x: x >= 0, "a number >= 0")
_UNIT = (lambda x: 0.0 <= x < 1.0, "a number in [0, 1)")
_STEP_FRACTION = (lambda x: 0.0 <= x <= 1.0, "a fraction of total_steps in [0, 1]")
_NUMBER_FIELDS = {
    "lr": _POSITIVE, "muon_lr": _POSITIVE, "eps": _NON_NEGATIVE, "weight_decay": _NON_NEGATIVE,
    "muon_wd": _NON_NEGATIVE, "muon_momentum": _UNIT, "muon_momentum_start": _UNIT, "muon_normuon_beta2": _UNIT,
    "warmup_fraction": _STEP_FRACTION, "cooldown_fraction": _STEP_FRACTION,
    "min_lr_ratio": (lambda x: 0.0 <= x <= 1.0, "a fraction of the peak lr in [0, 1]"),
    "grad_clip": _POSITIVE, "fp_lr_scale": _POSITIVE, "fp_wd": _NON_NEGATIVE, "puzzle_emb_lr": _NON_NEGATIVE,
    "puzzle_emb_weight_decay": _NON_NEGATIVE, "ema_decay": _UNIT,
}
_OPTIONAL_FIELDS = ("grad_clip", "fp_lr_scale", "fp_wd", "ema_decay", "warmup_steps")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings; defaults are the reference's launch configs (attractor/gpt/parcae small: AdamW and
    Muon lr 8e-3, betas (0.8, 0.95), eps 1e-10, no AdamW decay, Muon decay 0.2 tapered to 0, constant lr for
    the first half then linear cooldown to 0, clip 1.0).

    optimizer: ``"muon"`` (Muon for backbone matrices, AdamW for the rest), ``"adamw"`` (AdamW for all) or
      ``"trm"`` (TRM's recipe for the puzzle reasoners: sparse SignSGD for the puzzle embedding, AdamW with decay
      for every other parameter; `reference_optim_config` gives its settings).
    lr, betas, eps, weight_decay: AdamW's peak lr, (β1, β2), ε and decoupled decay (embeddings; with
      ``optimizer="adamw"`` also the backbone matrices). Norms, gates and 1-D parameters never decay.
    muon_lr, muon_momentum, muon_momentum_start, muon_momentum_warmup_steps: Muon's peak lr and its Nesterov
      momentum, raised linearly from ``muon_momentum_start`` over the first steps.
    muon_wd, muon_wd_schedule, muon_cautious_wd: Muon's decoupled decay, tapered linearly to 0 over the run
      (``"linear"``, the reference) or ``"constant"``; cautious: decay only where update·param ≥ 0.
    muon_ns_coeffs, muon_ns_steps, muon_normuon, muon_normuon_beta2: Newton–Schulz coefficients
      (``"polar_express"``, ``"standard"``, ``"dion"``), steps, and NorMuon's row/column second moment.
    schedule: ``"trapezoid"`` (linear warmup, constant, linear cooldown over the last ``cooldown_fraction``;
      the reference), ``"warmup_cosine"`` (linear warmup, cosine to the minimum over the rest) or ``"wsd"``
      (warmup-stable-decay with a ``wsd_decay`` shaped cooldown). Fractions are of ``total_steps``.
    warmup_steps: the warmup in steps (None: ``round(warmup_fraction·total_steps)``); it may exceed the run.
    min_lr_ratio: the schedule's floor as a fraction of the peak.
    grad_clip: global-norm clip (None: off).
    skip_nonfinite: skip (and count) updates whose gradient has a NaN/Inf; False applies them anyway.
    fp_lr_scale, fp_wd: the attractor head's lr scale and matrix decay; None takes them from the model
      config (``AttractorConfig.fp_lr_scale``/``fp_wd``).
    puzzle_emb_lr, puzzle_emb_weight_decay: the ``puzzle_emb`` group's SignSGD lr and decay (``"trm"`` only).
    ema_decay: keep an exponential moving average of the weights for evaluation (puzzle reasoners; None: off).
    """

    optimizer: str = "muon"
    lr: float = 8e-3
    betas: tuple[float, float] = (0.8, 0.95)
    eps: float = 1e-10
    weight_decay: float = 0.0
    muon_lr: float = 8e-3
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85
    muon_momentum_warmup_steps: int = 300
    muon_wd: float = 0.2
    muon_wd_schedule: str = "linear"
    muon_cautious_wd: bool = True
    muon_ns_coeffs: str = "polar_express"
    muon_ns_steps: int = 5
    muon_normuon: bool = True
    muon_normuon_beta2: float = 0.95
    schedule: str = "trapezoid"
    warmup_fraction: float = 0.0
    cooldown_fraction: float = 0.5
    wsd_decay: str = "1-sqrt"
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    skip_nonfinite: bool = True
    fp_lr_scale: float | None = None
    fp_wd: float | None = None
    puzzle_emb_lr: float = 1e-4
    puzzle_emb_weight_decay: float = 1.0
    ema_decay: float | None = None

    def __post_init__(self):
        for field, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("wsd_decay", DECAY_SHAPES),
                               ("muon_wd_schedule", MUON_WD_SCHEDULES), ("muon_ns_coeffs", NS_COEFFS)):
            if getattr(self, field) not in choices:
                raise _bad(field, getattr(self, field), f"one of {choices}")
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        b = self.betas
        if not (isinstance(b, tuple) and len(b) == 2 and all(_is_number(x) and 0.0 <= x < 1.0 for x in b)):
            raise _bad("betas", b, "two numbers (b1, b2), each in [0, 1)")
        for field, (ok, expected) in _NUMBER_FIELDS.items():
            v, optional = getattr(self, field), field in _OPTIONAL_FIELDS
            if not ((optional and v is None) or (_is_number(v) and ok(v))):
                raise _bad(field, v, expected + (" or None" if optional else ""))
        for field, lo in (("warmup_steps", 0), ("muon_momentum_warmup_steps", 0), ("muon_ns_steps", 1)):
            v = getattr(self, field)
            if not ((field in _OPTIONAL_FIELDS and v is None) or _is_int(v, lo)):
                raise _bad(field, v, f"an int >= {lo}")
        for field in ("muon_cautious_wd", "muon_normuon", "skip_nonfinite"):
            if not isinstance(getattr(self, field), bool):
                raise _bad(field, getattr(self, field), "True or False")
        if self.schedule != "warmup_cosine" and self.warmup_fraction + self.cooldown_fraction > 1.0:
            raise _bad("cooldown_fraction", self.cooldown_fraction,
                       f"warmup_fraction + cooldown_fraction <= 1 (warmup_fraction={self.warmup_fraction!r})")


# ----------------------------------------------------------------------------------------------------------
# Schedules


def _phase_steps(config: OptimConfig, total_steps: int) -> tuple[int, int]:
    warmup = config.warmup_steps
    warmup = int(round(config.warmup_fraction * total_steps)) if warmup is None else warmup
    cooldown = 0 if config.schedule == "warmup_cosine" else int(round(config.cooldown_fraction * total_steps))
    return warmup, max(0, min(cooldown, total_steps - warmup))


def _check_total_steps(total_steps: Any) -> int:
    if not _is_int(total_steps, 1):
        raise ValueError(f"total_steps={total_steps!r} is not valid; expected a positive int")
    return total_steps


def make_schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
    """The lr multiplier m(t) (peak 1) for update t = 0, 1, …, an ``optax.Schedule``.

    With W = warmup_steps or round(warmup_fraction·T), C = round(cooldown_fraction·T), floor lo = min_lr_ratio:
    warmup m = (t + 1)/W for t < W (the first update is not wasted at lr 0); then
      trapezoid:      1 until T − C, then lo + (1 − lo)·(1 − s), s = (t − (T − C))/C (reaches lo at t = T);
      wsd:            the same with a ``wsd_decay`` shaped cooldown: 1 − s, (1 + cos πs)/2 or 1 − √s;
      warmup_cosine:  lo + (1 − lo)·(1 + cos πs)/2 with s = (t − W)/(T − W) (cooldown_fraction unused).
    Steps past T stay at the floor.
    """
    total = _check_total_steps(total_steps)
    warmup, cooldown = _phase_steps(config, total)
    lo = float(config.min_lr_ratio)
    kind = config.schedule
    shape = "linear" if kind == "trapezoid" else ("cosine" if kind == "warmup_cosine" else config.wsd_decay)
    start = warmup if kind == "warmup_cosine" else total - cooldown
    length = max(total - warmup, 1) if kind == "warmup_cosine" else cooldown

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        s = jnp.clip((t - start) / length, 0.0, 1.0) if length > 0 else jnp.zeros_like(t)
        if shape == "linear":
            frac = 1.0 - s
        elif shape == "cosine":
            frac = 0.5 * (1.0 + jnp.cos(jnp.pi * s))
        else:
            frac = 1.0 - jnp.sqrt(s)
        m = lo + (1.0 - lo) * frac
        if warmup > 0:
            m = jnp.where(t < warmup, jnp.minimum((t + 1.0) / warmup, 1.0), m)
        return m

    return schedule


def _muon_momentum_schedule(config: OptimConfig) -> optax.Schedule:
    n = config.muon_momentum_warmup_steps
    a, b = float(config.muon_momentum_start), float(config.muon_momentum)
    if n == 0:
        return lambda step: jnp.asarray(b, jnp.float32)
    return lambda step: a + (b - a) * jnp.minimum(jnp.asarray(step, jnp.float32) / n, 1.0)


def _muon_wd_schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
    wd = float(config.muon_wd)
    if config.muon_wd_schedule == "constant":
        return lambda step: jnp.asarray(wd, jnp.float32)
    return lambda step: wd * jnp.maximum(1.0 - jnp.asarray(step, jnp.float32) / total_steps, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Grouping


def path_names(path) -> tuple:
    """A key path as plain names/indices, without the trailing ``.value`` of an ``nnx.Variable``."""
    tu = jax.tree_util
    out = []
    for k in path:
        if isinstance(k, (tu.DictKey, tu.FlattenedIndexKey)):
            out.append(k.key)
        elif isinstance(k, tu.SequenceKey):
            out.append(k.idx)
        else:
            out.append(k.name if isinstance(k, tu.GetAttrKey) else str(k))
    if len(out) > 1 and out[-1] == "value" and isinstance(path[-1], tu.GetAttrKey):
        out.pop()
    return tuple(out)


def _label(names: tuple, ndim: int, optimizer: str, model_config: Any) -> str:
    low = [str(n).lower() for n in names]
    top = str(names[0]) if names else ""
    if optimizer == "trm":
        return PUZZLE_EMB if PUZZLE_EMB in low else "adamw"
    if top == "head" and (model_config is None or hasattr(model_config, "fp_lr_scale")):
        return "head" if ndim >= 2 else "head_no_wd"
    parcae_recurrent = "injection" in low or low[-1:] in (["a_log"], ["dt_bias"])
    is_parcae = model_config is None or getattr(model_config, "arch", None) == "parcae"
    if parcae_recurrent or (top == "C" and is_parcae):
        return "adamw_no_wd"
    if ndim < 2:
        return "adamw_no_wd"
    if any("embed" in n or n in ("wte", "lm_head") for n in low):
        return "adamw"
    if any("norm" in n or n.startswith("ln_") or "bias" in n for n in low):
        return "adamw_no_wd"
    if ndim == 2 and optimizer == "muon":
        return "muon"
    return "adamw"


def param_labels(params: Any, config: OptimConfig | None = None, model_config: Any = None) -> Any:
    """The group label of every parameter (a pytree of str with the structure of ``params``).

    Rules, in order, on the path (e.g. ``head/blocks/0/attn/q/kernel``) and rank: the attractor head
    (``head/...``; when ``model_config`` is None or has ``fp_lr_scale``) → ``head`` (matrices) /
    ``head_no_wd``; Parcae's injection (``A_log``, ``dt_bias``, ``B``) and top-level ``C`` →
    ``adamw_no_wd``; other 1-D → ``adamw_no_wd``; names containing ``embed`` (token and value embeddings) →
    ``adamw``; norms and biases → ``adamw_no_wd``; remaining 2-D matrices → ``muon`` (``adamw`` when
    ``optimizer="adamw"``; tensors of rank > 2 always go to AdamW). With ``optimizer="trm"``: ``puzzle_emb``
    for the puzzle-embedding table, ``adamw`` for everything else.
    """
    labels = [label for _, _, label in _labelled(params, config, model_config)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), labels)


def _labelled(params: Any, config: OptimConfig | None, model_config: Any):
    """``(path names, leaf, label)`` of every array of ``params``."""
    optimizer = (config or OptimConfig()).optimizer
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = path_names(path)
        yield names, x, _label(names, len(x.shape), optimizer, model_config)


def label_table(params: Any, config: OptimConfig | None = None, model_config: Any = None) -> dict[str, str]:
    """``{"head/blocks/0/attn/q/kernel": "head", ...}``: ``param_labels`` flattened to slash-joined paths."""
    return {"/".join(str(n) for n in names): label for names, _, label in _labelled(params, config, model_config)}


def _head_settings(config: OptimConfig, model_config: Any) -> tuple[float, float]:
    def pick(field):
        v = getattr(config, field)
        if v is None:
            v = getattr(model_config, field, None)
        if v is None:
            raise ValueError(
                f"the parameters include an attractor head but OptimConfig.{field} is None and the model "
                f"config {type(model_config).__name__ if model_config is not None else None} has no {field}; "
                "pass model_config=model.config or set it in OptimConfig"
            )
        return float(v)

    return pick("fp_lr_scale"), pick("fp_wd")


def _group_settings(config: OptimConfig, model_config: Any, present: set[str]) -> dict[str, dict[str, Any]]:
    """Per present label: optimizer kind, peak lr and weight decay."""
    scale, head_wd = 1.0, 0.0  # unused unless a head group is present
    if present & {"head", "head_no_wd"}:
        scale, head_wd = _head_settings(config, model_config)
    c = config
    table = {"muon": ("muon", c.muon_lr, c.muon_wd), "adamw": ("adamw", c.lr, c.weight_decay),
             "adamw_no_wd": ("adamw", c.lr, 0.0), "head": ("adamw", c.lr * scale, head_wd),
             "head_no_wd": ("adamw", c.lr * scale, 0.0),
             PUZZLE_EMB: ("sign_sgd", c.puzzle_emb_lr, c.puzzle_emb_weight_decay)}
    return {k: dict(zip(("optimizer", "lr", "weight_decay"), table[k])) for k in LABELS if k in present}


def describe_groups(params: Any, config: OptimConfig | None = None, model_config: Any = None) -> dict:
    """Per group (present ones only): ``optimizer``, ``tensors``, ``params`` (element count), peak ``lr`` and
    ``weight_decay``; for logging. Works on abstract parameters (``ShapeDtypeStruct``) too."""
    counts: dict[str, tuple[int, int]] = {}
    for _, x, label in _labelled(params, config, model_config):
        tensors, size = counts.get(label, (0, 0))
        counts[label] = (tensors + 1, size + math.prod(x.shape))
    settings = _group_settings(config or OptimConfig(), model_config, set(counts))
    return {k: {"optimizer": s["optimizer"], "tensors": counts[k][0], "params": counts[k][1], "lr": s["lr"],
                "weight_decay": s["weight_decay"]} for k, s in settings.items()}


# ----------------------------------------------------------------------------------------------------------
# Muon pieces (run inside optax.multi_transform, so trees hold optax MaskedNodes for other groups' leaves)


class NorMuonState(NamedTuple):
    """EMA of the mean square of each orthogonalised update along its smaller axis (one array per matrix, in
    leaf order; plain arrays, so no parameter sharding metadata is attached to these reduced shapes)."""

    v: tuple


def _reduce_axis(shape) -> int:
    # Kernels are [in, out]: average over the smaller dimension, keep one statistic per row/column of the
    # larger one (the reference's per-row for out >= in, else per-column).
    return 0 if shape[0] <= shape[1] else 1


def scale_by_normuon(beta2: float = 0.95, eps: float = 1e-10) -> optax.GradientTransformation:
    """NorMuon: ``v ← lerp(v, mean(X², smaller axis), 1 − β2)``, ``X ← X / sqrt(v)``, then rescale X to its
    previous Frobenius norm (Li et al. 2025; the reference's ``muon_step`` stage 4)."""

    def reduced(shape):
        return tuple(1 if i == _reduce_axis(shape) else n for i, n in enumerate(shape))

    def init(params):
        return NorMuonState(v=tuple(jnp.zeros(reduced(x.shape), jnp.float32) for x in jax.tree.leaves(params)))

    def update(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        new_u, new_v = [], []
        for u, v in zip(leaves, state.v, strict=True):
            uf = u.astype(jnp.float32)
            v = v + (1.0 - beta2) * (jnp.mean(uf * uf, axis=_reduce_axis(u.shape), keepdims=True) - v)
            y = uf * jax.lax.rsqrt(jnp.maximum(v, eps))
            y = y * (jnp.linalg.norm(uf) / jnp.maximum(jnp.linalg.norm(y), 1e-30))
            new_u.append(y.astype(u.dtype))
            new_v.append(v)
        return jax.tree.unflatten(treedef, new_u), NorMuonState(v=tuple(new_v))

    return optax.GradientTransformation(init, update)


class CautiousWeightDecayState(NamedTuple):
    count: jax.Array


def add_cautious_weight_decay(weight_decay: optax.Schedule, cautious: bool = True):
    """``u ← u + wd(t)·p`` where ``u·p ≥ 0`` (everywhere when not ``cautious``); wd follows a schedule of the
    number of updates."""

    def init(params):
        return CautiousWeightDecayState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("add_cautious_weight_decay needs params")
        wd = weight_decay(state.count)

        def one(u, p):
            d = wd * p
            if cautious:
                d = jnp.where(u * p >= 0, d, 0.0)
            return (u + d).astype(u.dtype)

        return jax.tree.map(one, updates, params), CautiousWeightDecayState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def scale_by_width() -> optax.GradientTransformation:
    """Multiply each ``[in, out]`` matrix update by sqrt(max(1, out / in)) (Keller Jordan's Muon width scale;
    the reference applies it to Muon's lr)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * math.sqrt(max(1.0, u.shape[1] / u.shape[0])), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def _ns_coeffs(config: OptimConfig):
    n = config.muon_ns_steps
    if config.muon_ns_coeffs == "standard":
        return STANDARD_NS_COEFFS, n
    base = POLAR_EXPRESS_COEFFS if config.muon_ns_coeffs == "polar_express" else DION_NS_COEFFS
    coeffs = [tuple(c) for c in base[:n]]
    coeffs += [coeffs[-1]] * (n - len(coeffs))
    if config.muon_ns_coeffs == "polar_express":
        # The reference divides by 1.02·||X||_F; optax divides by ||X||_F. p(X/s) = (a/s) X + (b/s³) X Xᵀ X
        # + (c/s⁵) (X Xᵀ)² X, so fold s = 1.02 into the first step.
        a, b, c = coeffs[0]
        coeffs[0] = (a / 1.02, b / 1.02**3, c / 1.02**5)
    return tuple(coeffs), n


def _muon_dim_numbers(updates):
    return jax.tree.map(lambda _: MuonDimensionNumbers(reduction_axis=0, output_axis=1), updates)


def _muon(config: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    coeffs, steps = _ns_coeffs(config)
    muon = optax.inject_hyperparams(
        scale_by_muon, hyperparam_dtype=jnp.float32,
        static_args=("ns_coeffs", "ns_steps", "weight_dimension_numbers", "preconditioning", "mu_dtype"),
    )(ns_coeffs=coeffs, ns_steps=steps, beta=_muon_momentum_schedule(config), nesterov=True,
      weight_dimension_numbers=_muon_dim_numbers)
    parts = [muon]
    if config.muon_normuon:
        parts.append(scale_by_normuon(config.muon_normuon_beta2))
    if config.muon_wd > 0:
        wd = _muon_wd_schedule(config, total_steps)
        parts.append(add_cautious_weight_decay(wd, config.muon_cautious_wd))
    parts += [scale_by_width(), optax.scale(-config.muon_lr)]
    return optax.chain(*parts)


def _adamw(config: OptimConfig, lr: float, wd: float) -> optax.GradientTransformation:
    b1, b2 = config.betas
    return optax.adamw(learning_rate=lr, b1=b1, b2=b2, eps=config.eps, eps_root=0.0, weight_decay=wd)


def sparse_sign_sgd(learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """TRM's sparse SignSGD (its ``CastedSparseEmbeddingSignSGD``) with decoupled weight decay on the rows
    (leading axis) that received a gradient: a present row moves by ``−lr·(wd·p + sign(g))``, where g is the
    row's summed gradient (duplicates within the batch and across devices are summed by autodiff and the
    data-parallel reduction); a row with an all-zero gradient is left exactly as it is. Stateless."""
    if not (learning_rate >= 0 and weight_decay >= 0):
        raise ValueError(f"sparse_sign_sgd: learning_rate={learning_rate!r}, weight_decay={weight_decay!r} "
                         "must be >= 0")

    def update(updates, state, params=None):
        if weight_decay > 0 and params is None:
            raise ValueError("sparse_sign_sgd with weight decay needs params")

        def one(g, p):
            axes = tuple(range(1, g.ndim))
            present = jnp.any(g != 0, axis=axes, keepdims=True) if axes else g != 0
            step = jnp.sign(g) + (weight_decay * p if weight_decay > 0 else 0.0)
            return jnp.where(present, -learning_rate * step, 0.0).astype(g.dtype)

        return jax.tree.map(one, updates, params if params is not None else updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def reference_optim_config(model_config: Any = None, **changes: Any) -> OptimConfig:
    """The reference's optimiser for a model, ``changes`` overriding fields: the launch configs' (the
    `OptimConfig` defaults) for language models; TRM's for the puzzle reasoners (README and ``pretrain.py``:
    AdamW lr 1e-4, betas (0.9, 0.95), eps 1e-8, weight decay 1.0; puzzle embeddings SignSGD lr 1e-4, decay 1.0 —
    1e-2 in the TRM-DEQ trainer of the Attractor reasoner; 2,000 warmup steps, then constant; no clipping;
    EMA 0.999)."""
    base = OptimConfig()
    arch = getattr(model_config, "arch", None)
    if arch in ("trm", "attractor_reasoner"):
        base = OptimConfig(optimizer="trm", lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=1.0,
                           puzzle_emb_lr=1e-2 if arch == "attractor_reasoner" else 1e-4,
                           puzzle_emb_weight_decay=1.0, schedule="warmup_cosine", warmup_steps=2000,
                           min_lr_ratio=1.0, grad_clip=None, ema_decay=0.999)
    return dataclasses.replace(base, **changes) if changes else base


# ----------------------------------------------------------------------------------------------------------
# The optimiser


class OptimState(NamedTuple):
    """count: updates applied (the schedules' step); skipped: updates skipped because the gradient was not
    finite (total); grad_norm: global norm of the latest gradient before clipping (NaN/Inf when it was
    skipped); lr: each group's learning rate at the latest applied update (before any: the first update's);
    inner: the grouped transformation's state."""

    count: jax.Array
    skipped: jax.Array
    grad_norm: jax.Array
    lr: dict
    inner: Any


def _global_norm(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros([], jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def make_optimizer(
    config: OptimConfig,
    params: Any,
    model_config: Any = None,
    *,
    total_steps: int,
) -> optax.GradientTransformation:
    """The optimiser for ``params`` (an ``nnx.State`` of params, its pure dict, or abstract shapes; used to
    find the groups present and to check the head settings): global-norm clipping → grouped AdamW/Muon →
    schedule multiplier, the whole update skipped (params unchanged, ``skipped`` incremented) when the
    gradient's global norm is not finite.

    ``update(grads, state, params)`` needs ``params`` (weight decay). Labels are recomputed from the paths
    of the trees it receives, so the same optimiser serves the ``nnx.State`` and its pure-dict form.
    """
    total = _check_total_steps(total_steps)
    if not isinstance(config, OptimConfig):
        raise ValueError(f"config={type(config).__name__} is not valid; expected an OptimConfig")
    present = set(label_table(params, config, model_config).values())
    if not present:
        raise ValueError("params has no arrays: nothing to optimise")
    settings = _group_settings(config, model_config, present)
    build = {"muon": lambda s: _muon(config, total),
             "sign_sgd": lambda s: sparse_sign_sgd(s["lr"], s["weight_decay"]),
             "adamw": lambda s: _adamw(config, s["lr"], s["weight_decay"])}
    transforms = {k: build[s["optimizer"]](s) for k, s in settings.items()}
    def checked_labels(tree):
        labels = param_labels(tree, config, model_config)
        missing = set(jax.tree.leaves(labels)) - set(transforms)
        if missing:
            raise ValueError(
                f"parameters labelled {sorted(missing)} were absent from the params given to make_optimizer "
                f"(groups {sorted(transforms)}); build the optimiser from the same parameter tree"
            )
        return labels

    inner = optax.multi_transform(transforms, checked_labels)
    base_lr = {k: float(s["lr"]) for k, s in settings.items()}
    return scheduled(inner, make_schedule(config, total), base_lr, config.grad_clip, config.skip_nonfinite)


def scheduled(inner: optax.GradientTransformation, schedule: optax.Schedule, base_lr: dict[str, float],
              clip: float | None, skip_nonfinite: bool) -> optax.GradientTransformation:
    """The wrapper every recipe shares: global-norm clipping → ``inner`` (the grouped optimisers, at their base
    learning rates) → the schedule's multiplier; a non-finite gradient skips the whole update (params and
    ``inner`` state unchanged, ``skipped`` incremented). The state is an `OptimState` that records the
    gradient norm and each group's learning rate (``base_lr`` × multiplier). ``update`` needs ``params``."""

    def lrs(mult):
        return {k: jnp.asarray(v * mult, jnp.float32) for k, v in base_lr.items()}

    def init(params):
        return OptimState(count=jnp.zeros([], jnp.int32), skipped=jnp.zeros([], jnp.int32),
                          grad_norm=jnp.zeros([], jnp.float32), lr=lrs(schedule(0)), inner=inner.init(params))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("the optimiser needs params for weight decay: update(grads, state, params)")
        norm = _global_norm(grads)
        finite = jnp.isfinite(norm)
        if clip is not None:
            factor = jnp.minimum(1.0, clip / norm)
            grads = jax.tree.map(lambda g: (g * factor).astype(g.dtype), grads)
        mult = schedule(state.count)

        updates, inner_state = inner.update(grads, state.inner, params)
        updates = jax.tree.map(lambda x: (x * mult).astype(x.dtype), updates)
        if skip_nonfinite:
            # A select rather than lax.cond: no control flow in the step (SPMD- and donation-friendly); the
            # discarded computation on a non-finite gradient is rare and fuses with the update anyway.
            updates = jax.tree.map(lambda x: jnp.where(finite, x, jnp.zeros_like(x)), updates)
            inner_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner_state, state.inner)
            applied = finite
        else:
            applied = jnp.asarray(True)
        new_lr = {k: jnp.where(applied, v, state.lr[k]) for k, v in lrs(mult).items()}
        return updates, OptimState(count=state.count + applied.astype(jnp.int32),
                                   skipped=state.skipped + jnp.logical_not(finite).astype(jnp.int32),
                                   grad_norm=norm, lr=new_lr, inner=inner_state)

    return optax.GradientTransformation(init, update)


def find_optim_state(opt_state: Any) -> OptimState:
    """The ``OptimState`` inside ``opt_state`` (itself, or nested in a wrapper such as
    ``optax.MultiSteps``)."""
    for node in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, OptimState)):
        if isinstance(node, OptimState):
            return node
    raise ValueError("opt_state holds no OptimState; was it created by make_optimizer(...).init?")


def skipped_steps(opt_state: Any) -> jax.Array:
    """Total updates skipped for non-finite gradients (int32 scalar)."""
    return find_optim_state(opt_state).skipped


def optimizer_metrics(opt_state: Any) -> dict[str, jax.Array]:
    """Scalars for logging: ``opt_step`` (updates applied), ``skipped_steps``, ``grad_norm`` (latest, before
    clipping) and ``lr/<group>`` (each group's lr at the latest update). Arrays; fetch them outside the
    step."""
    s = find_optim_state(opt_state)
    out = {"opt_step": s.count, "skipped_steps": s.skipped, "grad_norm": s.grad_norm}
    out.update({f"lr/{k}": v for k, v in s.lr.items()})
    return out


__all__ = [
    "LABELS", "OptimConfig", "OptimState", "NorMuonState", "add_cautious_weight_decay", "describe_groups",
    "find_optim_state", "label_table", "make_optimizer", "make_schedule", "optimizer_metrics", "param_labels",
    "path_names", "reference_optim_config", "scale_by_normuon", "scale_by_width", "scheduled", "skipped_steps",
    "sparse_sign_sgd",
]
