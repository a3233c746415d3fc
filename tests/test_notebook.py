"""The quickstart notebook's CI run: execute notebooks/quickstart.ipynb headless with tiny settings.

The kernel is this interpreter (a kernelspec written to a temporary JUPYTER_PATH, so no system-wide "python3"
kernel can be picked up), the notebook runs in a temporary working directory, and any cell error fails the test.
"""

import json
import os
import pathlib
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"

TINY = {
    "QUICKSTART_STEPS": "20",
    "QUICKSTART_BATCH": "2",
    "QUICKSTART_SEQ_LEN": "64",
    "QUICKSTART_EVAL_BATCHES": "2",
}


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "clear the notebook's outputs"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    jupyter = tmp_path / "jupyter"
    spec = jupyter / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # e.g. a forced host device count would not divide the batch
    monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "runs"))
    for key, value in TINY.items():
        monkeypatch.setenv(key, value)
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, startup_timeout=120,
                                     resources={"metadata": {"path": str(cwd)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    print(f"quickstart notebook executed in {time.perf_counter() - t0:.0f} s")

    streams = [o for o in nb.cells[-1].outputs if o.output_type == "stream"]
    assert "".join(o.text for o in streams).strip() == sys.executable
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 2, "the loss curve and the depth sweep should be plotted"
    assert (tmp_path / "runs" / "attractor-tiny" / "eval.json").exists()
