"""Batched fixed-point solvers that run entirely on device.

Every solver works on a flat state ``x`` of shape ``[S, N]`` (S samples, N features; `fixed_point` flattens pytrees
and batch axes into this layout) and iterates y <- f(y) towards y* = f(y*). The shared driver `_run`:

* evaluates f once per iteration on the whole batch inside ``lax.while_loop`` (or ``lax.scan`` when the solve must
  be differentiated, see `Unrolled`), so there is no host round-trip;
* measures per-sample relative residuals r = ||f(x) - x|| / ||x|| in float32;
* keeps each sample's best (lowest-residual) candidate f(x) and returns it;
* freezes a sample once it has converged (r < tol after ``min_iter`` evaluations) or diverged (non-finite residual,
  or a residual ``divergence`` times above its best): a frozen sample is re-evaluated at its best candidate but never
  updated again, so its result does not depend on which other samples share the batch, and a blown-up sample cannot
  feed NaN/Inf into the others through f;
* stops when every sample is frozen (and ``min_iter`` evaluations were made) or after ``max_iter`` evaluations.

Solvers are frozen dataclasses (hashable, static under ``jit``); each defines ``init`` and ``propose`` around the
driver: ``propose(mem, k, x, fx, res)`` returns the next point to evaluate and the updated solver memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from attractor_jax.implicit.types import SolverStats

_EPS = 1e-12


def _acc(dtype) -> jnp.dtype:
    """Accumulation dtype for norms and Gram matrices: float32, or wider when the state is wider."""
    return jnp.promote_types(dtype, jnp.float32)


def _sq_norm(x: jax.Array) -> jax.Array:
    """Per-sample squared Euclidean norm of a ``[S, N]`` array, accumulated in at least float32."""
    x = x.astype(_acc(x.dtype))
    return jnp.sum(x * x, axis=-1)


def relative_residual(fx: jax.Array, x: jax.Array) -> jax.Array:
    """||fx - x|| / max(||x||, eps) per sample, computed in at least float32 and returned as float32."""
    acc = _acc(x.dtype)
    diff = fx.astype(acc) - x.astype(acc)
    return (jnp.sqrt(_sq_norm(diff)) / jnp.maximum(jnp.sqrt(_sq_norm(x)), _EPS)).astype(jnp.float32)


def _check_common(name: str, tol: float, max_iter: int, min_iter: int) -> None:
    if not (isinstance(max_iter, int) and max_iter >= 0):
        raise ValueError(f"{name}: max_iter={max_iter!r} must be an int >= 0")
    if not (isinstance(min_iter, int) and 0 <= min_iter):
        raise ValueError(f"{name}: min_iter={min_iter!r} must be an int >= 0")
    if not tol >= 0:
        raise ValueError(f"{name}: tol={tol!r} must be a number >= 0")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Carry:
    k: jax.Array  # evaluations made so far (scalar int32)
    x: jax.Array  # [S, N] next point to evaluate
    mem: Any  # solver-specific memory
    best: jax.Array  # [S, N] best candidate f(x) so far (initialised to x0)
    best_res: jax.Array  # [S] float32
    last_res: jax.Array  # [S] float32, residual of the most recent evaluation while active
    iters: jax.Array  # [S] int32
    converged: jax.Array  # [S] bool
    diverged: jax.Array  # [S] bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Solver:
    """Shared settings and driver; subclasses add their own fields and define ``init``/``propose``.

    tol: relative-residual tolerance; max_iter: at most this many f-evaluations; min_iter: a sample may not be
    declared converged before this many; divergence: a residual this many times above the sample's best (or a
    non-finite one) freezes the sample as diverged; keep_best: return each sample's lowest-residual candidate
    (else its last).
    """

    tol: float = 1e-4
    max_iter: int = 30
    min_iter: int = 0
    divergence: float = 1e4
    keep_best: bool = True

    def __post_init__(self):
        name = type(self).__name__
        _check_common(name, self.tol, self.max_iter, self.min_iter)
        if not self.divergence > 1:
            raise ValueError(f"{name}: divergence={self.divergence!r} must be > 1")
        self._check()

    def _check(self) -> None:
        """Subclass-specific validation."""

    def init(self, x0: jax.Array) -> Any:
        raise NotImplementedError

    def propose(
        self, mem: Any, k: jax.Array, x: jax.Array, fx: jax.Array, res: jax.Array
    ) -> tuple[jax.Array, Any]:
        raise NotImplementedError

    def replace(self, **changes) -> "_Solver":
        """A copy with some fields changed (e.g. ``tol`` or ``max_iter`` overrides at evaluation time)."""
        return dataclasses.replace(self, **changes)

    def solve(
        self, fn: Callable[[jax.Array], jax.Array], x0: jax.Array, *, differentiable: bool = False
    ) -> tuple[jax.Array, SolverStats]:
        """Solve x = fn(x) for a ``[S, N]`` state. Returns the per-sample best candidate and its stats.

        ``differentiable=True`` runs a fixed ``max_iter``-step ``lax.scan`` (frozen samples masked) so that
        reverse-mode autodiff can pass through the whole solve; otherwise a ``lax.while_loop`` with early exit.
        """
        if x0.ndim != 2:
            raise ValueError(f"solver state must be [samples, features], got shape {x0.shape}")
        s = x0.shape[0]
        carry = _Carry(
            k=jnp.zeros((), jnp.int32),
            x=x0,
            mem=self.init(x0),
            best=x0,
            best_res=jnp.full((s,), jnp.inf, jnp.float32),
            last_res=jnp.full((s,), jnp.inf, jnp.float32),
            iters=jnp.zeros((s,), jnp.int32),
            converged=jnp.zeros((s,), bool),
            diverged=jnp.zeros((s,), bool),
        )
        if self.max_iter > 0:
            body = lambda c: self._step(fn, c)  # noqa: E731
            if differentiable:
                carry, _ = lax.scan(lambda c, _: (body(c), None), carry, None, length=self.max_iter)
            else:
                carry = lax.while_loop(self._keep_going, body, carry)
        res = carry.best_res if self.keep_best else carry.last_res
        return carry.best, SolverStats(
            iterations=carry.iters, residual=res, converged=carry.converged, diverged=carry.diverged
        )

    def _keep_going(self, c: _Carry) -> jax.Array:
        frozen = c.converged | c.diverged
        return (c.k < self.max_iter) & ~jnp.all(frozen)

    def _step(self, fn: Callable[[jax.Array], jax.Array], c: _Carry) -> _Carry:
        active = ~(c.converged | c.diverged)
        fx = fn(c.x).astype(c.x.dtype)
        res = relative_residual(fx, c.x)
        finite = jnp.isfinite(res) & jnp.all(jnp.isfinite(fx), axis=-1)
        blown = finite & (res > self.divergence * c.best_res)
        bad = active & (~finite | blown)
        improved = finite & (res < c.best_res)
        take = active & finite & (improved if self.keep_best else True)
        iters = c.iters + active.astype(jnp.int32)
        k = c.k + 1
        best = jnp.where(take[:, None], fx, c.best)
        best_res = jnp.where(take, res, c.best_res)
        last_res = jnp.where(active & finite, res, c.last_res)
        converged = c.converged | (active & finite & (res <= self.tol) & (iters >= self.min_iter))
        diverged = c.diverged | bad
        still = ~(converged | diverged)
        x_next, mem = self.propose(c.mem, c.k, c.x, jnp.where(finite[:, None], fx, c.x), res)
        # Frozen samples are re-evaluated at their best candidate (finite, and their returned value).
        x_next = jnp.where(still[:, None], x_next.astype(c.x.dtype), best)
        return _Carry(k, x_next, mem, best, best_res, last_res, iters, converged, diverged)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Picard(_Solver):
    """Damped fixed-point iteration x <- (1 - damping) x + damping f(x)."""

    damping: float = 1.0

    def _check(self):
        if not 0 < self.damping <= 1:
            raise ValueError(f"Picard: damping={self.damping!r} must be in (0, 1]")

    def init(self, x0):
        return ()

    def propose(self, mem, k, x, fx, res):
        return x + self.damping * (fx - x), mem


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _AndersonMemory:
    xs: jax.Array  # [S, m, N] past points, ring buffer
    gs: jax.Array  # [S, m, N] past residual vectors g = f(x) - x
    gram: jax.Array  # [S, m, m] float32, G G^T maintained one row/column per step
    count: jax.Array  # [S] int32, history entries in use (cleared on restart)
    prev: jax.Array  # [S] float32, previous relative residual


def _spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """Solve a z = b for a batch of small symmetric positive-definite ``[S, m, m]`` systems.

    An unrolled Cholesky factorisation on ``[S]``-vectors: for the m <= ~16 of an Anderson history this fuses
    into a few elementwise kernels, far cheaper than a batched LAPACK/cuSOLVER call inside every solver step.
    A non-positive pivot yields NaN, which the caller treats as a failed solve.
    """
    m = a.shape[-1]
    low = [[None] * m for _ in range(m)]
    for j in range(m):
        d = a[:, j, j] - sum((low[j][p] ** 2 for p in range(j)), jnp.zeros_like(a[:, 0, 0]))
        d = jnp.sqrt(jnp.where(d > 0, d, jnp.nan))
        low[j][j] = d
        for i in range(j + 1, m):
            off = a[:, i, j] - sum((low[i][p] * low[j][p] for p in range(j)), jnp.zeros_like(d))
            low[i][j] = off / d
    y = []
    for i in range(m):
        y.append((b[:, i] - sum((low[i][p] * y[p] for p in range(i)), jnp.zeros_like(b[:, 0]))) / low[i][i])
    z = [None] * m
    for i in reversed(range(m)):
        z[i] = (y[i] - sum((low[p][i] * z[p] for p in range(i + 1, m)), jnp.zeros_like(y[i]))) / low[i][i]
    return jnp.stack(z, axis=-1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Anderson(_Solver):
    """Type-II Anderson acceleration with a fixed-size ring-buffer history.

    With residuals g_i = f(x_i) - x_i over the last m iterates, solve in float32

        min_a ||sum_i a_i g_i||^2 + lam ||a||^2   s.t.  sum_i a_i = 1,

    as a = A^-1 1 / (1^T A^-1 1) with A = G G^T + lam I and lam = ridge * mean_i ||g_i||^2 (scale-free; A is
    normalised to unit mean diagonal and factorised by an unrolled Cholesky), and step to
    x = sum_i a_i x_i + beta sum_i a_i g_i. The Gram matrix is updated by one row per step (O(mN) instead of
    O(m^2 N)). Non-finite coefficients fall back to a damped plain step from the newest iterate. The first step
    (one history entry) is a plain step, so max_iter=1 returns f(x0).

    ``restart=True`` (safeguard): when a sample's residual rises, its history is cleared down to the newest
    entry, so the next step is a plain step. Plain Anderson can stagnate on saturated nonlinear maps on which
    Picard still converges; restarting helps on some of them (not all) and changes nothing while residuals fall.
    """

    m: int = 5
    beta: float = 1.0
    ridge: float = 1e-4
    restart: bool = True

    def _check(self):
        if not (isinstance(self.m, int) and self.m >= 1):
            raise ValueError(f"Anderson: m={self.m!r} must be an int >= 1")
        if not 0 < self.beta <= 1:
            raise ValueError(f"Anderson: beta={self.beta!r} must be in (0, 1]")
        if not self.ridge >= 0:
            raise ValueError(f"Anderson: ridge={self.ridge!r} must be >= 0")

    def init(self, x0):
        s, n = x0.shape
        return _AndersonMemory(
            xs=jnp.zeros((s, self.m, n), x0.dtype),
            gs=jnp.zeros((s, self.m, n), x0.dtype),
            gram=jnp.zeros((s, self.m, self.m), _acc(x0.dtype)),
            count=jnp.zeros((s,), jnp.int32),
            prev=jnp.full((s,), jnp.inf, jnp.float32),
        )

    def propose(self, mem, k, x, fx, res):
        m = self.m
        slot = k % m
        g = fx - x
        xs = lax.dynamic_update_index_in_dim(mem.xs, x, slot, axis=1)
        gs = lax.dynamic_update_index_in_dim(mem.gs, g, slot, axis=1)
        acc = _acc(x.dtype)
        row = jnp.einsum("smn,sn->sm", gs, g, preferred_element_type=acc)
        gram = lax.dynamic_update_index_in_dim(mem.gram, row, slot, axis=1)
        gram = lax.dynamic_update_index_in_dim(gram, row, slot, axis=2)

        count = mem.count + 1
        if self.restart:
            count = jnp.where(res > mem.prev, 1, count)
        count = jnp.minimum(count, m)
        age = (slot - jnp.arange(m)) % m  # [m] 0 for the newest entry
        vf = (age[None, :] < count[:, None]).astype(acc)  # [S, m] slots in use
        eye = jnp.eye(m, dtype=acc)
        diag = jnp.diagonal(gram, axis1=1, axis2=2)  # [S, m]
        # Normalise G G^T to unit mean diagonal: the weights are invariant to this scaling, and it keeps the
        # system well conditioned in float32 when the residuals are tiny. The ridge is then relative.
        scale = jnp.sum(diag * vf, axis=-1) / jnp.sum(vf, axis=-1)  # [S]
        scale = jnp.where(scale > 0, scale, 1.0)
        a_mat = gram / scale[:, None, None] * (vf[:, :, None] * vf[:, None, :])
        a_mat = a_mat + eye * ((self.ridge + _EPS) * vf + (1.0 - vf))[:, None, :]
        # Constrained least squares: a = A^-1 1 / (1^T A^-1 1) over the slots in use (unused slots get 0).
        z = _spd_solve(a_mat, vf)
        alpha = z / jnp.sum(z, axis=-1, keepdims=True)
        ok = jnp.all(jnp.isfinite(alpha), axis=-1, keepdims=True)
        newest = jax.nn.one_hot(slot, m, dtype=acc)
        alpha = jnp.where(ok, alpha, newest[None, :])

        a = alpha.astype(x.dtype)
        x_next = jnp.einsum("sm,smn->sn", a, xs, preferred_element_type=acc) + self.beta * jnp.einsum(
            "sm,smn->sn", a, gs, preferred_element_type=acc)
        return x_next.astype(x.dtype), _AndersonMemory(xs, gs, gram, count, res)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _BroydenMemory:
    us: jax.Array  # [S, m, N]
    vs: jax.Array  # [S, m, N]
    x_prev: jax.Array  # [S, N]
    g_prev: jax.Array  # [S, N]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Broyden(_Solver):
    """Limited-memory ("good") Broyden on g(x) = f(x) - x with an inverse-Jacobian estimate.

    B^-1 ~= -I + sum_i u_i v_i^T (rank-m, ring buffer; the oldest correction is overwritten). Each step applies the
    Sherman-Morrison secant update for (dx, dg) and moves x <- x - B^-1 g(x). Starts as a plain step (B^-1 = -I).
    Updates with a vanishing denominator are skipped.
    """

    memory: int = 20

    def _check(self):
        if not (isinstance(self.memory, int) and self.memory >= 1):
            raise ValueError(f"Broyden: memory={self.memory!r} must be an int >= 1")

    def init(self, x0):
        s, n = x0.shape
        z = jnp.zeros((s, self.memory, n), x0.dtype)
        return _BroydenMemory(us=z, vs=z, x_prev=x0, g_prev=jnp.zeros_like(x0))

    @staticmethod
    def _matvec(us, vs, z):  # (-I + U V^T) z
        coef = jnp.einsum("smn,sn->sm", vs, z, preferred_element_type=z.dtype)
        return -z + jnp.einsum("sm,smn->sn", coef, us, preferred_element_type=z.dtype)

    @staticmethod
    def _rmatvec(us, vs, z):  # (-I + U V^T)^T z
        coef = jnp.einsum("smn,sn->sm", us, z, preferred_element_type=z.dtype)
        return -z + jnp.einsum("sm,smn->sn", coef, vs, preferred_element_type=z.dtype)

    def propose(self, mem, k, x, fx, res):
        acc = _acc(x.dtype)
        g = (fx - x).astype(acc)
        dx = (x - mem.x_prev).astype(acc)
        dg = g - mem.g_prev.astype(acc)
        vt = self._rmatvec(mem.us, mem.vs, dx)
        den = jnp.sum(vt * dg, axis=-1, keepdims=True)
        u = (dx - self._matvec(mem.us, mem.vs, dg)) / jnp.where(jnp.abs(den) > _EPS, den, 1.0)
        use = (k > 0) & (jnp.abs(den) > _EPS) & jnp.all(jnp.isfinite(u) & jnp.isfinite(vt), -1, keepdims=True)
        u = jnp.where(use, u, 0.0)
        vt = jnp.where(use, vt, 0.0)
        slot = jnp.maximum(k - 1, 0) % self.memory
        us = lax.dynamic_update_index_in_dim(mem.us, u.astype(x.dtype), slot, axis=1)
        vs = lax.dynamic_update_index_in_dim(mem.vs, vt.astype(x.dtype), slot, axis=1)
        x_next = x.astype(acc) - self._matvec(us, vs, g)
        return x_next.astype(x.dtype), _BroydenMemory(us, vs, x, g.astype(x.dtype))


SOLVERS = {"picard": Picard, "anderson": Anderson, "broyden": Broyden}
