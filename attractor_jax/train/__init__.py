"""Training: optimisers (``optim``), mesh and sharding rules (``sharding``), orbax checkpoints
(``checkpoint``), metrics (``metrics``) and the resumable sharded loop (``trainer``)."""

from attractor_jax.train.optim import (
    LABELS,
    OptimConfig,
    OptimState,
    describe_groups,
    label_table,
    make_optimizer,
    make_schedule,
    optimizer_metrics,
    param_labels,
    skipped_steps,
)
from attractor_jax.train.sharding import LOGICAL_RULES, make_mesh, parse_mesh, state_shardings
from attractor_jax.train.trainer import (
    DataConfig,
    RunConfig,
    TrainConfig,
    TrainState,
    apply_sets,
    evaluate,
    make_steps,
    train,
)

__all__ = [
    "LOGICAL_RULES",
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "TrainState",
    "apply_sets",
    "evaluate",
    "make_mesh",
    "make_steps",
    "parse_mesh",
    "state_shardings",
    "train",
    "LABELS",
    "OptimConfig",
    "OptimState",
    "describe_groups",
    "label_table",
    "make_optimizer",
    "make_schedule",
    "optimizer_metrics",
    "param_labels",
    "skipped_steps",
]
