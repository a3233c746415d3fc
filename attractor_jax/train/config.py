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

    path: str | None = None
    tokenizer: str = "byte"
    val_path: str | None = None
    val_fraction: float = 0.05
    text_field: str = "text"

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction!r} must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``batch_size`` is the global batch (sequences per optimizer step, split into
    ``grad_accum`` micro-batches); ``eval_depths`` are the partial solver depths validated besides the full
    solve; ``mesh`` is e.g. ``"data=2,fsdp=2,tensor=2"`` (None: all devices on ``data``); ``dtype`` overrides
    the model's compute dtype (``"bfloat16"`` on accelerators; parameters stay float32)."""

    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 128
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 4
    eval_depths: tuple[int, ...] = (0, 1, 2, 4)
    save_every: int = 200
    keep: int = 3
    grad_accum: int = 1
    mesh: str | None = None
    dtype: str | None = None
    async_checkpoint: bool = True
    tensorboard: bool = True

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

    def to_dict(self) -> dict:
        return {"model": config_to_dict(self.model), "train": dataclasses.asdict(self.train),
                "optim": dataclasses.asdict(self.optim), "data": dataclasses.asdict(self.data)}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        def build(kind, values):
            fields = {f.name: f for f in dataclasses.fields(kind)}
            out = {}
            for k, v in values.items():
                if k not in fields:
                    raise ValueError(f"{kind.__name__}: unknown field {k!r}")
                out[k] = tuple(v) if isinstance(v, list) else v
            return kind(**out)

        model = config_from_dict(d["model"])
        optim = dict(d.get("optim", {}))
        if is_reasoner(model) and "optimizer" not in optim:  # written by the former PuzzleOptimConfig
            optim.update(optimizer="trm", schedule="warmup_cosine")
        return cls(model=model, train=build(TrainConfig, d.get("train", {})),
                   optim=build(OptimConfig, optim), data=build(DataConfig, d.get("data", {})))


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
        if section == "model":
            head, _, rest = field.partition(".")
            cur = getattr(run.model, head, None)
            cur = getattr(cur, rest, None) if rest else cur
            try:
                model_overrides[field] = _coerce(text.strip(), cur)
            except ValueError as exc:
                raise ValueError(f"--set {key}={text}: {exc}") from None
            continue
        cfg = sections[section]
        names = {f.name for f in dataclasses.fields(cfg)}
        if field not in names:
            raise ValueError(f"--set {key!r}: unknown field of {section}; valid: {', '.join(sorted(names))}")
        try:
            value = _coerce(text.strip(), getattr(cfg, field))
        except ValueError as exc:
            raise ValueError(f"--set {key}={text}: {exc}") from None
        sections[section] = dataclasses.replace(cfg, **{field: value})
    model = get_config(run.model, **model_overrides) if model_overrides else run.model
    return RunConfig(model=model, **sections)
