"""Batched fixed-point solvers that run entirely on device.

Every solver works on a flat state ``x`` of shape ``[S, N]`` (S samples, N features; `fixed_point` flattens pytrees
and batch axes into this layout) and iterates towards y* = f(y*). The shared driver `_run`:

* evaluates f once per iteration on the whole batch inside ``lax.while_loop`` (or ``lax.scan`` when the solve must
  be differentiated, see `Unrolled`), so there is no host round-trip;
* *measures* every point x it evaluates: r(x) = ||f(x) - x|| / ||x|| per sample (in at least float32, |x|^2 for
  complex states), and returns a measured point, so the returned statistics are exactly those of the returned
  value (``residual`` is r of the returned x, ``converged`` is its exit test);
* exits a sample when ||f(x) - x|| <= atol + tol * ||x|| after ``min_iter`` evaluations (``tol`` is the relative
  tolerance, rtol; ``atol`` defaults to 0, so by default the test is relative only), or when it diverges (a
  non-finite residual, or one ``divergence`` times above max(best residual, tol, eps));
* stops when every sample has exited (and ``min_iter`` evaluations were made) or after ``max_iter`` evaluations.

Two layouts of the samples:

* **independent** (default): samples do not interact through f. Each keeps its best (lowest-residual) measured
  point (``keep_best``; else its last) and freezes on exit, so its result does not depend on its batch mates.
* **causal** (``seq_len=T``): the S samples are S/T sequences of T consecutive positions, and position t's map
  reads positions <= t (causal attention). A position may freeze only when it *and every earlier position of its
  sequence* pass the exit test (a cumulative AND along the sequence), so no position is frozen against a moving
  prefix; a position diverges when it or an earlier one does (a cumulative OR). The returned state is the last
  state evaluated (frozen positions hold their values, which the later positions were evaluated against), so it is
  one consistent state of every sequence and each reported residual is that of the returned state. Keep-best is
  not used: picking a per-sequence best would make a position depend on later ones, and a per-position best is a
  patchwork of iterates. ``reverse=True`` mirrors the coupling (position t reads positions >= t), for adjoints.

Solvers are frozen dataclasses (hashable, static under ``jit``); each defines ``init`` and ``propose`` around the
driver: ``propose(mem, k, x, fx, res)`` returns the next point to evaluate and the updated solver memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from attractor_jax.implicit.types import SolverStats

_EPS = 1e-12


def _acc(dtype) -> jnp.dtype:
    """Accumulation dtype: float32 (complex64), or wider when the state is wider."""
    return jnp.promote_types(dtype, jnp.float32)


def _real(dtype) -> jnp.dtype:
    """The real dtype of matching width (float32 for complex64, float64 for complex128)."""
    return jnp.finfo(dtype).dtype


def _inner(a: jax.Array, b: jax.Array, subscripts: str) -> jax.Array:
    """Real inner products Re(sum conj(a) b) by ``einsum`` (the inner product of the real embedding of a complex
    space; the plain product for real arrays), accumulated in at least float32."""
    acc = _acc(jnp.result_type(a, b))
    out = jnp.einsum(subscripts, jnp.conj(a) if jnp.iscomplexobj(a) else a, b, preferred_element_type=acc)
    return jnp.real(out) if jnp.iscomplexobj(out) else out


def sq_norm(x: jax.Array) -> jax.Array:
    """Per-sample squared Euclidean norm sum |x|^2 of a ``[S, N]`` array, real, in at least float32."""
    x = x.astype(_acc(x.dtype))
    return jnp.sum(jnp.real(x * jnp.conj(x)) if jnp.iscomplexobj(x) else x * x, axis=-1)


def _err_and_norm(fx: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(||fx - x||, ||x||) per sample, real, in at least float32; never differentiated."""
    fx, x = lax.stop_gradient(fx), lax.stop_gradient(x)
    acc = _acc(x.dtype)
    return jnp.sqrt(sq_norm(fx.astype(acc) - x.astype(acc))), jnp.sqrt(sq_norm(x))


def relative_residual(fx: jax.Array, x: jax.Array) -> jax.Array:
    """||fx - x|| / max(||x||, eps) per sample, computed in at least float32 and returned as float32."""
    err, norm = _err_and_norm(fx, x)
    return (err / jnp.maximum(norm, _EPS)).astype(jnp.float32)


def check_ints(owner: str, lo: int, **values: Any) -> None:
    """Each value is an int >= ``lo`` (not a bool); otherwise ValueError naming ``owner`` and the field."""
    for k, v in values.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
            raise ValueError(f"{owner}: {k}={v!r} must be an int >= {lo}")


def check_step(owner: str, **values: Any) -> None:
    """Each value (a step length or mixing weight) is in (0, 1]; otherwise ValueError."""
    for k, v in values.items():
        if not 0 < v <= 1:
            raise ValueError(f"{owner}: {k}={v!r} must be in (0, 1]")


class _Coupling(NamedTuple):
    """How samples interact: ``seq_len=None`` independent; else sequences of ``seq_len`` consecutive samples,
    causally coupled (``reverse``: anti-causally)."""

    seq_len: int | None = None
    reverse: bool = False

    def _scan(self, a: jax.Array, op) -> jax.Array:
        if self.seq_len is None:
            return a
        rows = a.reshape(-1, self.seq_len).astype(jnp.int32)
        return op(rows, axis=1, reverse=self.reverse).reshape(a.shape).astype(bool)

    def prefix_all(self, a: jax.Array) -> jax.Array:
        """True where the sample and every sample before it in its sequence are True (identity if independent)."""
        return self._scan(a, lax.cummin)

    def prefix_any(self, a: jax.Array) -> jax.Array:
        """True where the sample or any sample before it in its sequence is True (identity if independent)."""
        return self._scan(a, lax.cummax)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Carry:
    k: jax.Array  # evaluations made so far (scalar int32)
    x: jax.Array  # [S, N] next point to evaluate
    mem: Any  # solver-specific memory
    best: jax.Array  # [S, N] the measured point to return (best, or last), initialised to x0
    best_res: jax.Array  # [S] float32, its relative residual
    best_ok: jax.Array  # [S] bool, it passes the exit test
    low: jax.Array  # [S] float32, lowest residual seen (the divergence reference)
    iters: jax.Array  # [S] int32
    settled: jax.Array  # [S] bool, exited by the exit test (frozen)
    diverged: jax.Array  # [S] bool, exited by divergence (frozen)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Solver:
    """Shared settings and driver; subclasses add their own fields and define ``init``/``propose``. A sample exits
    when ||f(x) - x|| <= atol + tol ||x||, or diverges on a non-finite residual or one ``divergence`` times above
    max(its lowest, tol, eps); causal layouts always return the last point (see the module docstring)."""

    kind: ClassVar[str]  # the name in serialised configs (`attractor_jax.implicit.KINDS`)
    tol: float = 1e-4  # relative tolerance (rtol)
    atol: float = 0.0  # absolute tolerance
    max_iter: int = 30  # at most this many f-evaluations
    min_iter: int = 0  # no exit (or "converged") before this many
    divergence: float = 1e4  # blow-up factor over max(lowest residual, tol, eps) that freezes a sample
    keep_best: bool = True  # independent samples return their lowest-residual point (else their last)

    def __post_init__(self):
        name = type(self).__name__
        check_ints(name, 0, max_iter=self.max_iter, min_iter=self.min_iter)
        for k in ("tol", "atol"):
            if not getattr(self, k) >= 0:
                raise ValueError(f"{name}: {k}={getattr(self, k)!r} must be a number >= 0")
        if not self.divergence > 1:
            raise ValueError(f"{name}: divergence={self.divergence!r} must be > 1")
        self._check()

    def _check(self) -> None:
        """Subclass-specific validation."""

    def init(self, x0: jax.Array) -> Any:
        raise NotImplementedError

    def propose(self, mem: Any, k: jax.Array, x: jax.Array, fx: jax.Array, res: jax.Array) -> tuple[jax.Array, Any]:
        raise NotImplementedError

    def solve(self, fn: Callable[[jax.Array], jax.Array], x0: jax.Array, *, differentiable: bool = False,
              seq_len: int | None = None, reverse: bool = False) -> tuple[jax.Array, SolverStats]:
        """Solve x = fn(x) for a ``[S, N]`` state. Returns a measured point per sample and its exact stats.

        ``differentiable=True`` runs a fixed ``max_iter``-step ``lax.scan`` (frozen samples masked) so that
        reverse-mode autodiff can pass through the whole solve; otherwise a ``lax.while_loop`` with early exit.
        ``seq_len``/``reverse``: the causal layout (see the module docstring); S must be a multiple of seq_len.
        """
        if x0.ndim != 2:
            raise ValueError(f"solver state must be [samples, features], got shape {x0.shape}")
        s = x0.shape[0]
        if seq_len is not None and not (isinstance(seq_len, int) and seq_len >= 1 and s % seq_len == 0):
            raise ValueError(f"solver: seq_len={seq_len!r} must be an int >= 1 dividing the {s} samples")
        coupling = _Coupling(seq_len, reverse)
        no, inf = jnp.zeros((s,), bool), jnp.full((s,), jnp.inf, jnp.float32)
        carry = _Carry(k=jnp.zeros((), jnp.int32), x=x0, mem=self.init(x0), best=x0, best_res=inf, best_ok=no,
                       low=inf, iters=jnp.zeros((s,), jnp.int32), settled=no, diverged=no)
        if self.max_iter > 0:
            body = lambda c: self._step(fn, c, coupling)  # noqa: E731
            if differentiable:
                carry, _ = lax.scan(lambda c, _: (body(c), None), carry, None, length=self.max_iter)
            else:
                carry = lax.while_loop(self._keep_going, body, carry)
        converged = carry.best_ok & (carry.iters >= self.min_iter) & ~carry.diverged
        return carry.best, SolverStats(iterations=carry.iters, residual=carry.best_res, converged=converged,
                                       diverged=carry.diverged)

    def _keep_going(self, c: _Carry) -> jax.Array:
        return (c.k < self.max_iter) & ~jnp.all(c.settled | c.diverged)

    def _step(self, fn: Callable[[jax.Array], jax.Array], c: _Carry, coupling: _Coupling) -> _Carry:
        causal = coupling.seq_len is not None
        active = ~(c.settled | c.diverged)
        fx = fn(c.x).astype(c.x.dtype)
        err, norm = _err_and_norm(fx, c.x)
        res = (err / jnp.maximum(norm, _EPS)).astype(jnp.float32)
        finite = jnp.isfinite(res) & jnp.all(jnp.isfinite(fx), axis=-1)
        iters = c.iters + active.astype(jnp.int32)
        k = c.k + 1
        passes = finite & (err <= self.atol + self.tol * norm)
        # Divergence: relative to the lowest residual so far, floored at tol and the state's epsilon, so that an
        # exact zero residual is not followed by "diverged" at the first rounding error. A relative residual means
        # nothing at a zero state, so such points neither set the reference nor count as blown up.
        floor = max(self.tol, float(jnp.finfo(_real(_acc(c.x.dtype))).eps))
        measurable = finite & (norm > _EPS)
        blown = measurable & (res > self.divergence * jnp.maximum(c.low, floor))
        diverged = c.diverged | coupling.prefix_any(active & (~finite | blown))
        exits = active & passes & (iters >= self.min_iter)
        settled = c.settled | coupling.prefix_all(c.settled | exits)
        settled = settled & ~diverged
        # The point to return: causal layouts and keep_best=False take the last point measured while active
        # (for causal layouts frozen positions are re-measured at the value they hold); otherwise the lowest, or
        # the point at which the sample exits (it passes the test, which a lower relative residual may not).
        take = active & finite
        if self.keep_best and not causal:
            take = take & ((res < c.best_res) | exits)
        best = jnp.where(take[:, None], c.x, c.best)
        best_res = jnp.where(take, res, c.best_res)
        best_ok = jnp.where(take, passes, c.best_ok)
        if causal:  # a diverged position is returned as measured (its residual says so), never a stale value
            best = jnp.where((active & ~finite)[:, None], c.x, best)
            best_res = jnp.where(active & ~finite, res, best_res)
            best_ok = best_ok & ~(active & ~finite)
        low = jnp.where(measurable, jnp.minimum(c.low, res), c.low)
        x_next, mem = self.propose(c.mem, c.k, c.x, jnp.where(finite[:, None], fx, c.x), res)
        x_next = x_next.astype(c.x.dtype)
        # A proposal that is not finite falls back to the plain step from a finite image.
        x_next = jnp.where(jnp.all(jnp.isfinite(x_next), axis=-1, keepdims=True), x_next, jnp.where(
            finite[:, None], fx, c.x))
        # Frozen samples hold their value (what later positions are evaluated against); an independent diverged
        # sample is re-evaluated at its returned point, so it cannot feed NaN/Inf into anything else.
        hold = c.x if causal else jnp.where(diverged[:, None], best, c.x)
        x_next = jnp.where((settled | diverged)[:, None], hold, x_next)
        return _Carry(k, x_next, mem, best, best_res, best_ok, low, iters, settled, diverged)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Picard(Solver):
    """Damped fixed-point iteration x <- (1 - damping) x + damping f(x)."""

    kind: ClassVar[str] = "picard"
    damping: float = 1.0  # step length: x <- x + damping (f(x) - x)

    def _check(self):
        check_step("Picard", damping=self.damping)

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


def _spd_solve(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Solve a z = b for a batch of small symmetric positive-definite ``[S, m, m]`` systems; returns (z, ok).

    An unrolled Cholesky factorisation on ``[S]``-vectors: for the m <= ~16 of an Anderson history this fuses
    into a few elementwise kernels, far cheaper than a batched LAPACK/cuSOLVER call inside every solver step.
    A non-positive (or non-finite) pivot sets ``ok`` False; it is replaced by 1 so that z, and every derivative
    taken through this function, stays finite (a NaN in an unselected branch would still poison a cotangent).
    """
    m = a.shape[-1]
    low = [[None] * m for _ in range(m)]
    ok = jnp.ones(a.shape[:1], bool)
    for j in range(m):
        d = a[:, j, j] - sum((low[j][p] ** 2 for p in range(j)), jnp.zeros_like(a[:, 0, 0]))
        good = jnp.isfinite(d) & (d > 0)
        ok = ok & good
        d = jnp.sqrt(jnp.where(good, d, 1.0))
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
    return jnp.stack(z, axis=-1), ok


@dataclasses.dataclass(frozen=True, kw_only=True)
class Anderson(Solver):
    """Type-II Anderson acceleration with a fixed-size ring-buffer history.

    With residuals g_i = f(x_i) - x_i over the last m iterates, solve in float32

        min_a ||sum_i a_i g_i||^2 + lam ||a||^2   s.t.  sum_i a_i = 1,

    as a = A^-1 1 / (1^T A^-1 1) with A = G G^T + lam I and lam = ridge * mean_i ||g_i||^2 (scale-free; A is
    normalised to unit mean diagonal and factorised by an unrolled Cholesky), and step to
    x = sum_i a_i x_i + beta sum_i a_i g_i. The Gram matrix is updated by one row per step (O(mN) instead of
    O(m^2 N)). Non-finite coefficients (a failed factorisation, e.g. with ``ridge=0`` on a singular history) fall
    back to a plain step from the newest iterate, without NaN in any derivative. The first step (one history
    entry) is a plain step. Complex states are mixed with real weights (Anderson on the real embedding).

    ``restart=True`` (safeguard): when a sample's residual rises, its history is cleared down to the newest
    entry, so the next step is a plain step. Plain Anderson can stagnate on saturated nonlinear maps on which
    Picard still converges; restarting helps on some of them (not all) and changes nothing while residuals fall.
    """

    kind: ClassVar[str] = "anderson"
    m: int = 5  # history window
    beta: float = 1.0  # mixing: x = sum a_i x_i + beta sum a_i g_i
    ridge: float = 1e-4  # Tikhonov term, relative to the mean squared residual norm
    restart: bool = True  # clear the history when a sample's residual rises

    def _check(self):
        check_ints("Anderson", 1, m=self.m)
        check_step("Anderson", beta=self.beta)
        if not self.ridge >= 0:
            raise ValueError(f"Anderson: ridge={self.ridge!r} must be >= 0")

    def init(self, x0):
        s, n = x0.shape
        return _AndersonMemory(
            xs=jnp.zeros((s, self.m, n), x0.dtype),
            gs=jnp.zeros((s, self.m, n), x0.dtype),
            gram=jnp.zeros((s, self.m, self.m), _real(_acc(x0.dtype))),
            count=jnp.zeros((s,), jnp.int32),
            prev=jnp.full((s,), jnp.inf, jnp.float32),
        )

    def propose(self, mem, k, x, fx, res):
        m = self.m
        slot = k % m
        g = fx - x
        xs = lax.dynamic_update_index_in_dim(mem.xs, x, slot, axis=1)
        gs = lax.dynamic_update_index_in_dim(mem.gs, g, slot, axis=1)
        acc = _real(_acc(x.dtype))
        row = _inner(gs, g, "smn,sn->sm")
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
        # Every quantity is kept finite (failed pivots, a vanishing sum) before the fallback is selected, so that
        # no NaN reaches a cotangent when the solve is differentiated (`Unrolled`).
        z, ok = _spd_solve(a_mat, vf)
        den = jnp.sum(z, axis=-1, keepdims=True)
        ok = ok[:, None] & jnp.isfinite(den) & (jnp.abs(den) > _EPS) & jnp.all(jnp.isfinite(z), -1, keepdims=True)
        alpha = jnp.where(ok, z, 0.0) / jnp.where(ok, den, 1.0)
        newest = jax.nn.one_hot(slot, m, dtype=acc)
        alpha = jnp.where(ok, alpha, newest[None, :])

        a = alpha.astype(x.dtype)
        wide = _acc(x.dtype)
        x_next = jnp.einsum("sm,smn->sn", a, xs, preferred_element_type=wide) + self.beta * jnp.einsum(
            "sm,smn->sn", a, gs, preferred_element_type=wide)
        return x_next.astype(x.dtype), _AndersonMemory(xs, gs, gram, count, res)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _BroydenMemory:
    us: jax.Array  # [S, m, N]
    vs: jax.Array  # [S, m, N]
    x_prev: jax.Array  # [S, N]
    g_prev: jax.Array  # [S, N]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Broyden(Solver):
    """Limited-memory ("good") Broyden on g(x) = f(x) - x with an inverse-Jacobian estimate.

    B^-1 ~= -I + sum_i u_i v_i^T (rank-m, ring buffer; the oldest correction is overwritten). Each step applies the
    Sherman-Morrison secant update for (dx, dg) and moves x <- x - B^-1 g(x). Starts as a plain step (B^-1 = -I).
    Updates with a vanishing denominator are skipped.
    """

    kind: ClassVar[str] = "broyden"
    memory: int = 20  # rank of the inverse-Jacobian estimate (ring buffer)

    def _check(self):
        check_ints("Broyden", 1, memory=self.memory)

    def init(self, x0):
        s, n = x0.shape
        z = jnp.zeros((s, self.memory, n), x0.dtype)
        return _BroydenMemory(us=z, vs=z, x_prev=x0, g_prev=jnp.zeros_like(x0))

    # Inner products are those of the real embedding (Re conj(a) b), so complex states are handled as R^2N.
    @staticmethod
    def _matvec(us, vs, z):  # (-I + U V^T) z
        coef = _inner(vs, z, "smn,sn->sm").astype(z.dtype)
        return -z + jnp.einsum("sm,smn->sn", coef, us, preferred_element_type=z.dtype)

    @staticmethod
    def _rmatvec(us, vs, z):  # (-I + U V^T)^T z
        coef = _inner(us, z, "smn,sn->sm").astype(z.dtype)
        return -z + jnp.einsum("sm,smn->sn", coef, vs, preferred_element_type=z.dtype)

    def propose(self, mem, k, x, fx, res):
        acc = _acc(x.dtype)
        g = (fx - x).astype(acc)
        dx = (x - mem.x_prev).astype(acc)
        dg = g - mem.g_prev.astype(acc)
        vt = self._rmatvec(mem.us, mem.vs, dx)
        den = _inner(vt, dg, "sn,sn->s")[:, None]
        u = (dx - self._matvec(mem.us, mem.vs, dg)) / jnp.where(jnp.abs(den) > _EPS, den, 1.0)
        use = (k > 0) & (jnp.abs(den) > _EPS) & jnp.all(jnp.isfinite(u) & jnp.isfinite(vt), -1, keepdims=True)
        u = jnp.where(use, u, 0.0)
        vt = jnp.where(use, vt, 0.0)
        slot = jnp.maximum(k - 1, 0) % self.memory
        us = lax.dynamic_update_index_in_dim(mem.us, u.astype(x.dtype), slot, axis=1)
        vs = lax.dynamic_update_index_in_dim(mem.vs, vt.astype(x.dtype), slot, axis=1)
        x_next = x.astype(acc) - self._matvec(us, vs, g)
        return x_next.astype(x.dtype), _BroydenMemory(us, vs, x, g.astype(x.dtype))

