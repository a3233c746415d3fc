"""Backward modes of `fixed_point`: how d(loss)/d(args) is obtained from y* = f(y*, args).

With v = dL/dy* and J = df/dy at y*, the implicit function theorem gives dL/dargs = u^T df/dargs where u solves
the adjoint equation

    (I - J^T) u = v.

* `IFT`      solves it (matrix-free VJPs; Picard/Anderson/Broyden or GMRES).
* `Neumann`  truncates u = sum_{i<=k} (J^T)^i v (k=0: the paper's u = v; k=1: the reference code's u = v + J^T v).
* `Phantom`  differentiates k damped applications of f started from the detached fixed point.
* `Unrolled` differentiates the whole solve (memory grows with depth; a baseline).

Each mode is a frozen dataclass (hashable, static under ``jit``) that carries its behaviour: ``apply`` runs the
solve with the mode's derivative attached, so adding a mode is adding a `Backward` subclass here. IFT and Neumann
are a `jax.custom_jvp` whose tangent solves t = J t + (df/dargs) args_dot with `jax.lax.custom_linear_solve`; JAX
transposes it for reverse mode into the adjoint solve u = v + J^T u, so `jax.jvp`/`jax.jacfwd` and `jax.grad`
work and memory does not depend on the number of solver iterations. With an adjoint ``probe`` they are a
reverse-only `jax.custom_vjp` that saves (y*, args) and recomputes f.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attractor_jax.implicit.solvers import (Anderson, Broyden, Picard, Solver, check_ints, check_step,
                                            relative_residual, sq_norm)
from attractor_jax.implicit.types import SolverStats

PROBE_FIELDS = 4  # iterations, residual, converged, diverged


def adjoint_probe(batch_shape: Sequence[int] | int = ()) -> jax.Array:
    """A zero array to pass as ``fixed_point(..., probe=p)``; its gradient carries the IFT adjoint statistics.

    Gradients cannot return auxiliary data, so the backward pass writes the adjoint solver's per-sample
    (iterations, residual, converged, diverged) into the probe's cotangent; decode it with `adjoint_stats`.
    ``batch_shape`` is the statistics shape (the sample axes of y0).
    """
    shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
    return jnp.zeros(shape + (PROBE_FIELDS,), jnp.float32)


def adjoint_stats(probe_grad: jax.Array) -> SolverStats:
    """Decode the gradient of an `adjoint_probe` into per-sample adjoint :class:`SolverStats`."""
    return SolverStats(
        iterations=probe_grad[..., 0].astype(jnp.int32),
        residual=probe_grad[..., 1],
        converged=probe_grad[..., 2] > 0.5,
        diverged=probe_grad[..., 3] > 0.5,
    )


def _pack_stats(stats: SolverStats) -> jax.Array:
    fields = (stats.iterations, stats.residual, stats.converged, stats.diverged)
    return jnp.stack([a.astype(jnp.float32) for a in fields], axis=-1)


def _zero_tangent(a: jax.Array):
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.zeros_like(a)
    return np.zeros(a.shape, jax.dtypes.float0)


class Backward:
    """Base of the backward modes. ``apply(solver, fn, x0, params, layout, probe)`` solves x = fn(x, params) for
    a flat ``[S, N]`` state from ``x0`` and returns ``(x*, stats)`` differentiable with respect to ``params`` as
    the mode defines; ``layout`` is `fixed_point`'s `BatchLayout` (``seq_len`` for causal layouts, ``per_sample``
    for the probe) and ``probe`` an `adjoint_probe` or None."""

    kind: ClassVar[str]  # the name in serialised configs (`attractor_jax.implicit.KINDS`)

    def apply(self, solver: Solver, fn: Callable, x0: jax.Array, params: Any, layout, probe) -> tuple:
        raise NotImplementedError

    def vjps(self, max_iter: int) -> float:
        """VJPs through f per backward pass with a forward budget of ``max_iter`` (for FLOP estimates)."""
        raise NotImplementedError

    def extra_evals(self) -> int:
        """f-evaluations the forward pass makes after the solve (counted in NFE)."""
        return 0


class _Implicit(Backward):
    """Modes defined by the linear system u = v + A u: A = J for the tangent (forward mode), J^T for the adjoint.

    ``linear_solve(apply_a, v, forward, seq_len, reverse)`` returns (u, stats) per sample; ``reverse=True`` is the
    adjoint, which couples positions anti-causally when the forward map is causal (mirrored freezing rule).
    """

    def linear_solve(self, apply_a, v, forward: Solver, seq_len, reverse: bool) -> tuple[jax.Array, SolverStats]:
        raise NotImplementedError

    def apply(self, solver, fn, x0, params, layout, probe):
        x0 = jax.lax.stop_gradient(x0)
        if probe is None:
            return self._jvp(solver, fn, x0, params, layout.seq_len)
        return self._vjp(solver, fn, x0, params, layout, probe)

    def _vjp(self, solver, fn, x0, params, layout, probe):
        """custom_vjp solve (reverse mode only): the adjoint from (x*, params); its statistics go to the probe."""
        seq_len = layout.seq_len

        @jax.custom_vjp
        def run(x0, params, probe):
            return solver.solve(lambda x: fn(x, params), x0, seq_len=seq_len)

        def run_fwd(x0, params, probe):
            x, stats = solver.solve(lambda x: fn(x, params), x0, seq_len=seq_len)
            return (x, stats), (x, params)

        def run_bwd(res, ct):
            x_star, params = res
            _, vjp = jax.vjp(fn, x_star, params)
            vjp_y = lambda w: vjp(w.astype(x_star.dtype))[0]  # noqa: E731
            u, adj = self.linear_solve(vjp_y, ct[0], solver, seq_len, reverse=True)
            return None, vjp(u)[1], layout.per_sample(_pack_stats(adj)).reshape(probe.shape)

        run.defvjp(run_fwd, run_bwd)
        return run(x0, params, probe)

    def _jvp(self, solver, fn, x0, params, seq_len):
        """custom_jvp solve: the tangent t = J t + (df/dp) p_dot by `jax.lax.custom_linear_solve` (forward causal
        rule); its transpose is the adjoint u = v + J^T u (mirrored rule), so `jax.grad` is JAX's transpose of the
        tangent map and `jax.jvp`, `jax.jacfwd` and Hessian-vector products work too. Reverse mode keeps one
        linearisation of f at (y*, p)."""

        @jax.custom_jvp
        def run(x0, params):
            return solver.solve(lambda x: fn(x, params), x0, seq_len=seq_len)

        @run.defjvp
        def run_jvp(primals, tangents):
            x0, params = primals
            _, params_dot = tangents
            x_star, stats = run(x0, params)
            _, b = jax.jvp(lambda p: fn(x_star, p), (params,), (params_dot,))
            _, lin = jax.linearize(lambda x: fn(x, params), x_star)
            lin_t = jax.linear_transpose(lin, x_star)
            apply_j = lambda t: lin(t.astype(x_star.dtype))  # noqa: E731
            apply_jt = lambda u: lin_t(u.astype(x_star.dtype))[0]  # noqa: E731

            def solve(_matvec, rhs):
                return self.linear_solve(apply_j, rhs, solver, seq_len, reverse=False)[0]

            def transpose_solve(_vecmat, rhs):
                return self.linear_solve(apply_jt, rhs, solver, seq_len, reverse=True)[0]

            t = jax.lax.custom_linear_solve(lambda w: w - apply_j(w), b, solve, transpose_solve)
            return (x_star, stats), (t, jax.tree_util.tree_map(_zero_tangent, stats))

        return run(x0, params)


@dataclasses.dataclass(frozen=True)
class IFT(_Implicit):
    """Solve (I - J^T) u = v at the fixed point with ``solver``; tol/max_iter default to the forward solver's.

    The Anderson adjoint takes the forward's m, beta, ridge and restart when the forward is Anderson (else
    Anderson's defaults). The adjoint is solved per sample like the forward; its per-sample iterations, residual
    and convergence are reported through `adjoint_probe` / `adjoint_stats` (GMRES reports iterations -1).
    """

    kind: ClassVar[str] = "ift"
    solver: str = "anderson"  # "anderson" | "picard" | "broyden" | "gmres"
    tol: Optional[float] = None  # adjoint relative tolerance (None: the forward's)
    max_iter: Optional[int] = None  # adjoint budget (None: the forward's)
    restart: Optional[int] = None  # GMRES restart length (None: 20); GMRES only

    def __post_init__(self):
        if self.solver not in ("anderson", "picard", "broyden", "gmres"):
            raise ValueError(f"IFT: solver={self.solver!r} is not one of 'anderson', 'picard', 'broyden', 'gmres'")
        if self.max_iter is not None:
            check_ints("IFT", 1, max_iter=self.max_iter)
        if self.tol is not None and not self.tol >= 0:
            raise ValueError(f"IFT: tol={self.tol!r} must be >= 0")
        if self.restart is not None and (self.solver != "gmres" or not (isinstance(self.restart, int)
                                                                       and self.restart >= 1)):
            raise ValueError(f"IFT: restart={self.restart!r} needs solver='gmres' and an int >= 1")

    def _budget(self, forward: Solver) -> tuple[float, int]:
        tol = self.tol if self.tol is not None else forward.tol
        return tol, self.max_iter if self.max_iter is not None else max(forward.max_iter, 1)

    def adjoint_solver(self, forward: Solver) -> Solver:
        """The solver used on the adjoint (not for GMRES)."""
        tol, max_iter = self._budget(forward)
        if self.solver == "picard":
            return Picard(tol=tol, max_iter=max_iter)
        if self.solver == "broyden":
            return Broyden(tol=tol, max_iter=max_iter)
        a = forward if isinstance(forward, Anderson) else Anderson()
        return Anderson(m=a.m, beta=a.beta, ridge=a.ridge, restart=a.restart, tol=tol, max_iter=max_iter)

    def linear_solve(self, apply_a, v, forward, seq_len, reverse):
        if self.solver != "gmres":
            return self.adjoint_solver(forward).solve(lambda u: v + apply_a(u), v, seq_len=seq_len, reverse=reverse)
        tol, budget = self._budget(forward)
        restart = 20 if self.restart is None else self.restart
        u, _ = jax.scipy.sparse.linalg.gmres(
            lambda w: w - apply_a(w), v, x0=v, tol=tol, restart=restart,
            maxiter=max(1, -(-budget // restart)), solve_method="batched",
        )
        res = relative_residual(v + apply_a(u), u)
        ok = jnp.isfinite(res)
        u = jnp.where(ok[:, None], u, v)
        return u, SolverStats(
            iterations=jnp.full(res.shape, -1, jnp.int32),  # GMRES does not report per-sample counts
            residual=jnp.where(ok, res, relative_residual(v + apply_a(v), v)),
            converged=ok & (res <= tol),
            diverged=~ok,
        )

    def vjps(self, max_iter):
        return float(self.max_iter or max_iter) + 1.0  # at most this many


@dataclasses.dataclass(frozen=True)
class Neumann(_Implicit):
    """u = v + J^T v + ... + (J^T)^k v. ``clip`` bounds each term per sample: ||(J^T)t|| <= clip * ||t||."""

    kind: ClassVar[str] = "neumann"
    k: int = 1  # terms after v (0: u = v)
    clip: Optional[float] = None  # per-sample bound on each term's growth (None: no clip)

    def __post_init__(self):
        check_ints("Neumann", 0, k=self.k)
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"Neumann: clip={self.clip!r} must be > 0 or None")

    def linear_solve(self, apply_a, v, forward, seq_len, reverse):
        u, term = v, v
        for _ in range(self.k):
            nxt = apply_a(term)
            if self.clip is not None:
                ratio = jnp.sqrt(sq_norm(nxt)) / jnp.maximum(jnp.sqrt(sq_norm(term)), 1e-30)
                nxt = nxt * jnp.minimum(1.0, self.clip / jnp.maximum(ratio, 1e-30))[:, None].astype(nxt.dtype)
            term = nxt
            u = u + term
        s = v.shape[:1]
        return u, SolverStats(
            iterations=jnp.full(s, self.k, jnp.int32),
            residual=jnp.full(s, jnp.nan, jnp.float32),  # a truncation measures no residual
            converged=jnp.zeros(s, bool),
            diverged=~jnp.all(jnp.isfinite(u), axis=-1),
        )

    def vjps(self, max_iter):
        return float(self.k + 1)


@dataclasses.dataclass(frozen=True)
class Phantom(Backward):
    """Backpropagate through y_{i+1} = (1 - damping) y_i + damping f(y_i), i < k, from y_0 = stop_gradient(y*).

    The returned *value* is y* itself (so that the solve's statistics describe it); its *gradient* is that of y_k
    (a straight-through y* + y_k - stop_gradient(y_k)). y_k and y* agree up to the solver tolerance.
    """

    kind: ClassVar[str] = "phantom"
    k: int = 2  # damped steps differentiated
    damping: float = 1.0  # step length of each phantom step

    def __post_init__(self):
        check_ints("Phantom", 1, k=self.k)
        check_step("Phantom", damping=self.damping)

    def apply(self, solver, fn, x0, params, layout, probe):
        sg = jax.lax.stop_gradient
        x_star, stats = solver.solve(lambda x: fn(x, sg(params)), sg(x0), seq_len=layout.seq_len)
        x = x_star = sg(x_star)
        for _ in range(self.k):
            x = x + self.damping * (fn(x, params) - x)
        return x_star + (x - sg(x)), stats

    def vjps(self, max_iter):
        return float(self.k)

    def extra_evals(self):
        return self.k


@dataclasses.dataclass(frozen=True)
class Unrolled(Backward):
    """Backpropagate through every solver iteration (a fixed ``max_iter``-step scan). For comparisons only."""

    kind: ClassVar[str] = "unrolled"

    def apply(self, solver, fn, x0, params, layout, probe):
        return solver.solve(lambda x: fn(x, params), x0, differentiable=True, seq_len=layout.seq_len)

    def vjps(self, max_iter):
        return float(max_iter)
