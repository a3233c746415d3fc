"""Models built from ``attractor_jax.nn`` blocks: the language models ``AttractorLM``, ``GPT``, ``Parcae``;
the puzzle reasoners ``TRM`` and ``AttractorReasoner`` (``reasoner``, losses in ``reasoner_losses``); their
presets.

Every model is called as ``model(tokens_BT, max_iter=None, tol=None) -> (logits_BTV, aux)``; ``aux`` is a
dict of arrays (solver statistics for the attractor, sampled depths for Parcae, empty for GPT).

    model = create_model("attractor-tiny", seed=0)       # or create_model(name, **{"solver.tol": 1e-4})
    list_presets(); describe_preset("attractor-small-140m")   # no allocation

The reasoners are called one ACT step at a time on a carry: ``model(carry, batch, train=..., key=...) ->
(carry, outputs)``, with ``act_loss(outputs)`` and ``model.predict(batch)`` for evaluation (see
``attractor_jax.models.reasoner``).
"""

from attractor_jax.models.attractor import AttractorHead, AttractorLM, solver_and_backward
from attractor_jax.models.config import (
    AttractorConfig,
    AttractorReasonerConfig,
    TRMConfig,
    GPTConfig,
    LMConfig,
    ParcaeConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    kind_dict,
)
from attractor_jax.models.gpt import GPT
from attractor_jax.models.parcae import DiagonalInjection, Parcae, ParcaeCore, sample_depths
from attractor_jax.models.presets import PRESETS, REFERENCE_PARAMS
from attractor_jax.models.reasoner import IGNORE_LABEL_ID, TRM, AttractorReasoner
from attractor_jax.models.reasoner_losses import (
    act_loss,
    log_stablemax,
    puzzle_accuracy,
    softmax_cross_entropy,
    solver_metrics,
    stablemax_cross_entropy,
    summarize_act_metrics,
)
from attractor_jax.models.registry import (
    abstract_model,
    build_model,
    check_depths,
    create_model,
    describe_preset,
    get_config,
    has_depth,
    is_reasoner,
    list_presets,
    param_counts,
    preset_summary,
)

__all__ = [
    "IGNORE_LABEL_ID",
    "PRESETS",
    "REFERENCE_PARAMS",
    "GPT",
    "TRM",
    "AttractorConfig",
    "AttractorHead",
    "AttractorLM",
    "AttractorReasoner",
    "AttractorReasonerConfig",
    "TRMConfig",
    "act_loss",
    "check_depths",
    "has_depth",
    "is_reasoner",
    "log_stablemax",
    "puzzle_accuracy",
    "softmax_cross_entropy",
    "solver_metrics",
    "stablemax_cross_entropy",
    "summarize_act_metrics",
    "DiagonalInjection",
    "GPTConfig",
    "LMConfig",
    "Parcae",
    "ParcaeConfig",
    "ParcaeCore",
    "abstract_model",
    "apply_overrides",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "create_model",
    "describe_preset",
    "get_config",
    "kind_dict",
    "list_presets",
    "param_counts",
    "preset_summary",
    "sample_depths",
    "solver_and_backward",
]
