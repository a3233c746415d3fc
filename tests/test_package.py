"""Package-level promises: the implicit core imports only JAX; the documented top-level names exist."""

import subprocess
import sys

import attractor_jax as aj


def test_implicit_core_imports_only_jax():
    code = ("import sys, attractor_jax.implicit; "
            "print(sorted(m for m in ('flax', 'optax', 'orbax', 'grain') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_top_level_api_names():
    for name in ("fixed_point", "Anderson", "Picard", "Broyden", "IFT", "Neumann", "Phantom", "Unrolled",
                 "jacobian_penalty", "spectral_radius", "adjoint_probe", "adjoint_stats", "Solution", "SolverStats",
                 "create_model", "list_presets", "describe_preset", "generate"):
        assert hasattr(aj, name), name
    assert "attractor-tiny" in aj.list_presets()
