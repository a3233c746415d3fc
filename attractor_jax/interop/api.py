"""Load the authors' checkpoints as our models, and write ours in their format.

    model, config = aj.load_pretrained("path/to/attractor-small-140m")     # or "hf://SandyResearch/..."
    export_pretrained(model, "out/")                                       # config.json + model.pt
    import_pretrained("path/...", "runs/imported")                         # an ordinary run directory

A reference directory holds ``config.json`` and one of ``model.safetensors``, ``pytorch_model.bin``,
``model.pt`` (read in that order). Every tensor is accounted for: a missing or unknown tensor or a shape
mismatch is one ValueError naming it, so a model is never half-loaded.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

import attractor_jax.interop.reference as ref_mod
from attractor_jax.data.common import atomic_path
from attractor_jax.interop.safetensors import load_safetensors, save_safetensors
from attractor_jax.interop.torch_format import load_state_dict, save_state_dict
from attractor_jax.models.config import LMConfig, ParcaeConfig

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt")
REFERENCE_CONFIG = "reference_config.json"  # an imported run's original config.json, the base of its export


def resolve_source(source: str | os.PathLike) -> pathlib.Path:
    """A local directory for ``source``: the directory itself, or ``hf://OWNER/NAME`` downloaded with
    ``huggingface_hub.snapshot_download``."""
    s = str(source)
    if s.startswith("hf://"):
        repo = s[len("hf://"):].strip("/")
        if repo.count("/") != 1:
            raise ValueError(f"source {s!r}: expected hf://OWNER/NAME")
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise ImportError(f"source {s!r} needs the huggingface_hub package: pip install huggingface_hub") from None
        return pathlib.Path(snapshot_download(repo, allow_patterns=["config.json", *WEIGHT_FILES]))
    path = pathlib.Path(s)
    if not path.is_dir():
        raise OSError(f"source {s!r} is not a directory (expected config.json + model.pt or model.safetensors)")
    return path


def read_reference(directory: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """``(config.json contents, tensors)`` of a reference checkpoint directory."""
    d = pathlib.Path(directory)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise OSError(f"{str(d)!r} has no config.json")
    try:
        ref = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(cfg_path)!r} is not valid JSON ({exc})") from None
    for name in WEIGHT_FILES:
        if (d / name).is_file():
            load = load_safetensors if name.endswith(".safetensors") else load_state_dict
            return ref, load(d / name)
    raise OSError(f"{str(d)!r} has none of the weight files {', '.join(WEIGHT_FILES)}")


def _check_shape(name: str, arr: np.ndarray, shape: tuple) -> None:
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"tensor {name!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")


def _check_aux_tensors(cfg: LMConfig, ref: dict, tensors: dict[str, np.ndarray], used: set[str]) -> None:
    """freqs_cis against our RoPE; lm_head by the tying rule; Parcae's never-read value tables and gates."""
    wte = tensors["transformer.wte.weight"]
    if "freqs_cis" in tensors:
        fc = tensors["freqs_cis"]
        bc = cfg.block_config()
        want = ref_mod.rope_table(bc.dim_head, fc.shape[1] if fc.ndim == 5 else 0, cfg.rope_base)
        _check_shape("freqs_cis", fc, want.shape)
        err = float(np.max(np.abs(fc.astype(np.float64) - want))) if fc.size else 0.0
        if err > 1e-4:
            raise ValueError(f"tensor 'freqs_cis' differs from RoPE with base {cfg.rope_base:g} by {err:.3g}: the "
                             "checkpoint's rotary table does not match its config")
        used.add("freqs_cis")
    if "lm_head.weight" in tensors:
        head = tensors["lm_head.weight"]
        if head.shape not in (wte.shape, wte.T.shape):
            _check_shape("lm_head.weight", head, wte.shape)
        if not ref_mod.tied(ref):
            same = np.array_equal(head, wte) if head.shape == wte.shape else np.array_equal(head, wte.T)
            if not same:
                raise ValueError("reference config field tie_embeddings=False with an lm_head.weight that differs "
                                 "from transformer.wte.weight is not supported: our models tie the unembedding")
        used.add("lm_head.weight")
    if isinstance(cfg, ParcaeConfig):
        for name, shape in ref_mod.unused_parcae_names(cfg).items():
            if name in tensors:
                _check_shape(name, tensors[name], shape)
                used.add(name)


def model_from_reference(ref: dict, tensors: dict[str, np.ndarray]) -> tuple[nnx.Module, LMConfig]:
    """Our NNX model (and config) holding the reference checkpoint's weights."""
    from attractor_jax.models.registry import abstract_model

    cfg = ref_mod.config_from_reference(ref)
    if "transformer.wte.weight" not in tensors:
        raise ValueError("missing tensor 'transformer.wte.weight'")
    graphdef, state = nnx.split(abstract_model(cfg))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    used: set[str] = set()
    for path, abstract in flat.items():
        name, transposed = ref_mod.reference_name(cfg.arch, path)
        if name not in tensors:
            raise ValueError(f"missing tensor {name!r} (our {'/'.join(map(str, path))})")
        _check_shape(name, tensors[name], abstract.shape[::-1] if transposed else abstract.shape)
        flat[path] = jnp.asarray(tensors[name].T if transposed else tensors[name], dtype=abstract.dtype)
        used.add(name)
    _check_aux_tensors(cfg, ref, tensors, used)
    unknown = sorted(set(tensors) - used)
    if unknown:
        raise ValueError(f"unknown tensor {unknown[0]!r} in the checkpoint ({len(unknown)} unknown in all): it is "
                         f"not part of a {ref['_class_name']} with this config")
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
    return nnx.merge(graphdef, state), cfg


def load_pretrained(source: str | os.PathLike) -> tuple[nnx.Module, LMConfig]:
    """``(model, config)`` from a reference checkpoint directory or ``hf://OWNER/NAME``."""
    ref, tensors = read_reference(resolve_source(source))
    return model_from_reference(ref, tensors)


def reference_state_dict(model: nnx.Module) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, shared)``: the model's weights under the authors' names (float32, their layouts), plus the
    tensors their code constructs that ours lacks (zero), ``freqs_cis`` and the tied ``lm_head.weight``."""
    cfg: LMConfig = model.config
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    out: dict[str, np.ndarray] = {}
    bc = cfg.block_config()
    out["freqs_cis"] = ref_mod.rope_table(bc.dim_head, cfg.max_seq_len, cfg.rope_base)
    for path, value in sorted(flat.items(), key=lambda kv: str(kv[0])):
        name, transposed = ref_mod.reference_name(cfg.arch, path)
        arr = np.asarray(jax.device_get(value), dtype=np.float32)
        out[name] = np.ascontiguousarray(arr.T if transposed else arr)
    for name, shape in ref_mod.missing_reference_names(cfg).items():
        out[name] = np.zeros(shape, np.float32)
    wte = out["transformer.wte.weight"]
    if cfg.arch == "gpt":  # the authors' GPT holds a separate, never-read [d, V] head
        out["lm_head.weight"] = np.ascontiguousarray(wte.T)
        return out, {}
    out["lm_head.weight"] = wte
    return out, {"lm_head.weight": "transformer.wte.weight"}


def _model_and_base(model_or_workdir: Any) -> tuple[nnx.Module, dict | None]:
    if isinstance(model_or_workdir, nnx.Module):
        return model_or_workdir, getattr(model_or_workdir, "reference_config", None)
    from attractor_jax.train.trainer import load_model

    wd = pathlib.Path(model_or_workdir)
    model, _, _ = load_model(wd)
    base = json.loads((wd / REFERENCE_CONFIG).read_text()) if (wd / REFERENCE_CONFIG).is_file() else None
    return model, base


def export_pretrained(model_or_workdir: Any, out_dir: str | os.PathLike, *, format: str = "pt",
                      overwrite: bool = False, base_config: dict | None = None) -> pathlib.Path:
    """Write ``config.json`` + ``model.pt`` (``format="pt"``) or ``model.safetensors`` for a model or a run
    directory's newest checkpoint. The directory is assembled under a temporary name and renamed; an existing
    ``out_dir`` is an error unless ``overwrite``."""
    if format not in ("pt", "safetensors"):
        raise ValueError(f"format={format!r}; expected 'pt' or 'safetensors'")
    out = pathlib.Path(out_dir)
    if out.exists() and not overwrite:
        raise OSError(f"output {str(out)!r} exists; pass --overwrite to replace it")
    model, base = _model_and_base(model_or_workdir)
    ref = ref_mod.config_to_reference(model.config, base_config or base)
    tensors, shared = reference_state_dict(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, directory=True, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(ref, indent=2))
        if format == "pt":
            save_state_dict(tensors, tmp / "model.pt", shared=shared)
        else:
            save_safetensors({k: v for k, v in tensors.items() if k not in shared}, tmp / "model.safetensors",
                             metadata={"format": "pt"})
    return out


def import_pretrained(source: str | os.PathLike, workdir: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    """Write a reference checkpoint as an ordinary run directory: ``config.json`` (our run config, no data yet),
    one checkpoint at step 0 (the imported weights with a fresh optimizer state) and ``reference_config.json``
    (the original config, the base of a later export). ``eval``, ``train --workdir`` (fine-tuning) and
    ``load_model`` accept it. A workdir that already holds a run is an error; on failure nothing is left."""
    from attractor_jax.train.checkpoint import Checkpointer
    from attractor_jax.train.config import RunConfig, TrainConfig
    from attractor_jax.train.rundir import RunDirectory, write_json_atomic
    from attractor_jax.train.tasks import make_task
    from attractor_jax.train.tasks.lm import TrainState

    wd = pathlib.Path(workdir)
    rd = RunDirectory(wd)
    if rd.has_checkpoint() or rd.config_path.exists():
        raise OSError(f"workdir {str(wd)!r} already holds a run; import into a new workdir")
    if wd.exists() and not wd.is_dir():
        raise OSError(f"workdir {str(wd)!r} exists and is not a directory")
    ref, tensors = read_reference(resolve_source(source))
    model, cfg = model_from_reference(ref, tensors)
    train = TrainConfig(seed=seed, seq_len=min(TrainConfig.seq_len, cfg.max_seq_len))
    run = RunConfig.for_model(cfg, train=train)
    task = make_task(run, validate=False)
    params = jax.device_put(nnx.state(model), task.state_shardings.params)
    state = TrainState(params=params, opt_state=jax.jit(task.optimizer.init)(params),
                       step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed))
    state = jax.device_put(state, task.state_shardings)
    with rd.session(run.to_dict()):
        write_json_atomic(wd / REFERENCE_CONFIG, ref)
        ckpt = Checkpointer(wd, keep=run.train.keep, async_save=False)
        try:
            ckpt.save(0, state, None, {"step": 0, "config": run.to_dict(), "imported_from": str(source)}, force=True)
        finally:
            ckpt.close()
    return wd
