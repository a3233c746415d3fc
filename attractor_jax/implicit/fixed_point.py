"""`fixed_point`: solve y* = f(y*, *args) on device and differentiate it implicitly.

The forward pass is a batched solver (see `solvers`); the derivative is chosen by ``backward`` (see `backward`).
IFT and Neumann modes are a `jax.custom_jvp` whose tangent solves t = J t + (df/dargs) args_dot with
`jax.lax.custom_linear_solve`; JAX transposes it for reverse mode into the adjoint solve u = v + J^T u. Both
`jax.jvp`/`jax.jacfwd` and `jax.grad` work, and memory does not depend on the number of solver iterations. With an
adjoint ``probe`` the solve is a reverse-only `jax.custom_vjp` that saves (y*, args) and recomputes f. Closed-over
arrays in ``f`` are hoisted into explicit arguments (`jax.closure_convert`), so ``f`` may close over parameters
and still receive gradients.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attractor_jax.implicit.backward import IFT, Neumann, Phantom, Unrolled
from attractor_jax.implicit.solvers import Anderson, _Solver, _sq_norm, relative_residual
from attractor_jax.implicit.types import Solution, SolverStats

_PROBE_FIELDS = 4  # iterations, residual, converged, diverged


class BatchLayout:
    """Maps a pytree with shared batch axes to a flat ``[S, N]`` solver state and back.

    ``batch_axis``: an int, a tuple of ints (flattened together into the sample axis), or None (no batch axes).
    ``causal_axis``: an optional further sample axis along which samples are causally coupled (position t of the
    map reads positions <= t, e.g. tokens under causal attention). It is flattened last, so that each run of
    ``seq_len`` consecutive samples is one sequence in order. With neither, the whole pytree is one sample.
    """

    def __init__(self, tree: Any, batch_axis: int | Sequence[int] | None, causal_axis: int | None = None):
        leaves, self.treedef = jax.tree_util.tree_flatten(tree)
        if not leaves:
            raise ValueError("fixed_point: y0 has no array leaves")
        axes_spec = () if batch_axis is None else (batch_axis,) if isinstance(batch_axis, int) else tuple(batch_axis)
        if causal_axis is not None and not isinstance(causal_axis, int):
            raise ValueError(f"fixed_point: causal_axis={causal_axis!r} must be an int or None")
        self.axes, self.moved_shapes, self.dtypes = [], [], []
        batch_shape, self.seq_len = None, None
        for leaf in leaves:
            leaf = jnp.asarray(leaf)
            if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                raise ValueError(f"fixed_point: y0 leaves must be floating point, got dtype {leaf.dtype}")
            ok = all(isinstance(a, int) and -leaf.ndim <= a < leaf.ndim for a in axes_spec)
            axes = tuple(sorted(a % leaf.ndim for a in axes_spec)) if ok else ()
            if not ok or len(set(axes)) != len(axes):
                raise ValueError(
                    f"fixed_point: batch_axis={batch_axis!r} is not valid for a y0 leaf of shape {leaf.shape}"
                )
            if causal_axis is not None:
                if not -leaf.ndim <= causal_axis < leaf.ndim or causal_axis % leaf.ndim in axes:
                    raise ValueError(
                        f"fixed_point: causal_axis={causal_axis!r} is not valid for a y0 leaf of shape "
                        f"{leaf.shape} with batch_axis={batch_axis!r} (it must be another axis of every leaf)"
                    )
                axes = axes + (causal_axis % leaf.ndim,)
                self.seq_len = leaf.shape[axes[-1]]
            shape = tuple(leaf.shape[a] for a in axes)
            if batch_shape is None:
                batch_shape = shape
            elif shape != batch_shape:
                raise ValueError(
                    f"fixed_point: y0 leaves disagree on the batch axes {batch_axis!r}: {batch_shape} vs {shape}"
                )
            rest = tuple(d for i, d in enumerate(leaf.shape) if i not in axes)
            self.axes.append(axes)
            self.moved_shapes.append(shape + rest)
            self.dtypes.append(leaf.dtype)
        self.batch_shape = batch_shape
        # Statistics are returned with their axes in the order they have in y0 (the causal axis may come first).
        self._stat_perm = tuple(int(i) for i in sorted(range(len(self.axes[0])), key=lambda i: self.axes[0][i]))
        self.stats_shape = tuple(batch_shape[i] for i in self._stat_perm)
        self.samples = math.prod(batch_shape)
        self.sizes = [math.prod(s[len(batch_shape):]) for s in self.moved_shapes]
        self.dtype = jnp.result_type(*self.dtypes)

    def flatten(self, tree: Any) -> jax.Array:
        leaves = self.treedef.flatten_up_to(tree)
        flat = []
        for leaf, axes in zip(leaves, self.axes):
            moved = jnp.moveaxis(leaf, axes, tuple(range(len(axes))))
            flat.append(moved.reshape(self.samples, -1).astype(self.dtype))
        return flat[0] if len(flat) == 1 else jnp.concatenate(flat, axis=1)

    def unflatten(self, x: jax.Array) -> Any:
        leaves, start = [], 0
        for axes, shape, size, dtype in zip(self.axes, self.moved_shapes, self.sizes, self.dtypes):
            part = x[:, start:start + size] if len(self.sizes) > 1 else x
            start += size
            moved = part.reshape(shape).astype(dtype)
            leaves.append(jnp.moveaxis(moved, tuple(range(len(axes))), axes))
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def per_sample(self, a: jax.Array) -> jax.Array:
        """Reshape an ``[S, ...]`` per-sample array to ``stats_shape + [...]`` (the sample axes in y0's order)."""
        a = a.reshape(self.batch_shape + a.shape[1:])
        n = len(self.batch_shape)
        return jnp.transpose(a, self._stat_perm + tuple(range(n, a.ndim)))

    def from_per_sample(self, a: jax.Array) -> jax.Array:
        """Inverse of `per_sample`: ``stats_shape + [...]`` back to ``[S, ...]``."""
        n = len(self.batch_shape)
        inv = tuple(self._stat_perm.index(i) for i in range(n))
        return jnp.transpose(a, inv + tuple(range(n, a.ndim))).reshape((self.samples,) + a.shape[n:])


def adjoint_probe(batch_shape: Sequence[int] | int = ()) -> jax.Array:
    """A zero array to pass as ``fixed_point(..., probe=p)``; its gradient carries the IFT adjoint statistics.

    Gradients cannot return auxiliary data, so the backward pass writes the adjoint solver's per-sample
    statistics into the cotangent of this dummy input. Differentiate the loss with respect to the probe too and
    decode the result with `adjoint_stats`. ``batch_shape`` is the shape of the solve's batch axes.
    """
    shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
    return jnp.zeros(shape + (_PROBE_FIELDS,), jnp.float32)


def adjoint_stats(probe_grad: jax.Array) -> SolverStats:
    """Decode the gradient of an `adjoint_probe` into per-sample adjoint :class:`SolverStats`."""
    return SolverStats(
        iterations=probe_grad[..., 0].astype(jnp.int32),
        residual=probe_grad[..., 1],
        converged=probe_grad[..., 2] > 0.5,
        diverged=probe_grad[..., 3] > 0.5,
    )


def _pack_stats(stats: SolverStats) -> jax.Array:
    return jnp.stack(
        [
            stats.iterations.astype(jnp.float32),
            stats.residual.astype(jnp.float32),
            stats.converged.astype(jnp.float32),
            stats.diverged.astype(jnp.float32),
        ],
        axis=-1,
    )


def _neumann(apply_a: Callable, v: jax.Array, k: int, clip: float | None) -> jax.Array:
    """u = v + A v + ... + A^k v, each term optionally clipped per sample: ||A t|| <= clip ||t||."""
    u, term = v, v
    for _ in range(k):
        nxt = apply_a(term)
        if clip is not None:
            ratio = jnp.sqrt(_sq_norm(nxt)) / jnp.maximum(jnp.sqrt(_sq_norm(term)), 1e-30)
            nxt = nxt * jnp.minimum(1.0, clip / jnp.maximum(ratio, 1e-30))[:, None].astype(nxt.dtype)
        term = nxt
        u = u + term
    return u


def _linear_solve(apply_a: Callable, v: jax.Array, backward, forward: _Solver, seq_len: int | None, reverse: bool):
    """Solve u = v + A u (i.e. (I - A) u = v) per sample, or its Neumann truncation; returns (u, stats).

    A is J^T for the adjoint of reverse mode (``reverse=True``: it couples positions anti-causally when the
    forward map is causal, so a causal layout is solved with the mirrored freezing rule) and J for the tangent of
    forward mode (``reverse=False``: the forward map's own causal rule).
    """
    s = v.shape[:1]
    if isinstance(backward, Neumann):
        u = _neumann(apply_a, v, backward.k, backward.clip)
        return u, SolverStats(
            iterations=jnp.full(s, backward.k, jnp.int32),
            residual=jnp.full(s, jnp.nan, jnp.float32),  # a truncation measures no residual
            converged=jnp.zeros(s, bool),
            diverged=~jnp.all(jnp.isfinite(u), axis=-1),
        )
    if backward.solver == "gmres":
        tol = backward.tol if backward.tol is not None else forward.tol
        budget = backward.max_iter if backward.max_iter is not None else max(forward.max_iter, 1)
        u, _ = jax.scipy.sparse.linalg.gmres(
            lambda w: w - apply_a(w), v, x0=v, tol=tol, restart=backward.restart,
            maxiter=max(1, -(-budget // backward.restart)), solve_method="batched",
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
    solver = backward.adjoint_solver(forward)
    return solver.solve(lambda u: v + apply_a(u), v, seq_len=seq_len, reverse=reverse)


def _implicit_vjp(fn, solver: _Solver, backward, x0, params, probe, layout: BatchLayout):
    """custom_vjp solve (reverse mode only): forward = solver; backward = adjoint from (x*, params) only.

    Used when an adjoint ``probe`` is requested: its cotangent carries the adjoint statistics out.
    """
    seq_len = layout.seq_len

    @jax.custom_vjp
    def run(x0, params, probe):
        return solver.solve(lambda x: fn(x, params), x0, seq_len=seq_len)

    def run_fwd(x0, params, probe):
        x, stats = solver.solve(lambda x: fn(x, params), x0, seq_len=seq_len)
        return (x, stats), (x, params)

    def run_bwd(res, ct):
        x_star, params = res
        v = ct[0]
        _, vjp = jax.vjp(fn, x_star, params)
        vjp_y = lambda w: vjp(w.astype(x_star.dtype))[0]  # noqa: E731
        u, adj = _linear_solve(vjp_y, v, backward, solver, seq_len, reverse=True)
        params_ct = vjp(u)[1]
        probe_ct = None if probe is None else layout.per_sample(_pack_stats(adj)).reshape(probe.shape)
        return None, params_ct, probe_ct

    run.defvjp(run_fwd, run_bwd)
    return run(x0, params, probe)


def _zero_tangent(a: jax.Array):
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.zeros_like(a)
    return np.zeros(a.shape, jax.dtypes.float0)


def _implicit_jvp(fn, solver: _Solver, backward, x0, params, layout: BatchLayout):
    """custom_jvp solve: both forward and reverse mode.

    The tangent of y* = f(y*, p) is t = J t + (df/dp) p_dot, solved by `jax.lax.custom_linear_solve` with our
    solver (forward causal rule); its transpose is the adjoint u = v + J^T u (mirrored rule), so reverse mode
    (`jax.grad`) is JAX's transpose of the tangent map and forward mode (`jax.jvp`, `jax.jacfwd`, Hessian-vector
    products) works as well. The residuals kept for reverse mode are one linearisation of f at (y*, p).
    """
    seq_len = layout.seq_len

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
            return _linear_solve(apply_j, rhs, backward, solver, seq_len, reverse=False)[0]

        def transpose_solve(_vecmat, rhs):
            return _linear_solve(apply_jt, rhs, backward, solver, seq_len, reverse=True)[0]

        t = jax.lax.custom_linear_solve(lambda w: w - apply_j(w), b, solve, transpose_solve)
        return (x_star, stats), (t, jax.tree_util.tree_map(_zero_tangent, stats))

    return run(x0, params)


def fixed_point(
    f: Callable[..., Any],
    y0: Any,
    *args: Any,
    solver: _Solver | None = None,
    backward: IFT | Neumann | Phantom | Unrolled | None = None,
    batch_axis: int | Sequence[int] | None = 0,
    causal_axis: int | None = None,
    probe: jax.Array | None = None,
) -> Solution:
    """Solve y* = f(y*, *args) starting from ``y0`` and return a :class:`Solution` (value + per-sample stats).

    f:           ``f(y, *args) -> y_next`` with the pytree structure, shapes and dtypes of ``y``.
    y0:          initial iterate (a pytree of float or complex arrays sharing the batch axes). Receives no gradient
                 except under `Unrolled` (and trivially when ``max_iter == 0``, where the solution is ``y0``).
    args:        pytrees of arrays (parameters, injected context); all receive gradients.
    solver:      `Anderson()` (default), `Picard(...)` or `Broyden(...)`.
    backward:    `IFT()` (default), `Neumann(k, clip)`, `Phantom(k, damping)` or `Unrolled()`.
    batch_axis:  axis (or tuple of axes) indexing independent samples; None for none.
    causal_axis: an axis along which samples are *causally coupled* (f at position t reads positions <= t, as
                 tokens under causal attention do). Each position gets its own statistics and solver weights, but
                 freezes only when it and all earlier positions pass the exit test, and the returned state is one
                 consistent iterate of every sequence (see `attractor_jax.implicit.solvers`). Samples that interact
                 but are not causal must share one sample (leave their axis out of both).
    probe:       optional `adjoint_probe(stats_shape)`; its gradient carries the IFT/Neumann adjoint statistics.
                 The solve is then reverse-mode only (a custom_vjp); without a probe IFT/Neumann support forward
                 mode (`jax.jvp`, `jax.jacfwd`) as well.

    The returned value is a point at which f was evaluated, and ``stats`` describe exactly that point (its
    relative residual ||f(y) - y|| / ||y||, and whether it passes the exit test). Statistics have the shape of the
    sample axes (batch axes, then the causal axis, in y0's axis order).
    """
    solver = Anderson() if solver is None else solver
    backward = IFT() if backward is None else backward
    if not isinstance(solver, _Solver):
        raise TypeError(f"fixed_point: solver={solver!r} must be Anderson, Picard or Broyden")
    if not isinstance(backward, (IFT, Neumann, Phantom, Unrolled)):
        raise TypeError(f"fixed_point: backward={backward!r} must be IFT, Neumann, Phantom or Unrolled")
    layout = BatchLayout(y0, batch_axis, causal_axis)
    if probe is not None and tuple(probe.shape) != layout.stats_shape + (_PROBE_FIELDS,):
        raise ValueError(
            f"fixed_point: probe has shape {tuple(probe.shape)}, expected {layout.stats_shape + (_PROBE_FIELDS,)} "
            "(use adjoint_probe(stats_shape))"
        )

    def finish(x, stats: SolverStats) -> Solution:
        stats = jax.tree_util.tree_map(layout.per_sample, stats)
        return Solution(value=layout.unflatten(x), stats=stats)

    x0 = layout.flatten(y0)
    if solver.max_iter == 0:
        s = layout.samples
        return finish(x0, SolverStats(jnp.zeros((s,), jnp.int32), jnp.full((s,), jnp.inf, jnp.float32),
                                      jnp.zeros((s,), bool), jnp.zeros((s,), bool)))

    f_conv, consts = jax.closure_convert(f, y0, *args)
    params = (args, tuple(consts))

    def fn(x, params):
        a, c = params
        return layout.flatten(f_conv(layout.unflatten(x), *a, *c))

    seq_len = layout.seq_len
    if isinstance(backward, Unrolled):
        return finish(*solver.solve(lambda x: fn(x, params), x0, differentiable=True, seq_len=seq_len))
    if isinstance(backward, Phantom):
        x_star, stats = solver.solve(
            lambda x: fn(x, jax.lax.stop_gradient(params)), jax.lax.stop_gradient(x0), seq_len=seq_len
        )
        x_star = jax.lax.stop_gradient(x_star)
        x = x_star
        for _ in range(backward.k):
            x = x + backward.damping * (fn(x, params) - x)
        # The value is y* itself (so the statistics describe it); the gradient is that of the k phantom steps.
        return finish(x_star + (x - jax.lax.stop_gradient(x)), stats)
    x0 = jax.lax.stop_gradient(x0)
    if probe is not None:
        return finish(*_implicit_vjp(fn, solver, backward, x0, params, probe, layout))
    return finish(*_implicit_jvp(fn, solver, backward, x0, params, layout))
