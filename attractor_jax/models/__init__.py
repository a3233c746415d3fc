"""Language models built from ``attractor_jax.nn`` blocks: ``AttractorLM``, ``GPT``, ``Parcae``, and their
presets.

Every model is called as ``model(tokens_BT, max_iter=None, tol=None) -> (logits_BTV, aux)``; ``aux`` is a
dict of arrays (solver statistics for the attractor, sampled depths for Parcae, empty for GPT).

    model = create_model("attractor-tiny", seed=0)       # or create_model(name, **{"solver.tol": 1e-4})
    list_presets(); describe_preset("attractor-small-140m")   # no allocation
"""

from attractor_jax.models.attractor import AttractorHead, AttractorLM, make_backward, make_solver
from attractor_jax.models.config import (
    AttractorConfig,
    BackwardConfig,
    GPTConfig,
    LMConfig,
    ParcaeConfig,
    SolverConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from attractor_jax.models.gpt import GPT
from attractor_jax.models.parcae import DiagonalInjection, Parcae, ParcaeCore, sample_depths
from attractor_jax.models.presets import PRESETS, REFERENCE_PARAMS
from attractor_jax.models.registry import (
    abstract_model,
    build_model,
    create_model,
    describe_preset,
    get_config,
    list_presets,
    param_counts,
    preset_summary,
)

__all__ = [
    "PRESETS",
    "REFERENCE_PARAMS",
    "GPT",
    "AttractorConfig",
    "AttractorHead",
    "AttractorLM",
    "BackwardConfig",
    "DiagonalInjection",
    "GPTConfig",
    "LMConfig",
    "Parcae",
    "ParcaeConfig",
    "ParcaeCore",
    "SolverConfig",
    "abstract_model",
    "apply_overrides",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "create_model",
    "describe_preset",
    "get_config",
    "list_presets",
    "make_backward",
    "make_solver",
    "param_counts",
    "preset_summary",
    "sample_depths",
]
