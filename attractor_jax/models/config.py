"""Model configurations: frozen dataclasses with defaults, (de)serialisable to plain dicts.

``GPTConfig``, ``ParcaeConfig`` and ``AttractorConfig`` share the transformer fields of ``LMConfig``; the
attractor adds its head and solve settings: ``solver`` and ``backward`` hold `attractor_jax.implicit` objects
(``Anderson(...)``, ``Neumann(k=1)``), serialised as ``{"kind": ..., **fields}``. Field names are the CLI's
override keys (``d_model=256``, ``solver.tol=1e-4``, ``backward.kind=ift``). The puzzle reasoners have their
own configs with the reference's TRM field names: ``TRMConfig`` and ``AttractorReasonerConfig`` (TRM + solve
settings). ``config_to_dict``/``config_from_dict`` round-trip a config (with its architecture name) through JSON
for checkpoints and results files; ``config_from_dict`` also reads the flat solver dicts of older run directories.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from attractor_jax import implicit
from attractor_jax.nn.config import ATTENTION_IMPLS, DTYPES, MLP_TYPES, BlockConfig

MIXINGS = ("token", "sequence")


def has_ve(layer_idx: int, n_layers: int) -> bool:
    """Reference ``has_ve``: value embeddings on alternating layers, the last layer always included."""
    return layer_idx % 2 == (n_layers - 1) % 2


def _check_choice(owner: str, field: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{field}={value!r} is not valid; expected one of {choices}")


def _check_ints(cfg: Any, names: str, lo: int = 1) -> None:
    """Each of the (space-separated) fields ``names`` of ``cfg`` is an int >= ``lo``, not a bool."""
    for k in names.split():
        v = getattr(cfg, k)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
            what = "a positive int" if lo == 1 else f"an int >= {lo}"
            raise ValueError(f"{type(cfg).__name__}.{k}={v!r} must be {what}")


def _check_solve(owner: str, cfg: Any) -> None:
    """The solve settings shared by the Attractor LM and reasoner configs."""
    if not isinstance(cfg.solver, implicit.Solver):
        raise ValueError(f"{owner}.solver={cfg.solver!r} must be a solver ({_kinds(implicit.Solver)})")
    if not isinstance(cfg.backward, implicit.Backward):
        raise ValueError(f"{owner}.backward={cfg.backward!r} must be a backward mode ({_kinds(implicit.Backward)})")
    if cfg.bf16_tol is not None and not cfg.bf16_tol >= 0:
        raise ValueError(f"{owner}.bf16_tol={cfg.bf16_tol!r} must be >= 0 or None")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Transformer fields shared by all language models (defaults: the reference's LM settings).

    vocab_size is the padded vocabulary; ``dtype`` is the compute dtype (parameters and the residual stream
    stay float32); ``init`` is the reference's ``scaled-zero`` strategy (std sqrt(2/(5d)), zero output
    projections).
    """

    arch: ClassVar[str] = "lm"

    name: str = ""
    vocab_size: int = 32768
    d_model: int = 1024
    n_heads: int = 8
    n_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_dim: int = 4096
    mlp_type: str = "relu2"
    norm_eps: float = 1e-5
    rope_base: float = 50_000.0
    qk_norm: bool = True
    causal: bool = True
    max_seq_len: int = 2048
    init: str = "scaled-zero"
    init_orthogonal: bool = True
    embed_scale: float = 1.0
    logit_scale: float = 1.0
    logit_softcap: float | None = None
    dtype: str = "float32"
    attention_impl: str | None = None

    def __post_init__(self):
        _check_ints(self, "vocab_size d_model n_heads mlp_dim max_seq_len")
        _check_choice(self.arch, "mlp_type", self.mlp_type, MLP_TYPES)
        _check_choice(self.arch, "dtype", self.dtype, DTYPES)
        _check_choice(self.arch, "attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_choice(self.arch, "init", self.init, ("scaled-zero",))
        self.block_config()  # validates heads / head_dim

    @property
    def std(self) -> float:
        return math.sqrt(2.0 / (5.0 * self.d_model))

    def block_config(self, **changes: Any) -> BlockConfig:
        shared = ("d_model n_heads n_kv_heads head_dim mlp_dim mlp_type norm_eps rope_base qk_norm causal dtype "
                  "attention_impl init_orthogonal").split()
        bc = BlockConfig(**{k: getattr(self, k) for k in shared}, init_std=self.std, out_init="zero")
        return dataclasses.replace(bc, **changes) if changes else bc


@dataclasses.dataclass(frozen=True)
class GPTConfig(LMConfig):
    """Standard pre-norm transformer; ``value_embeds`` adds the reference's per-layer value embeddings on
    alternating layers (the last included), mixed into v through a 2σ gate."""

    arch: ClassVar[str] = "gpt"

    n_layers: int = 6
    value_embeds: bool = True

    def __post_init__(self):
        super().__post_init__()
        _check_ints(self, "n_layers")


@dataclasses.dataclass(frozen=True)
class ParcaeConfig(LMConfig):
    """Parcae looped LM: prelude → (diagonal ZOH injection + recurrent core) × r → C → coda.

    Training depth per sequence: total ~ max(Poisson(mean_recurrence), 1), the last min(total,
    mean_backprop_depth) steps with gradient ("poisson-truncated-full"); ``"fixed"`` always takes
    mean_recurrence − mean_backprop_depth steps without and mean_backprop_depth with gradient. Evaluation
    runs a fixed mean_recurrence steps. ``state_init``: ``like-init`` (truncated normal with the embedding
    std) or ``zero``.

    ``ve_layers``: the layers (numbered over prelude + core + coda) that mix a value embedding into v; None is
    the reference's alternating rule (the last layer included). Imported checkpoints set it where the
    authors' table and gate placement rules disagree (see ``attractor_jax.interop``).
    """

    arch: ClassVar[str] = "parcae"

    n_prelude: int = 2
    n_core: int = 2
    n_coda: int = 2
    mean_recurrence: int = 8
    mean_backprop_depth: int = 4
    sampling: str = "poisson-truncated-full"
    state_init: str = "like-init"
    prelude_norm: bool = True
    value_embeds: bool = True
    ssm_decay: float = math.sqrt(1.0 / 5.0)
    ve_layers: tuple[int, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.ve_layers is not None:  # JSON gives a list; keep the config hashable
            object.__setattr__(self, "ve_layers", tuple(self.ve_layers))
            n = self.n_prelude + self.n_core + self.n_coda
            if any(not isinstance(i, int) or not 0 <= i < n for i in self.ve_layers):
                raise ValueError(f"ParcaeConfig.ve_layers={self.ve_layers!r} must hold layer indices in [0, {n})")
        _check_ints(self, "n_core mean_recurrence mean_backprop_depth")
        _check_ints(self, "n_prelude n_coda", lo=0)
        _check_choice("parcae", "sampling", self.sampling, ("poisson-truncated-full", "fixed"))
        _check_choice("parcae", "state_init", self.state_init, ("like-init", "zero"))
        if not 0.0 < self.ssm_decay < 1.0:
            raise ValueError(f"parcae.ssm_decay={self.ssm_decay!r} must be in (0, 1)")

    def mixes_value_embed(self, layer: int) -> bool:
        """Whether ``layer`` (over prelude + core + coda) has a value-embedding table and gate."""
        if not self.value_embeds:
            return False
        if self.ve_layers is not None:
            return layer in self.ve_layers
        return has_ve(layer, self.n_prelude + self.n_core + self.n_coda)


@dataclasses.dataclass(frozen=True)
class AttractorConfig(LMConfig):
    """Attractor LM: backbone → c → solve y* = c + Δ(y* + c) with the gated weight-tied head → final norm →
    tied unembedding. ``fp_lr_scale``/``fp_wd`` are the head's optimizer settings (read by the trainer).

    Ablation switches (paper Tables 4 and 6; the defaults are the paper's model):

    * ``injection`` — how the proposal c enters the map f whose fixed point is solved:
      ``"additive"`` f(y, c) = H(y + c) − y = c + Δ(y + c) (persistent additive injection);
      ``"init_only"`` f(y, c) = H(y) (c is only the initial iterate, Ouro-style; the fixed point does not
      depend on c, so implicit gradients reach neither c nor the backbone);
      ``"concat"`` f(y, c) = H([y; c] W) − y with a learned W ∈ R^{2d×d} (head parameter ``head.inject``)
      initialised to [I; I], so f equals the additive map at initialisation.
    * ``solve_init`` — the solver's first iterate y₀: ``"proposal"`` stop_gradient(c), ``"zero"`` 0, or
      ``"noise"`` N(0, std²) with the embedding init std sqrt(2/(5d)) (Parcae's "like-init" scale), drawn
      from the call's ``key`` (a fixed key when none is given, e.g. in evaluation).

    Solve settings: ``solver`` and ``backward`` are `attractor_jax.implicit` objects (serialised as
    ``{"kind": ..., **fields}``); ``solve_mixing`` and ``bf16_tol`` are the model's own. ``"token"`` mixing solves
    per token along the causal sequence: each token has its own Anderson weights and statistics and freezes once
    it and every earlier token pass the exit test, so the solve is exactly causal. ``"sequence"`` is the
    reference's solver: one sample per sequence (the flattened [T·d] state), one residual per sequence (reported
    on each of its tokens); not exactly causal, and the only choice for a non-causal head. In bfloat16/float16
    the head's products carry ~2^-8 rounding, so f has a residual floor near 1e-3 relative; ``bf16_tol`` is the
    tolerance used there instead of ``solver.tol``. ``max_iter`` 1 or 2 takes that many plain steps (see
    ``attractor.solver_and_backward``).
    """

    arch: ClassVar[str] = "attractor"
    INJECTIONS: ClassVar[tuple[str, ...]] = ("additive", "init_only", "concat")
    SOLVE_INITS: ClassVar[tuple[str, ...]] = ("proposal", "zero", "noise")

    n_backbone_layers: int = 7
    n_fp_blocks: int = 1
    layer_scale_init: float | None = 0.75
    gamma_max: float = 0.75
    solver: implicit.Solver = implicit.Anderson(max_iter=64, min_iter=6, tol=3e-4)  # forward solver of the head
    backward: implicit.Backward = implicit.Neumann(k=1)  # backward mode (the reference's one-step u = v + Jᵀv)
    solve_mixing: str = "token"  # "token": per token, causally frozen; "sequence": per sequence (reference)
    bf16_tol: float | None = 4e-3  # relative tol in force for bfloat16/float16 compute (None: solver.tol)
    fp_lr_scale: float = 0.5
    fp_wd: float = 0.1
    injection: str = "additive"
    solve_init: str = "proposal"

    def __post_init__(self):
        super().__post_init__()
        _check_ints(self, "n_fp_blocks")
        _check_choice("attractor", "injection", self.injection, self.INJECTIONS)
        _check_choice("attractor", "solve_init", self.solve_init, self.SOLVE_INITS)
        _check_ints(self, "n_backbone_layers", lo=0)
        if not self.gamma_max > 0:
            raise ValueError(f"attractor.gamma_max={self.gamma_max!r} must be > 0")
        _check_solve("attractor", self)
        _check_choice("attractor", "solve_mixing", self.solve_mixing, MIXINGS)
        if self.solve_mixing == "token" and not self.causal:
            raise ValueError("attractor: solve_mixing='token' needs a causal head (causal=True); a non-causal head "
                             "couples every token with every other, so use solve_mixing='sequence'")


POS_ENCODINGS = ("rope", "learned", "none")
REASONER_LOSSES = ("stablemax", "softmax")


@dataclasses.dataclass(frozen=True)
class TRMConfig:
    """TRM-Att, the Tiny Recursive Model (Jolicoeur-Martineau 2025) as in the authors' ``trm/trm.py`` port.

    One tiny network ``L_level`` (``L_layers`` post-norm blocks: non-causal attention with rotate-half RoPE,
    SwiGLU, parameter-free RMSNorm) is used for both updates of an ACT step::

        repeat H_cycles (the first H_cycles − 1 without gradient):
            repeat L_cycles:  z_L ← L(z_L + z_H + x)
            z_H ← L(z_H + z_L)

    x = sqrt(hidden)·[puzzle-embedding prefix (puzzle_emb_len tokens); token embeddings]. Logits come from
    ``lm_head(z_H)`` on the grid positions, the halting logits from ``q_head(z_H[:, 0])``. The carry (z_H,
    z_L) is detached between ACT (deep-supervision) steps; rows that halt restart from the fixed random
    ``H_init``/``L_init``. Training halts a row when ``q_halt > 0`` (``no_ACT_continue``; otherwise when
    q_halt > q_continue, with a bootstrapped continue target) or after ``halt_max_steps``, with exploration
    ``halt_exploration_prob``; evaluation always runs ``halt_max_steps`` steps.

    ``puzzle_emb_ndim``: width of the per-puzzle embedding (None: ``hidden_size``; 0: no puzzle embedding),
    spread over ``puzzle_emb_len`` prefix tokens (0: ceil(ndim / hidden)). ``num_puzzle_identifiers`` comes
    from the dataset (1 for Sudoku-Extreme and Maze-Hard). ``mlp_t``: TRM's MLP-mixer variant (a SwiGLU over
    the sequence axis replaces attention). ``out_init_scale`` multiplies the init std of the residual
    branches' output projections (attention ``o``, SwiGLU ``down``; TRM: 1). ``dtype``: compute dtype of the
    matrix products (parameters and the recurrent state stay float32). ``loss_type``: ``stablemax`` (TRM) or
    ``softmax`` cross-entropy.
    """

    arch: ClassVar[str] = "trm"

    name: str = ""
    vocab_size: int = 11
    seq_len: int = 81
    num_puzzle_identifiers: int = 1
    puzzle_emb_ndim: int | None = None
    puzzle_emb_len: int = 16
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    L_layers: int = 2
    H_cycles: int = 3
    L_cycles: int = 6
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    no_ACT_continue: bool = True
    mlp_t: bool = False
    pos_encodings: str = "rope"
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-5
    out_init_scale: float = 1.0
    loss_type: str = "stablemax"
    dtype: str = "float32"
    attention_impl: str | None = None

    def __post_init__(self):
        owner = type(self).__name__
        _check_ints(self, "vocab_size seq_len num_puzzle_identifiers hidden_size num_heads L_layers H_cycles "
                          "halt_max_steps")
        _check_ints(self, "L_cycles puzzle_emb_len", lo=0)
        if self.puzzle_emb_ndim is not None and not (isinstance(self.puzzle_emb_ndim, int)
                                                     and self.puzzle_emb_ndim >= 0):
            raise ValueError(f"{owner}.puzzle_emb_ndim={self.puzzle_emb_ndim!r} must be None or an int >= 0")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"{owner}: hidden_size={self.hidden_size} must split into num_heads={self.num_heads} "
                             "heads of even size (RoPE)")
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            raise ValueError(f"{owner}.halt_exploration_prob={self.halt_exploration_prob!r} must be in [0, 1]")
        if not self.out_init_scale >= 0:
            raise ValueError(f"{owner}.out_init_scale={self.out_init_scale!r} must be >= 0")
        if not self.expansion > 0:
            raise ValueError(f"{owner}.expansion={self.expansion!r} must be > 0")
        if self.puzzle_ndim > self.puzzle_len * self.hidden_size:
            raise ValueError(f"{owner}: puzzle_emb_ndim={self.puzzle_ndim} does not fit in "
                             f"puzzle_emb_len={self.puzzle_emb_len} tokens of width {self.hidden_size}")
        _check_choice(self.arch, "pos_encodings", self.pos_encodings, POS_ENCODINGS)
        _check_choice(self.arch, "loss_type", self.loss_type, REASONER_LOSSES)
        _check_choice(self.arch, "dtype", self.dtype, DTYPES)
        _check_choice(self.arch, "attention_impl", self.attention_impl, ATTENTION_IMPLS)

    @property
    def puzzle_ndim(self) -> int:
        """Width of one puzzle-embedding row (0: none)."""
        return self.hidden_size if self.puzzle_emb_ndim is None else self.puzzle_emb_ndim

    @property
    def puzzle_len(self) -> int:
        """Prefix tokens taken by the puzzle embedding: ``puzzle_emb_len``, or ceil(ndim / hidden) when that
        is 0; none without a puzzle embedding."""
        if self.puzzle_ndim == 0:
            return 0
        if self.puzzle_emb_len:
            return self.puzzle_emb_len
        return -(self.puzzle_ndim // -self.hidden_size)

    @property
    def total_len(self) -> int:
        """Length of the recurrent state: puzzle prefix + grid."""
        return self.seq_len + self.puzzle_len

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class AttractorReasonerConfig(TRMConfig):
    """The Attractor reasoner: TRM's outer structure with every inner z_L recursion replaced by the solved
    equilibrium

        z_L* = L(z_L* + z_H + x),      solved by ``attractor_jax.fixed_point`` from the carried z_L,

    (``solver``: Anderson by default) and differentiated in the last H cycle by ``backward`` (phantom
    gradient, k = 2 steps from the detached z_L*, by default; Neumann/IFT/unrolled are available).
    ``L_cycles`` is unused. ``jacobian_weight`` > 0 adds λ·||∂f/∂z||²_F / dim (Hutchinson,
    ``jacobian_samples`` probes) at the last cycle's z_L* to the loss, in training only. ``out_init_scale``
    defaults to 1/sqrt(2·8): with TRM's init (1.0) the 8-layer map is expansive at initialisation and no
    solver converges.
    ``max_iter=0`` at call time removes the solver: z_L is left at its carried value (the map is not
    applied); 1 and 2 take that many plain steps. With ``dtype="bfloat16"`` the map itself is only accurate
    to ~2e-3 (relative), so the tolerance in force there is ``bf16_tol`` (as ``AttractorConfig``'s).
    """

    arch: ClassVar[str] = "attractor_reasoner"

    L_layers: int = 8
    out_init_scale: float = 0.25
    solver: implicit.Solver = implicit.Anderson(max_iter=24, tol=1e-3)  # forward solver of z_L
    backward: implicit.Backward = implicit.Phantom(k=2)  # backward mode of the last H cycle's solve
    bf16_tol: float | None = 4e-3  # relative tol in force for bfloat16/float16 compute (None: solver.tol)
    jacobian_weight: float = 0.0
    jacobian_samples: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not self.jacobian_weight >= 0:
            raise ValueError(f"attractor_reasoner.jacobian_weight={self.jacobian_weight!r} must be >= 0")
        _check_ints(self, "jacobian_samples")
        _check_solve("attractor_reasoner", self)


REASONER_CONFIGS = (TRMConfig, AttractorReasonerConfig)

CONFIG_CLASSES: dict[str, type] = {
    c.arch: c for c in (GPTConfig, ParcaeConfig, AttractorConfig, TRMConfig, AttractorReasonerConfig)
}
_ROLES = {"solver": implicit.Solver, "backward": implicit.Backward}  # config fields holding implicit objects


def _kinds(role: type) -> str:
    return ", ".join(k for k, c in implicit.KINDS.items() if issubclass(c, role))


def kind_dict(obj: Any) -> dict[str, Any]:
    """A solver or backward mode as ``{"kind": ..., **fields}`` (its name in `attractor_jax.implicit.KINDS`)."""
    return {"kind": obj.kind, **dataclasses.asdict(obj)}


def _from_kind_dict(head: str, items: dict[str, Any], base: Any) -> Any:
    """``base`` (the config's ``head`` object) updated by ``items``: fields replace its own; a new ``kind`` starts
    from that kind's defaults and keeps the fields the two kinds share. A field the kind lacks raises ValueError."""
    items = dict(items)
    kind = items.pop("kind", base.kind)
    cls = implicit.KINDS.get(kind)
    if cls is None or not issubclass(cls, _ROLES[head]):
        raise ValueError(f"{head}.kind={kind!r} is not valid; expected one of {_kinds(_ROLES[head])}")
    names = _field_names(cls)
    for k in items:
        if k not in names:
            raise ValueError(f"unknown config field {head + '.' + k!r}: {kind} has no field {k!r}; "
                             f"valid fields of {head}: kind, {', '.join(names)}")
    shared = {k: getattr(base, k) for k in _field_names(type(base)) if k in names}
    return cls(**{**shared, **items})


def _upgrade(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Translate a config dict written before solver objects (flat ``solver``/``backward`` dicts holding every
    kind's fields, and ``mixing``/``bf16_tol`` in ``solver``) to the current format: each object keeps the fields
    its kind has, the rest (which the old code never read) is dropped, so the model computes bitwise as before."""
    sv, bw = dict(d.get("solver") or {}), dict(d.get("backward") or {})
    if not ({"mixing", "bf16_tol"} & sv.keys() or "min_iter" in bw):
        return d
    d, fields, base = dict(d), _field_names(cls), cls()
    for old, new in (("mixing", "solve_mixing"), ("bf16_tol", "bf16_tol")):
        if old in sv and new in fields:
            d[new] = sv[old]
    kinds = {"solver": sv.get("kind", base.solver.kind), "backward": bw.get("kind", base.backward.kind)}
    for head, items in (("solver", sv), ("backward", bw)):
        if items and kinds[head] in implicit.KINDS:  # (an unknown kind is reported by apply_overrides)
            keep = _field_names(implicit.KINDS[kinds[head]])
            d[head] = {k: v for k, v in items.items() if k == "kind" or k in keep}
    # The old IFT Anderson adjoint took m/beta/ridge/restart from the solver settings whatever the forward kind;
    # now it takes them from an Anderson forward only.
    a = implicit.Anderson()
    if (kinds["backward"] == "ift" and bw.get("solver", "anderson") == "anderson"
            and kinds["solver"] in ("picard", "broyden")
            and any(sv.get(k, getattr(a, k)) != getattr(a, k) for k in ("m", "beta", "ridge", "restart"))):
        raise ValueError(f"config: this old config's IFT adjoint used the Anderson settings of a {kinds['solver']} "
                         "forward solver, which the current format cannot express")
    return d


def config_to_dict(cfg: LMConfig) -> dict[str, Any]:
    """A JSON-ready dict of ``cfg`` with its architecture under ``"arch"`` (solver objects via ``kind_dict``)."""
    out = {"arch": cfg.arch}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = kind_dict(v) if f.name in _ROLES else v
    return out


def config_from_dict(d: dict[str, Any]) -> LMConfig:
    """Inverse of ``config_to_dict`` (also reads the old flat solver format); unknown architectures or fields
    raise ValueError."""
    d = dict(d)
    arch = d.pop("arch", None)
    if arch not in CONFIG_CLASSES:
        raise ValueError(f"config arch={arch!r} is not known; expected one of {sorted(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[arch]
    return apply_overrides(cls(), _upgrade(cls, d))


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def apply_overrides(cfg: LMConfig, overrides: dict[str, Any]) -> LMConfig:
    """Return ``cfg`` with fields replaced. Keys are plain (``d_model``) or dotted into the solver objects
    (``solver.tol``, ``backward.kind``); ``solver``/``backward`` may also be given whole as an object or as a
    dict (``solver={"kind": "picard", "damping": 0.5}``; see ``_from_kind_dict``). Unknown fields raise
    ValueError."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    valid = _field_names(type(cfg))
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in valid:
            raise ValueError(
                f"unknown config field {key!r} for {type(cfg).__name__}; valid fields: {', '.join(valid)}"
            )
        if head in _ROLES and (rest or isinstance(value, dict)):
            nested.setdefault(head, {}).update({rest: value} if rest else value)
        elif rest:
            raise ValueError(f"config field {head!r} of {type(cfg).__name__} has no sub-fields (got {key!r})")
        else:
            top[key] = value
    for head, items in nested.items():
        top[head] = _from_kind_dict(head, items, top.get(head, getattr(cfg, head)))
    return dataclasses.replace(cfg, **top)
