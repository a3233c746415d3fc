"""Pure-JAX implicit layers: fixed-point solvers, implicit backward passes, regularisers and diagnostics.

Imports only `jax`; usable from Flax (NNX or Linen), Equinox or raw pytrees. `f(y, *args)` in, pytree out.
"""

from attractor_jax.implicit.backward import IFT, Neumann, Phantom, Unrolled
from attractor_jax.implicit.diagnostics import jacobian_penalty, spectral_radius
from attractor_jax.implicit.fixed_point import adjoint_probe, adjoint_stats, fixed_point
from attractor_jax.implicit.solvers import Anderson, Broyden, Picard
from attractor_jax.implicit.types import Solution, SolverStats

__all__ = [
    "IFT",
    "Anderson",
    "Broyden",
    "Neumann",
    "Phantom",
    "Picard",
    "Solution",
    "SolverStats",
    "Unrolled",
    "adjoint_probe",
    "adjoint_stats",
    "fixed_point",
    "jacobian_penalty",
    "spectral_radius",
]
