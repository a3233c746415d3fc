"""`fixed_point`: solve y* = f(y*, *args) on device and differentiate it implicitly.

The forward pass is a batched solver (see `solvers`); the derivative is the ``backward`` mode's (see `backward`:
each mode's ``apply`` runs the solve with its derivative attached). Closed-over arrays in ``f`` are hoisted into
explicit arguments (`jax.closure_convert`), so ``f`` may close over parameters and still receive gradients.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from attractor_jax.implicit.backward import IFT, PROBE_FIELDS, Backward
from attractor_jax.implicit.solvers import Anderson, Solver
from attractor_jax.implicit.types import Solution, SolverStats


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


def fixed_point(
    f: Callable[..., Any],
    y0: Any,
    *args: Any,
    solver: Solver | None = None,
    backward: Backward | None = None,
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
    if not isinstance(solver, Solver):
        raise TypeError(f"fixed_point: solver={solver!r} must be Anderson, Picard or Broyden")
    if not isinstance(backward, Backward):
        raise TypeError(f"fixed_point: backward={backward!r} must be IFT, Neumann, Phantom or Unrolled")
    layout = BatchLayout(y0, batch_axis, causal_axis)
    if probe is not None and tuple(probe.shape) != layout.stats_shape + (PROBE_FIELDS,):
        raise ValueError(f"fixed_point: probe has shape {tuple(probe.shape)}, expected "
                         f"{layout.stats_shape + (PROBE_FIELDS,)} (use adjoint_probe(stats_shape))")

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

    return finish(*backward.apply(solver, fn, x0, params, layout, probe))
