"""attractor_jax: Attractor Models in JAX/Flax.

The implicit-layer core (`aj.fixed_point`, solvers, backward modes, regularisers) is pure JAX and importable by
any JAX codebase; models, training and data live in the sub-packages. The model entry points
(`aj.create_model`, `aj.list_presets`, `aj.describe_preset`, `aj.get_config`), the checkpoint interop
(`aj.load_pretrained`, `aj.export_pretrained`: the paper authors' PyTorch format) and `aj.generate` (text
generation with KV caches) are loaded on first use, so ``import attractor_jax`` (and ``attractor_jax.implicit``)
does not pull in Flax.
"""

import importlib

from attractor_jax import implicit
from attractor_jax.implicit import *  # noqa: F401,F403  (the public core API, listed in implicit.__all__)

__version__ = "0.1.0"

_LAZY = {name: "attractor_jax.models" for name in ("create_model", "list_presets", "describe_preset", "get_config")}
_LAZY.update({name: "attractor_jax.interop" for name in ("load_pretrained", "export_pretrained")})
_LAZY["generate"] = "attractor_jax.eval.generate"

__all__ = [*implicit.__all__, *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attractor_jax' has no attribute {name!r}")
