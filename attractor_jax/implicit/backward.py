"""Backward modes of `fixed_point`: how d(loss)/d(args) is obtained from y* = f(y*, args).

With v = dL/dy* and J = df/dy at y*, the implicit function theorem gives dL/dargs = u^T df/dargs where u solves
the adjoint equation

    (I - J^T) u = v.

* `IFT`      solves it (matrix-free VJPs; Picard/Anderson/Broyden or GMRES).
* `Neumann`  truncates u = sum_{i<=k} (J^T)^i v (k=0: the paper's u = v; k=1: the reference code's u = v + J^T v).
* `Phantom`  differentiates k damped applications of f started from the detached fixed point.
* `Unrolled` differentiates the whole solve (memory grows with depth; a baseline).

All are frozen dataclasses: hashable and static under ``jit``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from attractor_jax.implicit.solvers import Anderson, Broyden, Picard, _Solver


@dataclasses.dataclass(frozen=True)
class IFT:
    """Solve (I - J^T) u = v at the fixed point.

    solver: "anderson" | "picard" | "broyden" | "gmres", or a solver instance (its tol/max_iter are used unless
    overridden here). The adjoint is solved per sample like the forward; its per-sample iterations, residual and
    convergence are reported through `adjoint_probe` / `adjoint_stats`.
    """

    solver: object = "anderson"
    tol: Optional[float] = None
    max_iter: Optional[int] = None
    restart: int = 20  # GMRES only

    def __post_init__(self):
        if isinstance(self.solver, str) and self.solver not in ("anderson", "picard", "broyden", "gmres"):
            raise ValueError(
                f"IFT: solver={self.solver!r} is not one of 'anderson', 'picard', 'broyden', 'gmres' "
                "or a solver instance"
            )
        if not isinstance(self.solver, (str, _Solver)):
            raise ValueError(f"IFT: solver={self.solver!r} must be a name or a solver instance")
        if self.max_iter is not None and not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise ValueError(f"IFT: max_iter={self.max_iter!r} must be an int >= 1")
        if self.tol is not None and not self.tol >= 0:
            raise ValueError(f"IFT: tol={self.tol!r} must be >= 0")

    def adjoint_solver(self, forward: _Solver) -> _Solver:
        """The solver used on the adjoint; unspecified tol/max_iter inherit the forward solver's."""
        tol = self.tol if self.tol is not None else forward.tol
        max_iter = self.max_iter if self.max_iter is not None else max(forward.max_iter, 1)
        if isinstance(self.solver, _Solver):
            return self.solver.replace(tol=tol, max_iter=max_iter, min_iter=0)
        if self.solver == "picard":
            return Picard(tol=tol, max_iter=max_iter)
        if self.solver == "broyden":
            return Broyden(tol=tol, max_iter=max_iter)
        m = forward.m if isinstance(forward, Anderson) else 5
        return Anderson(m=m, tol=tol, max_iter=max_iter)


@dataclasses.dataclass(frozen=True)
class Neumann:
    """u = v + J^T v + ... + (J^T)^k v. ``clip`` bounds each term per sample: ||(J^T)t|| <= clip * ||t||."""

    k: int = 1
    clip: Optional[float] = None

    def __post_init__(self):
        if not (isinstance(self.k, int) and self.k >= 0):
            raise ValueError(f"Neumann: k={self.k!r} must be an int >= 0")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"Neumann: clip={self.clip!r} must be > 0 or None")


@dataclasses.dataclass(frozen=True)
class Phantom:
    """Backpropagate through y_{i+1} = (1 - damping) y_i + damping f(y_i), i < k, from y_0 = stop_gradient(y*).

    The returned *value* is y* itself (so that the solve's statistics describe it); its *gradient* is that of y_k
    (a straight-through y* + y_k - stop_gradient(y_k)). y_k and y* agree up to the solver tolerance.
    """

    k: int = 2
    damping: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"Phantom: k={self.k!r} must be an int >= 1")
        if not 0 < self.damping <= 1:
            raise ValueError(f"Phantom: damping={self.damping!r} must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """Backpropagate through every solver iteration (a fixed ``max_iter``-step scan). For comparisons only."""

