"""Model configurations: frozen dataclasses with defaults, (de)serialisable to plain dicts.

``GPTConfig``, ``ParcaeConfig`` and ``AttractorConfig`` share the transformer fields of ``LMConfig``; the
attractor adds its head and solver settings (``SolverConfig``, ``BackwardConfig``). Field names are the CLI's
override keys (``d_model=256``, ``solver.tol=1e-4``). The puzzle reasoners have their own configs with the
reference's TRM field names: ``TRMConfig`` and ``AttractorReasonerConfig`` (TRM + solver settings).
``config_to_dict``/``config_from_dict`` round-trip a config (with its architecture name) through JSON for
checkpoints and results files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from attractor_jax.nn.config import ATTENTION_IMPLS, DTYPES, MLP_TYPES, BlockConfig

SOLVER_KINDS = ("anderson", "picard", "broyden")
MIXINGS = ("token", "sequence")
BACKWARD_KINDS = ("neumann", "ift", "phantom", "unrolled")
IFT_SOLVERS = ("anderson", "picard", "broyden", "gmres")


def _check_choice(owner: str, field: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{field}={value!r} is not valid; expected one of {choices}")


def _check_positive(owner: str, **values: Any) -> None:
    for k, v in values.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"{owner}.{k}={v!r} must be a positive int")


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Forward solver of the attractor head (see ``attractor_jax.implicit``).

    ``tol`` is the relative tolerance and ``atol`` the absolute one: a token exits when
    ||f(y) − y|| <= atol + tol·||y||. ``beta``/``m``/``ridge``/``restart`` are Anderson's mixing, window, relative
    ridge and restart safeguard; ``damping`` is Picard's; ``memory`` is Broyden's rank.

    ``mixing``: ``"token"`` (default) solves per token along the causal sequence (``causal_axis``): each token has
    its own Anderson weights and statistics, and freezes once it and every earlier token of its sequence pass the
    exit test, which keeps the solve exactly causal. ``"sequence"`` is the reference's solver: one sample per
    sequence (the flattened [T·d] state), one set of Anderson weights and one residual per sequence (reported on
    every token of it); the batch stops when every sequence has converged. It is not exactly causal (a later
    token's residual moves earlier tokens' weights and stopping), and it is the only choice for a non-causal head.

    ``bf16_tol``: the relative tolerance used instead of ``tol`` when the model computes in bfloat16 or float16.
    The head's products then carry ~2^-8 relative rounding, so f has a residual floor near 1e-3 relative below
    which no solver converges; None keeps ``tol`` (and a tol below the floor then runs every token to max_iter).

    ``max_iter`` 1 or 2 takes that many plain steps y ← f(y, c) (the paper's T = 1, 2 readouts), differentiated
    through the steps (the configured backward is for a solved fixed point, not for a truncated iteration), plus
    one evaluation that measures the residual of the returned state: ``iterations`` reports max_iter + 1.
    """

    kind: str = "anderson"
    max_iter: int = 64
    min_iter: int = 6
    tol: float = 3e-4
    atol: float = 0.0
    m: int = 5
    beta: float = 1.0
    ridge: float = 1e-4
    restart: bool = True
    damping: float = 1.0
    memory: int = 20
    mixing: str = "token"
    bf16_tol: float | None = 4e-3

    def __post_init__(self):
        _check_choice("solver", "kind", self.kind, SOLVER_KINDS)
        _check_choice("solver", "mixing", self.mixing, MIXINGS)
        if not (isinstance(self.max_iter, int) and self.max_iter >= 0):
            raise ValueError(f"solver.max_iter={self.max_iter!r} must be an int >= 0")
        if not (isinstance(self.min_iter, int) and self.min_iter >= 0):
            raise ValueError(f"solver.min_iter={self.min_iter!r} must be an int >= 0")
        if not self.tol >= 0:
            raise ValueError(f"solver.tol={self.tol!r} must be >= 0")
        if not self.atol >= 0:
            raise ValueError(f"solver.atol={self.atol!r} must be >= 0")
        if self.bf16_tol is not None and not self.bf16_tol >= 0:
            raise ValueError(f"solver.bf16_tol={self.bf16_tol!r} must be >= 0 or None")

    def tol_for(self, dtype: str) -> float:
        """The relative tolerance in force for a compute dtype (``bf16_tol`` for bfloat16/float16)."""
        low = dtype in ("bfloat16", "float16")
        return self.bf16_tol if low and self.bf16_tol is not None else self.tol


@dataclasses.dataclass(frozen=True)
class BackwardConfig:
    """Backward mode of the attractor head.

    ``neumann``: u = v + Jᵀv + … + (Jᵀ)ᵏv (k=1 is the reference's "onestep", k=0 the paper's u = v), with a
    per-sample ``clip``. ``ift``: solve (I − Jᵀ)u = v with ``solver`` (Anderson inherits the forward m/β),
    ``tol`` and ``max_iter`` (None: the forward's). ``phantom``: backprop through ``k`` damped steps from y*.
    ``unrolled``: through the whole solve. ``min_iter`` records the reference's backward min_iter; the adjoint
    solve of ``attractor_jax.implicit`` has none (it stops at ``tol``).
    """

    kind: str = "neumann"
    k: int = 1
    clip: float | None = None
    solver: str = "anderson"
    tol: float | None = None
    max_iter: int | None = None
    min_iter: int = 0
    damping: float = 1.0

    def __post_init__(self):
        _check_choice("backward", "kind", self.kind, BACKWARD_KINDS)
        _check_choice("backward", "solver", self.solver, IFT_SOLVERS)


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
        _check_positive(
            type(self).__name__,
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            n_heads=self.n_heads,
            mlp_dim=self.mlp_dim,
            max_seq_len=self.max_seq_len,
        )
        _check_choice(self.arch, "mlp_type", self.mlp_type, MLP_TYPES)
        _check_choice(self.arch, "dtype", self.dtype, DTYPES)
        _check_choice(self.arch, "attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_choice(self.arch, "init", self.init, ("scaled-zero",))
        self.block_config()  # validates heads / head_dim

    @property
    def std(self) -> float:
        return math.sqrt(2.0 / (5.0 * self.d_model))

    def block_config(self, **changes: Any) -> BlockConfig:
        bc = BlockConfig(
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            mlp_dim=self.mlp_dim,
            mlp_type=self.mlp_type,
            norm_eps=self.norm_eps,
            rope_base=self.rope_base,
            qk_norm=self.qk_norm,
            causal=self.causal,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            init_std=self.std,
            init_orthogonal=self.init_orthogonal,
            out_init="zero",
        )
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
        _check_positive("GPTConfig", n_layers=self.n_layers)


@dataclasses.dataclass(frozen=True)
class ParcaeConfig(LMConfig):
    """Parcae looped LM: prelude → (diagonal ZOH injection + recurrent core) × r → C → coda.

    Training depth per sequence: total ~ max(Poisson(mean_recurrence), 1), the last min(total,
    mean_backprop_depth) steps with gradient ("poisson-truncated-full"); ``"fixed"`` always takes
    mean_recurrence − mean_backprop_depth steps without and mean_backprop_depth with gradient. Evaluation
    runs a fixed mean_recurrence steps. ``state_init``: ``like-init`` (truncated normal with the embedding
    std) or ``zero``.
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

    def __post_init__(self):
        super().__post_init__()
        _check_positive(
            "ParcaeConfig",
            n_core=self.n_core,
            mean_recurrence=self.mean_recurrence,
            mean_backprop_depth=self.mean_backprop_depth,
        )
        for k in ("n_prelude", "n_coda"):
            v = getattr(self, k)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"ParcaeConfig.{k}={v!r} must be an int >= 0")
        _check_choice("parcae", "sampling", self.sampling, ("poisson-truncated-full", "fixed"))
        _check_choice("parcae", "state_init", self.state_init, ("like-init", "zero"))
        if not 0.0 < self.ssm_decay < 1.0:
            raise ValueError(f"parcae.ssm_decay={self.ssm_decay!r} must be in (0, 1)")


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
    """

    arch: ClassVar[str] = "attractor"
    INJECTIONS: ClassVar[tuple[str, ...]] = ("additive", "init_only", "concat")
    SOLVE_INITS: ClassVar[tuple[str, ...]] = ("proposal", "zero", "noise")

    n_backbone_layers: int = 7
    n_fp_blocks: int = 1
    layer_scale_init: float | None = 0.75
    gamma_max: float = 0.75
    solver: SolverConfig = SolverConfig()
    backward: BackwardConfig = BackwardConfig()
    fp_lr_scale: float = 0.5
    fp_wd: float = 0.1
    injection: str = "additive"
    solve_init: str = "proposal"

    def __post_init__(self):
        super().__post_init__()
        _check_positive("AttractorConfig", n_fp_blocks=self.n_fp_blocks)
        _check_choice("attractor", "injection", self.injection, self.INJECTIONS)
        _check_choice("attractor", "solve_init", self.solve_init, self.SOLVE_INITS)
        if not (isinstance(self.n_backbone_layers, int) and self.n_backbone_layers >= 0):
            raise ValueError(
                f"AttractorConfig.n_backbone_layers={self.n_backbone_layers!r} must be an int >= 0"
            )
        if not self.gamma_max > 0:
            raise ValueError(f"attractor.gamma_max={self.gamma_max!r} must be > 0")
        if self.solver.mixing == "token" and not self.causal:
            raise ValueError(
                "attractor: solver.mixing='token' needs a causal head (causal=True); a non-causal head couples "
                "every token with every other, so use solver.mixing='sequence'"
            )


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
        _check_positive(
            owner,
            vocab_size=self.vocab_size,
            seq_len=self.seq_len,
            num_puzzle_identifiers=self.num_puzzle_identifiers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            L_layers=self.L_layers,
            H_cycles=self.H_cycles,
            halt_max_steps=self.halt_max_steps,
        )
        for k in ("L_cycles", "puzzle_emb_len"):
            v = getattr(self, k)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"{owner}.{k}={v!r} must be an int >= 0")
        if self.puzzle_emb_ndim is not None and not (
            isinstance(self.puzzle_emb_ndim, int) and self.puzzle_emb_ndim >= 0
        ):
            raise ValueError(f"{owner}.puzzle_emb_ndim={self.puzzle_emb_ndim!r} must be None or an int >= 0")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"{owner}: hidden_size={self.hidden_size} must split into num_heads={self.num_heads} "
                "heads of even size (RoPE)"
            )
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            raise ValueError(
                f"{owner}.halt_exploration_prob={self.halt_exploration_prob!r} must be in [0, 1]"
            )
        if not self.out_init_scale >= 0:
            raise ValueError(f"{owner}.out_init_scale={self.out_init_scale!r} must be >= 0")
        if not self.expansion > 0:
            raise ValueError(f"{owner}.expansion={self.expansion!r} must be > 0")
        if self.puzzle_ndim > self.puzzle_len * self.hidden_size:
            raise ValueError(
                f"{owner}: puzzle_emb_ndim={self.puzzle_ndim} does not fit in "
                f"puzzle_emb_len={self.puzzle_emb_len} tokens of width {self.hidden_size}"
            )
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
    to ~2e-3 (relative), so ``solver.tol`` must be at least ~3e-3 or the solver runs to ``max_iter``.
    """

    arch: ClassVar[str] = "attractor_reasoner"

    L_layers: int = 8
    out_init_scale: float = 0.25
    solver: SolverConfig = SolverConfig(kind="anderson", max_iter=24, min_iter=0, tol=1e-3, m=5, beta=1.0)
    backward: BackwardConfig = BackwardConfig(kind="phantom", k=2)
    jacobian_weight: float = 0.0
    jacobian_samples: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not self.jacobian_weight >= 0:
            raise ValueError(f"attractor_reasoner.jacobian_weight={self.jacobian_weight!r} must be >= 0")
        _check_positive("AttractorReasonerConfig", jacobian_samples=self.jacobian_samples)
        if not isinstance(self.solver, SolverConfig) or not isinstance(self.backward, BackwardConfig):
            raise ValueError("attractor_reasoner: solver/backward must be SolverConfig/BackwardConfig")


REASONER_CONFIGS = (TRMConfig, AttractorReasonerConfig)
ModelConfig = LMConfig | TRMConfig

CONFIG_CLASSES: dict[str, type] = {
    c.arch: c for c in (GPTConfig, ParcaeConfig, AttractorConfig, TRMConfig, AttractorReasonerConfig)
}
_NESTED = {"solver": SolverConfig, "backward": BackwardConfig}


def config_to_dict(cfg: LMConfig) -> dict[str, Any]:
    """A JSON-ready dict of ``cfg`` (nested configs as dicts) with its architecture under ``"arch"``."""
    return {"arch": cfg.arch, **dataclasses.asdict(cfg)}


def config_from_dict(d: dict[str, Any]) -> LMConfig:
    """Inverse of ``config_to_dict``; unknown architectures or fields raise ValueError."""
    d = dict(d)
    arch = d.pop("arch", None)
    if arch not in CONFIG_CLASSES:
        raise ValueError(f"config arch={arch!r} is not known; expected one of {sorted(CONFIG_CLASSES)}")
    return apply_overrides(CONFIG_CLASSES[arch](), d)


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def apply_overrides(cfg: LMConfig, overrides: dict[str, Any]) -> LMConfig:
    """Return ``cfg`` with fields replaced. Keys are plain (``d_model``) or dotted (``solver.tol``); a nested
    config may also be given whole as a dict or instance (``solver={"tol": 1e-4}``). Unknown fields raise
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
        if rest or (head in _NESTED and isinstance(value, dict)):
            cls = _NESTED.get(head)
            if cls is None:
                raise ValueError(
                    f"config field {head!r} of {type(cfg).__name__} has no sub-fields (got {key!r})"
                )
            items = {rest: value} if rest else value
            for sub in items:
                if sub not in _field_names(cls):
                    raise ValueError(
                        f"unknown config field {head + '.' + sub!r}; valid fields of {head}: "
                        f"{', '.join(_field_names(cls))}"
                    )
            nested.setdefault(head, {}).update(items)
        else:
            top[key] = value
    for head, items in nested.items():
        base = top.get(head, getattr(cfg, head))
        top[head] = dataclasses.replace(base, **items)
    return dataclasses.replace(cfg, **top)
