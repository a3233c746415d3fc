"""Shared test helpers. Paths to the read-only real data live beside the project in ../shared/data."""

import pathlib

import jax
import pytest

from attractor_jax._platform import prefer_cpu_without_accelerator

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


# The dev extra installs libtpu for test_aot.py's compile-only check of a v5e slice; on machines without TPU
# chips or another accelerator plugin (CI) the tests run on the CPU backend without libtpu's start-up warnings.
prefer_cpu_without_accelerator()


@pytest.fixture
def x64():
    """Run a test with 64-bit floats (for gradient checks to 1e-5 and beyond)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA
