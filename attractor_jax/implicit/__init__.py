"""Pure-JAX implicit layers: fixed-point solvers, implicit backward passes, regularisers and diagnostics.

Imports only `jax`; usable from Flax (NNX or Linen), Equinox or raw pytrees. `f(y, *args)` in, pytree out.
``KINDS`` names every solver and backward mode (``obj.kind``) for serialised configs.
"""

from attractor_jax.implicit.backward import IFT, Backward, Neumann, Phantom, Unrolled, adjoint_probe, adjoint_stats
from attractor_jax.implicit.diagnostics import jacobian_penalty, spectral_radius
from attractor_jax.implicit.fixed_point import fixed_point
from attractor_jax.implicit.solvers import Anderson, Broyden, Picard, Solver
from attractor_jax.implicit.types import Solution, SolverStats

KINDS = {c.kind: c for c in (Anderson, Picard, Broyden, IFT, Neumann, Phantom, Unrolled)}

__all__ = [
    "IFT",
    "KINDS",
    "Anderson",
    "Backward",
    "Broyden",
    "Neumann",
    "Phantom",
    "Picard",
    "Solution",
    "Solver",
    "SolverStats",
    "Unrolled",
    "adjoint_probe",
    "adjoint_stats",
    "fixed_point",
    "jacobian_penalty",
    "spectral_radius",
]
