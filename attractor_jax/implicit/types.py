"""Result types of a fixed-point solve: the value and per-sample statistics (all arrays, never host values)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SolverStats:
    """Per-sample statistics of a solve, describing exactly the returned value. Every field has the shape of the
    sample axes (``[]`` when there are none).

    iterations: int32, f-evaluations spent on the sample before it exited (converged or diverged) or the solve
                hit ``max_iter``. For a causal layout a position keeps iterating until its whole prefix exits.
    residual:   float32, the relative residual ||f(y) - y|| / ||y|| of the returned y (measured when f was
                evaluated at y; inf when ``max_iter = 0``, where nothing was evaluated). Adjoint statistics of a
                Neumann truncation report NaN (nothing is measured).
    converged:  bool, the returned y passes the exit test ||f(y) - y|| <= atol + tol ||y|| (and at least
                ``min_iter`` evaluations were made, and it did not diverge).
    diverged:   bool, the sample (for a causal layout: it or an earlier position) produced a non-finite or
                blown-up residual. An independent sample then returns its best finite measured point; a causal
                position returns the state it was evaluated at, with the residual measured there.
    """

    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    diverged: jax.Array

    def summary(self) -> dict[str, jax.Array]:
        """Scalar metrics over every sample: ``solver_iters``/``solver_iters_max`` (mean/max iterations),
        ``solver_residual``/``solver_residual_max`` (mean/max residual, non-finite ones counted as 0) and the
        ``solver_converged``/``solver_diverged`` fractions."""
        it = self.iterations.astype(jnp.float32)
        res = jnp.where(jnp.isfinite(self.residual), self.residual, 0.0)
        return dict(solver_iters=it.mean(), solver_iters_max=it.max(), solver_residual=res.mean(),
                    solver_residual_max=res.max(), solver_converged=self.converged.astype(jnp.float32).mean(),
                    solver_diverged=self.diverged.astype(jnp.float32).mean())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Solution:
    """``value`` has the pytree structure of ``y0``; ``stats`` holds per-sample :class:`SolverStats`."""

    value: Any
    stats: SolverStats
