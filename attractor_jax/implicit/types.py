"""Result types of a fixed-point solve: the value and per-sample statistics (all arrays, never host values)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SolverStats:
    """Per-sample statistics of a solve. Every field has the shape of the batch axes (``[]`` when unbatched).

    iterations: int32, f-evaluations spent on the sample before it converged, diverged or hit ``max_iter``.
    residual:   float32, relative residual ||f(y) - y|| / ||y|| of the returned iterate (inf when max_iter = 0).
    converged:  bool, residual < tol reached after at least ``min_iter`` evaluations.
    diverged:   bool, the sample produced a non-finite or blown-up residual; its value is its best finite iterate.
    """

    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    diverged: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Solution:
    """``value`` has the pytree structure of ``y0``; ``stats`` holds per-sample :class:`SolverStats`."""

    value: Any
    stats: SolverStats
