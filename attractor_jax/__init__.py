"""attractor_jax: Attractor Models in JAX/Flax.

The implicit-layer core (`aj.fixed_point`, solvers, backward modes, regularisers) is pure JAX and importable by
any JAX codebase; models, training and data live in the sub-packages.
"""

from attractor_jax.implicit import (
    IFT,
    Anderson,
    Broyden,
    Neumann,
    Phantom,
    Picard,
    Solution,
    SolverStats,
    Unrolled,
    adjoint_probe,
    adjoint_stats,
    fixed_point,
    jacobian_penalty,
    spectral_radius,
)

__version__ = "0.1.0"

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
