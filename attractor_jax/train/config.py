"""The run configuration: `RunConfig` = model config + `TrainConfig` (loop) + optimizer config + `DataConfig`,
its JSON form (``config.json`` of a workdir) and ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
from typing import Any

from attractor_jax.models import config_from_dict, config_to_dict, get_config
from attractor_jax.models.config import LMConfig, TRMConfig
from attractor_jax.models.registry import is_reasoner
from attractor_jax.train.optim import OptimConfig, reference_optim_config


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where tokens come from: ``path`` (file, folder, glob or ``hf://...``), a tokenizer spec ("byte", a
    SentencePiece ``.model`` or a HF ``tokenizers`` ``.json``), and the validation split (``val_path``, or the
    last ``val_fraction`` of ``path``)."""

    path: str | None = None  # text file/folder/glob, .jsonl/.parquet, hf://O/N, seqio:TASK, puzzle dir
    tokenizer: str = "byte"  # "byte", a SentencePiece .model or a HF tokenizers .json
    val_path: str | None = None  # validation text (None: the last val_fraction of path)
    val_fraction: float = 0.05  # share of path held out for validation when val_path is None
    text_field: str = "text"  # the field holding the text in .jsonl/.parquet records

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction!r} must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``batch_size`` is the global batch (sequences per optimizer step, split into
    ``grad_accum`` micro-batches); ``eval_depths`` are the partial solver depths validated besides the full
    solve; ``mesh`` is e.g. ``"data=2,fsdp=2,tensor=2"`` (None: all devices on ``data``); ``dtype`` overrides
    the model's compute dtype (``"bfloat16"`` on accelerators; parameters stay float32)."""

    steps: int = 1000  # total optimizer steps (a larger value continues a finished run)
    batch_size: int = 8  # global sequences (or puzzle rows) per optimizer step
    seq_len: int = 128  # tokens per training sequence (LM)
    seed: int = 0  # parameters, data order and dropout/noise keys
    log_every: int = 10  # steps between metrics.jsonl rows
    eval_every: int = 0  # steps between periodic evaluations (0: only at the end)
    eval_batches: int = 4  # validation batches per evaluation
    eval_depths: tuple[int, ...] = (0, 1, 2, 4)  # partial solver depths evaluated besides the full solve
    save_every: int = 200  # steps between checkpoints (0: only at the end)
    keep: int = 3  # checkpoints kept
    grad_accum: int = 1  # micro-batches per step (batch_size must be a multiple)
    mesh: str | None = None  # e.g. "data=2,fsdp=2,tensor=2" (None: all devices on data)
    dtype: str | None = None  # compute dtype override, e.g. "bfloat16" (parameters stay float32)
    async_checkpoint: bool = True  # write checkpoints in the background
    tensorboard: bool = True  # also write TensorBoard event files

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "log_every", "eval_batches", "keep", "grad_accum"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"train.{name}={v!r} must be a positive int")
        for name in ("eval_every", "save_every", "seed"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"train.{name}={v!r} must be an int >= 0")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size={self.batch_size} must be a multiple of "
                             f"train.grad_accum={self.grad_accum}")
        if any(not (isinstance(d, int) and d >= 0) for d in self.eval_depths):
            raise ValueError(f"train.eval_depths={self.eval_depths!r} must be ints >= 0")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run: model config, loop settings, optimizer and data. `RunConfig.for_model(cfg)` starts from the
    reference's optimizer for the model (`reference_optim_config`: TRM's recipe for the puzzle reasoners)."""

    model: LMConfig | TRMConfig
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()

    @classmethod
    def for_model(cls, model: LMConfig | TRMConfig, **sections: Any) -> "RunConfig":
        """A run for ``model`` with the default optimizer of its kind (the reference's settings)."""
        if "optim" not in sections:
            sections["optim"] = reference_optim_config(model)
        return cls(model=model, **sections)

    def model_config(self) -> LMConfig | TRMConfig:
        """The model config with ``train.dtype`` applied (what the run computes with); raises on an unknown dtype."""
        return self.model if self.train.dtype is None else get_config(self.model, dtype=self.train.dtype)

    def to_dict(self) -> dict:
        return {"model": config_to_dict(self.model), "train": dataclasses.asdict(self.train),
                "optim": dataclasses.asdict(self.optim), "data": dataclasses.asdict(self.data)}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        model = config_from_dict(d["model"])
        optim = dict(d.get("optim", {}))
        if is_reasoner(model) and "optimizer" not in optim:  # written by the former PuzzleOptimConfig
            optim.update(optimizer="trm", schedule="warmup_cosine")
        return cls(model=model, train=with_fields("train", TrainConfig(), d.get("train", {})),
                   optim=with_fields("optim", OptimConfig(), optim),
                   data=with_fields("data", DataConfig(), d.get("data", {})))


def with_fields(section: str, base: Any, values: dict) -> Any:
    """``base`` (a section's dataclass) with ``values`` replaced (JSON lists become tuples); an unknown field
    raises ValueError naming it. The one path of ``from_dict`` and ``--set`` for the run's sections."""
    names = [f.name for f in dataclasses.fields(base)]
    for k in values:
        if k not in names:
            raise ValueError(f"unknown field {section}.{k}; valid fields of {section}: {', '.join(names)}")
    return dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _coerce(text: str, current: Any) -> Any:
    """Parse a ``--set`` value to the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{text!r} is not a boolean (true/false)")
    if text.lower() in ("none", "null"):
        return None
    if isinstance(current, (tuple, list)):
        return tuple(_coerce(t, current[0] if current else 0) for t in text.split(",") if t)
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if current is None:
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
    return text


def apply_sets(run: RunConfig, sets: list[str]) -> RunConfig:
    """Apply ``key=value`` overrides. Keys are ``model.FIELD`` (dotted into sub-configs, e.g.
    ``model.solver.tol``), ``train.FIELD``, ``optim.FIELD``, ``data.FIELD``, or a bare field name found in
    exactly one of them."""
    sections = {"train": run.train, "optim": run.optim, "data": run.data}
    model_overrides: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        section, _, field = key.partition(".")
        if section not in ("model", *sections) or not field:
            owners = [s for s, c in sections.items() if key in {f.name for f in dataclasses.fields(c)}]
            model_fields = {f.name for f in dataclasses.fields(run.model)}
            if key in model_fields:
                owners.append("model")
            if len(owners) != 1:
                raise ValueError(
                    f"--set {key!r}: " + ("unknown key" if not owners else f"ambiguous (in {owners})")
                    + "; use model.FIELD, train.FIELD, optim.FIELD or data.FIELD")
            section, field = owners[0], key
        head, _, rest = field.partition(".")
        cur = getattr(run.model if section == "model" else sections[section], head, None)
        cur = getattr(cur, rest, None) if rest else cur
        try:
            value = _coerce(text.strip(), cur)
            if section == "model":
                model_overrides[field] = value
            else:
                sections[section] = with_fields(section, sections[section], {field: value})
        except ValueError as exc:
            raise ValueError(f"--set {key}={text}: {exc}") from None
    model = get_config(run.model, **model_overrides) if model_overrides else run.model
    return RunConfig(model=model, **sections)
