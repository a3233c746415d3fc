"""Pick the CPU backend quietly on machines without accelerators.

The test extra installs libtpu (the TPU compiler, for the compile-only pod check in ``attractor_jax.train.aot``).
With it installed, every JAX process would initialise the TPU backend at start-up, find no chip and print
libtpu's warnings. `prefer_cpu_without_accelerator` selects the CPU backend when there is no TPU chip and no
other accelerator plugin; ``JAX_PLATFORMS`` set by the caller always wins, and the AOT topology compile loads
libtpu by itself, so it is not affected.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
import pkgutil


def _tpu_chip_present() -> bool:
    try:
        from jax._src import hardware_utils

        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # noqa: BLE001 - private helper moved: look for TPU device files instead
        return any(pathlib.Path("/dev").glob("accel*")) or any(pathlib.Path("/dev").glob("vfio/[0-9]*"))


def _accelerator_plugin_installed() -> bool:
    """A PJRT plugin (jax-cuda12-plugin, jax-rocm, ...) besides the built-in TPU one."""
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    spec = importlib.util.find_spec("jax_plugins")
    return bool(spec and list(pkgutil.iter_modules(spec.submodule_search_locations or [])))


def prefer_cpu_without_accelerator() -> bool:
    """Select the CPU backend (env var, for subprocesses too, and jax config) when no accelerator is present and
    ``JAX_PLATFORMS`` is unset. Call before the first JAX computation. Returns whether it did."""
    if "JAX_PLATFORMS" in os.environ or _tpu_chip_present() or _accelerator_plugin_installed():
        return False
    import jax

    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")
    return True
