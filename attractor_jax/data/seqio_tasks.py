"""seqio Tasks and Mixtures for the language and puzzle data, and a bridge from any seqio Task or Mixture to
the trainer (docs/seqio.md is the guide). Optional: grain stays the default pipeline; this module needs `pip install
'attractor_jax[seqio]'`, and imports seqio/TensorFlow only inside its functions (never on `import attractor_jax`).

    from attractor_jax.data import seqio_tasks as st
    lm = st.register_text_task("shakespeare", "data/tinyshakespeare.txt")     # -> "attractor_jax.shakespeare"
    sd = st.register_puzzle_task("sudoku", "data/sudoku-1k")                  # -> "attractor_jax.sudoku"
    it = st.make_seqio_pipeline(lm, seq_len=256, batch_size=8, seed=0)   # {"inputs", "targets"}: int32 [b, T]
    attractor-jax train --preset attractor-tiny --data seqio:attractor_jax.shakespeare --workdir runs/x

A text task has one example per document (`targets` = its token ids + EOS), read as `make_text_pipeline` reads
files; with `val_fraction` f, document k of a file (counted with the file index added, as grain's streaming mode
does) is held out when k mod round(1/f) == round(1/f) - 1. `make_seqio_pipeline` packs the examples exactly as
`make_text_pipeline` packs documents (unshuffled: the arrays of `make_text_pipeline(path, streaming=True,
shuffle=False)`, for any process count); `make_seqio_puzzle_pipeline` batches a puzzle task like
`make_puzzle_pipeline`. Their state is (examples consumed, tokens consumed of the next one, batches, fingerprint);
`set_state` rebuilds the deterministic dataset and skips the consumed examples.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import itertools
import json
import logging
import os
import pathlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import grain
import numpy as np

from attractor_jax.data.common import check_batching, check_int, check_state_fingerprint, default_epochs, lm_batch
from attractor_jax.data.text import (
    PathSpec,
    check_val_options,
    keyed_documents,
    resolve_text_files,
    split_documents,
)

__all__ = [
    "ENV_MODULES",
    "INSTALL_HINT",
    "SEQIO_PREFIX",
    "TASK_PREFIX",
    "TEXT_SPEC_PREFIX",
    "SeqioIterator",
    "byte_vocabulary",
    "check_seqio_data",
    "get_provider",
    "import_seqio",
    "import_task_modules",
    "make_seqio_pipeline",
    "make_seqio_pipelines",
    "make_seqio_puzzle_pipeline",
    "make_vocabulary",
    "register_mixture",
    "register_puzzle_task",
    "register_tasks",
    "register_text_task",
    "resolve_seqio_spec",
]

log = logging.getLogger(__name__)

SEQIO_PREFIX = "seqio:"
TASK_PREFIX = "attractor_jax."
TEXT_SPEC_PREFIX = "attractor_jax.text:"
ENV_MODULES = "ATTRACTOR_JAX_SEQIO_MODULES"
INSTALL_HINT = "pip install 'attractor_jax[seqio]'"
_CHUNK = 64  # examples per tf.data batch handed to Python (the packing loop works on whole chunks)
_COUNT_DOCS_MAX_BYTES = 64 << 20  # text tasks over at most this many bytes count their documents up front


# ----------------------------------------------------------------------------------------------------
# Lazy imports
# ----------------------------------------------------------------------------------------------------


@functools.cache
def import_seqio():
    """`(seqio, tensorflow)`, imported on first use. TensorFlow is kept off GPUs/TPUs (JAX owns them) and
    quiet. A missing package raises ImportError naming the `seqio` extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            f"seqio pipelines need TensorFlow and seqio: {INSTALL_HINT} (grain, the default pipeline, needs "
            f"neither) [{e}]"
        ) from e
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # TF already initialised its devices, or has none of that kind
        pass
    try:
        import seqio
    except ImportError as e:
        raise ImportError(f"seqio pipelines need the 'seqio' package: {INSTALL_HINT} [{e}]") from e
    return seqio, tf


# ----------------------------------------------------------------------------------------------------
# Vocabularies
# ----------------------------------------------------------------------------------------------------


@functools.cache
def _byte_vocabulary_class():
    seqio, tf = import_seqio()
    from attractor_jax.data.tokenizers import ByteTokenizer

    table = tf.constant([b""] + [bytes([i]) for i in range(1, 256)])  # id 0 (EOS, and seqio's PAD) decodes to ""

    class ByteVocabulary(seqio.Vocabulary):
        """attractor_jax's byte tokenizer as a seqio Vocabulary: ids are the UTF-8 bytes of the text (vocab
        256), id 0 (NUL) is EOS, NUL characters are dropped when encoding, no UNK and no extra ids. It agrees
        with `make_tokenizer("byte")` exactly, in Python and in TensorFlow."""

        def __init__(self):
            super().__init__(extra_ids=0)
            self._tok = ByteTokenizer()

        @property
        def eos_id(self) -> int:
            return 0

        @property
        def unk_id(self) -> None:
            return None

        @property
        def bos_id(self) -> None:
            return None

        @property
        def _base_vocab_size(self) -> int:
            return 256

        def _encode(self, s: str) -> list[int]:
            return self._tok.encode(s)

        def _decode(self, ids) -> str:
            return self._tok.decode(ids)

        def _encode_tf(self, s):
            s = tf.convert_to_tensor(s, tf.string)
            if s.shape.rank == 0:
                ids = tf.cast(tf.io.decode_raw(s, tf.uint8), tf.int32)
                return tf.boolean_mask(ids, tf.not_equal(ids, 0))
            chars = tf.strings.bytes_split(s)  # ragged [..., bytes] of one-byte strings
            flat = tf.cast(tf.reshape(tf.io.decode_raw(chars.flat_values, tf.uint8), [-1]), tf.int32)
            ids = chars.with_flat_values(flat)
            return tf.ragged.boolean_mask(ids, tf.not_equal(ids, 0))

        def _decode_tf(self, ids):
            return tf.strings.reduce_join(tf.gather(table, ids), axis=-1)

        def __eq__(self, other) -> bool:
            return type(other) is type(self)

        def __hash__(self) -> int:
            return hash("attractor_jax.ByteVocabulary")

        def __repr__(self) -> str:
            return "ByteVocabulary(vocab_size=256, eos_id=0)"

    return ByteVocabulary


def byte_vocabulary():
    """A seqio Vocabulary identical to `make_tokenizer("byte")` (vocab 256, EOS id 0)."""
    return _byte_vocabulary_class()()


def make_vocabulary(tokenizer: Any = "byte"):
    """The seqio Vocabulary for a tokenizer spec: "byte" -> `byte_vocabulary()`, a `.model` path ->
    `seqio.SentencePieceVocabulary` (same ids as `make_tokenizer(path)`); a seqio Vocabulary is returned as
    is. HF `tokenizers` JSON files have no seqio vocabulary: use grain for them."""
    seqio, _ = import_seqio()
    if isinstance(tokenizer, seqio.Vocabulary):
        return tokenizer
    spec = os.fspath(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else getattr(tokenizer, "spec", None)
    if spec == "byte":
        return byte_vocabulary()
    if isinstance(spec, str) and spec.endswith(".model"):
        if not pathlib.Path(spec).is_file():
            raise FileNotFoundError(f"SentencePiece model '{spec}' does not exist (expected a .model file)")
        return seqio.SentencePieceVocabulary(str(spec))
    raise ValueError(
        f"tokenizer {tokenizer!r} has no seqio vocabulary: expected 'byte' or a SentencePiece .model file "
        "(HF tokenizers .json files work with the grain pipeline only)"
    )


def _vocab_id(vocab) -> str:
    return f"{type(vocab).__name__}:{vocab.vocab_size}:{vocab.eos_id}"


# ----------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------


def _full_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"task name {name!r} is invalid: expected a non-empty string")
    return name if name.startswith(TASK_PREFIX) else TASK_PREFIX + name


def _add(registry, name: str, overwrite: bool, *args: Any, **kwargs: Any) -> str:
    """`registry.add(name, *args, **kwargs)`, replacing a provider of ours only when `overwrite`."""
    seqio, _ = import_seqio()
    if name in registry.names():
        if not overwrite:
            raise ValueError(f"seqio provider '{name}' is already registered (pass overwrite=True to replace it)")
        registry.remove(name)
    if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
        raise ValueError(f"'{name}' is already registered as a seqio Task or Mixture")
    registry.add(name, *args, **kwargs)
    return name


def _function_source(dataset_fn: Callable[..., Any], splits: list[str], counts: dict[str, int] | None):
    """A seqio data source over `dataset_fn` (`_source_class`), never cached to disk by seqio."""
    return _source_class()(dataset_fn, splits=splits, num_input_examples=counts, caching_permitted=False)


@functools.cache
def _source_class():
    seqio, _ = import_seqio()

    class FunctionSource(seqio.FunctionDataSource):
        """A FunctionDataSource whose documents come in a fixed order: shuffling is the Task's seeded shuffle
        buffer (so seqio's warning about uncached function sources shuffling poorly on restart does not apply:
        restarts skip to the exact position)."""

        def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
            return super().get_dataset(split, False, seed, shard_info, **kwargs)

    return FunctionSource


def register_text_task(
    name: str,
    path: PathSpec,
    *,
    tokenizer: Any = "byte",
    val_fraction: float = 0.0,
    val_path: PathSpec | None = None,
    text_field: str = "text",
    doc_separator: str | None = "auto",
    add_eos: bool = True,
    shuffle_buffer_size: int = 1000,
    overwrite: bool = True,
) -> str:
    """Register a seqio Task for language modelling on local text files (module docstring); returns its full
    name (`attractor_jax.` + name). Each example is one document: `{"targets": int32 [n]}` (ids + EOS)."""
    seqio, tf = import_seqio()
    full = _full_name(name)
    files = resolve_text_files(path)  # fail now, not inside tf.data, on a bad path
    val_files = resolve_text_files(val_path) if val_path is not None else None
    check_val_options(val_fraction, val_path)
    splits = ["train"] + (["validation"] if val_files is not None or val_fraction > 0 else [])
    vocab = make_vocabulary(tokenizer)

    def documents(split: str) -> Iterator[str]:
        if split == "validation" and val_files is not None:
            return (text for _, text in keyed_documents(val_files, text_field, doc_separator))
        return (text for _, text in split_documents(keyed_documents(files, text_field, doc_separator), split,
                                                    val_fraction))

    # A corpus small enough to read now: count its documents, so that seqio caches a small one in memory and
    # the shuffle buffer is no larger than an epoch (a 1000-document buffer over a one-document corpus would
    # hold 1000 copies of it).
    counts = None
    if sum(f.stat().st_size for f in files + (val_files or [])) <= _COUNT_DOCS_MAX_BYTES:
        counts = {sp: sum(1 for _ in documents(sp)) for sp in splits}
        if counts["train"] == 0:
            raise ValueError(f"text task '{full}': the train split of {path!r} holds no documents")
        shuffle_buffer_size = max(1, min(shuffle_buffer_size, counts["train"]))

    return _add(
        seqio.TaskRegistry, full, overwrite,
        source=_function_source(_text_dataset_fn(full, splits, documents), splits, counts),
        output_features={"targets": seqio.Feature(vocab, add_eos=add_eos, dtype=tf.int32)},
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            seqio.preprocessors.append_eos,
        ],
        shuffle_buffer_size=shuffle_buffer_size,
    )


def _text_dataset_fn(full: str, splits: list[str], documents: Callable[[str], Iterator[str]]):
    """The seqio dataset_fn of text task `full`: `{"text": document}` for each of `documents(split)`, in
    order (the Task's shuffle buffer shuffles). Documents cross from Python in chunks of 256 (a tf.data
    element per document costs ~100 us)."""
    _, tf = import_seqio()

    def chunks(split: str) -> Iterator[list[str]]:
        docs = documents(split)
        return iter(lambda: list(itertools.islice(docs, 256)), [])

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        del shuffle_files, seed
        if split not in splits:
            raise ValueError(f"task '{full}' has no split '{split}' (splits: {splits})")
        ds = tf.data.Dataset.from_generator(
            lambda: chunks(split), output_signature=tf.TensorSpec((None,), tf.string)
        ).unbatch()
        return ds.map(tf.autograph.experimental.do_not_convert(lambda t: {"text": t}))

    return dataset_fn


def register_puzzle_task(
    name: str,
    path: str | os.PathLike,
    *,
    set_name: str | None = None,
    shuffle_buffer_size: int = 10_000,
    overwrite: bool = True,
) -> str:
    """Register a seqio Task over a built puzzle dataset (Sudoku, Maze, ARC: module docstring); returns its
    full name. Examples: `inputs`, `targets` int32 [L] (-100 where unsupervised), `puzzle_identifiers` int32
    []."""
    seqio, tf = import_seqio()
    from attractor_jax.data.puzzles.reader import load_puzzle_split

    full = _full_name(name)
    root = pathlib.Path(path).expanduser()
    splits = [s for s in ("train", "test") if (root / s / "dataset.json").is_file()]
    if not splits:
        raise FileNotFoundError(f"'{root}' is not a built puzzle dataset: no train/ or test/ with dataset.json")
    metas = {s: load_puzzle_split(root, s, set_name) for s in splits}  # validates the arrays now
    seq_len = {m.metadata.seq_len for m in metas.values()}
    vocab = {m.metadata.vocab_size for m in metas.values()}
    if len(seq_len) != 1 or len(vocab) != 1:
        raise ValueError(f"'{root}': the splits disagree on seq_len {seq_len} or vocab_size {vocab}")
    L, V = seq_len.pop(), vocab.pop()
    n_ids = max(m.metadata.num_puzzle_identifiers for m in metas.values())
    counts = {s: m.num_examples for s, m in metas.items()}
    spec = {
        "inputs": tf.TensorSpec((None, L), tf.int32),
        "targets": tf.TensorSpec((None, L), tf.int32),
        "puzzle_identifiers": tf.TensorSpec((None,), tf.int32),
    }

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        del shuffle_files, seed
        chunks = functools.partial(_puzzle_chunks, root, split, set_name)
        return tf.data.Dataset.from_generator(chunks, output_signature=spec).unbatch()

    feat = functools.partial(seqio.Feature, add_eos=False, dtype=tf.int32)
    features = {
        "inputs": feat(seqio.PassThroughVocabulary(V)),
        "targets": feat(seqio.PassThroughVocabulary(V)),
        "puzzle_identifiers": feat(seqio.PassThroughVocabulary(max(n_ids, 1)), rank=0),
    }
    return _add(seqio.TaskRegistry, full, overwrite, source=_function_source(dataset_fn, splits, counts),
                output_features=features, preprocessors=[], shuffle_buffer_size=shuffle_buffer_size)


def _puzzle_chunks(root: pathlib.Path, split: str, set_name: str | None, chunk: int = 4096
                   ) -> Iterator[dict[str, np.ndarray]]:
    """The examples of a built puzzle split in stored order, `chunk` at a time, as the puzzle pipeline reads
    them (`PuzzleSplit.examples`), the labels named `targets`."""
    from attractor_jax.data.puzzles.reader import load_puzzle_split

    d = load_puzzle_split(root, split, set_name)
    for lo in range(0, d.num_examples, chunk):
        b = d.examples(np.arange(lo, min(lo + chunk, d.num_examples)))
        yield {"inputs": b["inputs"], "targets": b["labels"], "puzzle_identifiers": b["puzzle_identifiers"]}


def register_mixture(
    name: str,
    tasks: Sequence[str] | Mapping[str, float],
    *,
    default_rate: float | None = None,
    overwrite: bool = True,
) -> str:
    """Register a `seqio.Mixture` of registered tasks: a list (rates: `default_rate`, e.g. 1.0) or a mapping
    name -> rate; a name not registered as given gets the `attractor_jax.` prefix. Returns the full name."""
    seqio, _ = import_seqio()
    full = _full_name(name)

    def member(t: str) -> str:  # a registered name as is, else ours with the prefix
        known = (*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names())
        return t if t in known else _full_name(t)

    if isinstance(tasks, Mapping):
        members: list = [(member(t), float(r)) for t, r in tasks.items()]
    else:
        members = [member(t) for t in tasks]
        if default_rate is None:
            default_rate = 1.0
    if not members:
        raise ValueError(f"mixture '{full}' needs at least one task")

    return _add(seqio.MixtureRegistry, full, overwrite, members, default_rate=default_rate)


def register_tasks(
    *,
    text: Mapping[str, PathSpec] | None = None,
    puzzles: Mapping[str, str | os.PathLike] | None = None,
    mixtures: Mapping[str, Sequence[str] | Mapping[str, float]] | None = None,
    tokenizer: Any = "byte",
    val_fraction: float = 0.0,
    text_field: str = "text",
) -> list[str]:
    """Register text tasks (name -> path), puzzle tasks (name -> built dataset folder, e.g. {"sudoku": ...,
    "maze": ..., "arc": ...}) and mixtures (name -> task names, or name -> {task: rate}) in one call; returns
    the full names, in that order."""
    names = [
        register_text_task(n, p, tokenizer=tokenizer, val_fraction=val_fraction, text_field=text_field)
        for n, p in (text or {}).items()
    ]
    names += [register_puzzle_task(n, p) for n, p in (puzzles or {}).items()]
    names += [register_mixture(n, ts) for n, ts in (mixtures or {}).items()]
    return names


# ----------------------------------------------------------------------------------------------------
# Looking up providers from `seqio:` specs
# ----------------------------------------------------------------------------------------------------


def import_task_modules(modules: str | Sequence[str] | None = None) -> list[str]:
    """Import the modules that register tasks: `modules` (comma-separated or a list), by default the
    environment variable ATTRACTOR_JAX_SEQIO_MODULES. Returns the module names imported."""
    if modules is None:
        modules = os.environ.get(ENV_MODULES, "")
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",")]
    done = []
    for m in modules:
        if not m:
            continue
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise ImportError(f"cannot import seqio task module '{m}' (from {ENV_MODULES}): {e}") from e
        done.append(m)
    return done


def _text_spec_name(path: str, tokenizer: Any, val_fraction: float, val_path: Any, text_field: str) -> str:
    files = [str(p.resolve()) for p in resolve_text_files(path)]
    vfiles = [str(p.resolve()) for p in resolve_text_files(val_path)] if val_path is not None else None
    key = json.dumps([files, str(tokenizer), float(val_fraction), vfiles, text_field])
    return f"{TASK_PREFIX}text_{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def resolve_seqio_spec(
    spec: str,
    *,
    tokenizer: Any = "byte",
    val_fraction: float = 0.0,
    val_path: PathSpec | None = None,
    text_field: str = "text",
) -> str:
    """The registered Task/Mixture name a data spec names. `seqio:NAME` (or NAME): a registered provider,
    after importing the ATTRACTOR_JAX_SEQIO_MODULES modules. `seqio:attractor_jax.text:PATH`: a text task for
    PATH (a file, folder or glob), registered now with the given tokenizer and validation split."""
    import_seqio()
    name = spec[len(SEQIO_PREFIX) :] if spec.startswith(SEQIO_PREFIX) else spec
    if name.startswith(TEXT_SPEC_PREFIX):
        path = name[len(TEXT_SPEC_PREFIX) :]
        if not path:
            raise ValueError(f"'{spec}' names no path: expected {SEQIO_PREFIX}{TEXT_SPEC_PREFIX}PATH")
        full = _text_spec_name(path, tokenizer, val_fraction, val_path, text_field)
        seqio, _ = import_seqio()
        if full not in seqio.TaskRegistry.names():
            register_text_task(full, path, tokenizer=tokenizer, val_fraction=val_fraction, val_path=val_path,
                               text_field=text_field)
        return full
    if val_path is not None:
        raise ValueError(f"data.val_path applies to {SEQIO_PREFIX}{TEXT_SPEC_PREFIX}PATH only; the task "
                         f"'{name}' brings its own 'validation' split")
    get_provider(name)
    return name


def get_provider(name: str):
    """The registered seqio Task or Mixture `name` (importing ATTRACTOR_JAX_SEQIO_MODULES first)."""
    seqio, _ = import_seqio()
    import_task_modules()
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        ours = sorted(n for n in (*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names())
                      if n.startswith(TASK_PREFIX))
        raise ValueError(
            f"no seqio Task or Mixture named '{name}' is registered: import the module that registers it by "
            f"listing it in {ENV_MODULES}=my_project.tasks (comma-separated), or use "
            f"{SEQIO_PREFIX}{TEXT_SPEC_PREFIX}PATH for text files (registered attractor_jax tasks: "
            f"{ours or 'none'})"
        ) from None


def _check_feature(provider, feature: str) -> Any:
    """The output feature `feature` of `provider`, which must hold rank-1 integer token ids."""
    feats = provider.output_features
    if feature not in feats:
        raise ValueError(
            f"seqio provider '{provider.name}' has no output feature '{feature}' (features: {sorted(feats)})"
        )
    f = feats[feature]
    if f.rank != 1 or not f.dtype.is_integer:
        raise ValueError(f"feature '{feature}' of '{provider.name}' must hold rank-1 integer token ids, "
                         f"got rank {f.rank} {f.dtype.name}")
    return f


# ----------------------------------------------------------------------------------------------------
# The iterator
# ----------------------------------------------------------------------------------------------------


class SeqioIterator(grain.DatasetIterator):
    """Batches from a seqio Task or Mixture with exact, JSON-serialisable `get_state()` / `set_state()`.

    mode "lm": the `feature` token sequences packed into `{"inputs", "targets"}` int32 [b, seq_len];
    mode "puzzle": fixed-size examples stacked into `{"inputs", "labels", "puzzle_identifiers", "mask"}`.
    The seqio dataset is built lazily (on the first batch, after any `set_state`) and skips the examples
    already consumed. Attributes as the text iterators: `seq_len`, `batch_size` (global), `local_batch_size`,
    `num_batches` (None: unknown/unbounded), `config` (the fingerprint), `provider` (the seqio Task/Mixture).
    """

    def __init__(self, make_dataset: Callable[[int], Any], *, mode: str, local_batch: int, seq_len: int | None,
                 config: dict[str, Any], pad_final: bool = False):
        super().__init__()
        self._make_dataset = make_dataset
        self._mode, self._b, self._row = mode, local_batch, (seq_len + 1 if seq_len else None)
        self._pad_final = pad_final
        self.config = config
        self._restart(0, 0, 0)

    def _restart(self, examples: int, offset: int, batches: int) -> None:
        """Resume after `examples` examples, `offset` tokens of the next one (lm mode) and `batches` batches;
        the dataset is rebuilt on the next batch."""
        self._examples, self._offset, self._batches = examples, offset, batches
        self._it, self._done = None, False
        self._buf = np.zeros((0,), np.int32)  # lm: tokens of the current chunk from position _pos
        self._ends = np.zeros((0,), np.int64)  # lm: end offsets (in _buf) of the chunk's examples
        self._pos = 0
        self._base = 0  # lm: examples before the current chunk

    def _next_element(self) -> dict[str, np.ndarray] | None:
        """The dataset's next element (the dataset built first after a (re)start); None at the end."""
        if self._done:
            return None
        if self._it is None:
            self._it = iter(self._make_dataset(self._examples).as_numpy_iterator())
        element = next(self._it, None)
        self._done = element is None
        return element

    # -- lm ------------------------------------------------------------------------------------------
    def _refill(self) -> bool:
        """Load the next chunk of examples (after a (re)start, the first one skipping the `_offset` tokens
        already consumed of it); False at the end of the data."""
        restart = self._it is None
        if restart:
            self._base, self._ends = self._examples, np.zeros((0,), np.int64)
        chunk = self._next_element()
        if chunk is None:
            return False
        self._base += len(self._ends)
        self._buf = np.asarray(chunk["values"], np.int32)
        self._ends = np.cumsum(chunk["lengths"]).astype(np.int64)
        self._pos = self._offset if restart else 0
        return True

    def _next_lm(self) -> dict[str, np.ndarray]:
        need = self._b * self._row
        out = np.empty(need, np.int32)
        filled = 0
        while filled < need:
            if self._pos >= len(self._buf) and not self._refill():
                raise StopIteration
            take = min(need - filled, len(self._buf) - self._pos)
            out[filled : filled + take] = self._buf[self._pos : self._pos + take]
            filled += take
            self._pos += take
        # (examples consumed, offset into the next one) from the chunk position
        k = int(np.searchsorted(self._ends, self._pos, side="right"))
        self._examples = self._base + k
        self._offset = self._pos - (int(self._ends[k - 1]) if k else 0)
        return lm_batch(out.reshape(self._b, self._row))

    # -- puzzles ---------------------------------------------------------------------------------------
    def _next_puzzle(self) -> dict[str, np.ndarray]:
        batch = self._next_element()
        if batch is None:
            raise StopIteration
        n = len(batch["inputs"])
        self._examples += n
        if n < self._b:  # the final batch: padded, or dropped
            self._done = True
            if not self._pad_final:
                raise StopIteration
            fill = {"inputs": 0, "targets": -100, "puzzle_identifiers": 0}  # PAD, IGNORE_LABEL_ID, blank id
            batch = {k: np.concatenate([v, np.full((self._b - n,) + v.shape[1:], fill[k], v.dtype)])
                     for k, v in batch.items()}
        return {"inputs": batch["inputs"].astype(np.int32), "labels": batch["targets"].astype(np.int32),
                "puzzle_identifiers": batch["puzzle_identifiers"].astype(np.int32), "mask": np.arange(self._b) < n}

    # -- interface -----------------------------------------------------------------------------------
    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        out = self._next_lm() if self._mode == "lm" else self._next_puzzle()
        self._batches += 1
        return out

    def get_state(self) -> dict[str, Any]:
        return {"examples": int(self._examples), "offset": int(self._offset), "batches": int(self._batches),
                "config": dict(self.config)}

    def set_state(self, state: dict[str, Any]) -> None:
        check_state_fingerprint(self.config, state, "seqio", required=("examples", "offset", "batches", "config"))
        self._restart(int(state["examples"]), int(state["offset"]), int(state["batches"]))

    def __str__(self) -> str:
        config = self.config
        return f"SeqioIterator({config.get('name')}, {config.get('split')}, batch={self._b}/{config.get('batch_size')})"


@dataclasses.dataclass(frozen=True)
class _Bridge:
    """The checked arguments of a seqio bridge (`make_seqio_pipeline`, `make_seqio_puzzle_pipeline`)."""

    name: str
    split: str
    provider: Any
    batch_size: int
    seed: int
    process_index: int
    process_count: int
    shuffle: bool
    num_epochs: int | None

    @classmethod
    def open(cls, name, split, batch_size, seed, process_index, process_count, shuffle, num_epochs) -> "_Bridge":
        """The checked arguments; the global batch must split evenly over the processes and the split must
        exist."""
        import_seqio()
        batch_size, seed, pidx, pcount, _ = check_batching(batch_size, seed, process_index, process_count)
        provider = get_provider(name)
        if split not in provider.splits:
            raise ValueError(f"seqio provider '{name}' has no split '{split}' (splits: {list(provider.splits)})")
        return cls(name, split, provider, batch_size, seed, pidx, pcount, shuffle, num_epochs)

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.process_count

    def iterator(self, select: Callable, batch: Callable[[Any], Any], kind: str, fields: dict,
                 passthrough: Sequence[str] = (), **kw: Any) -> SeqioIterator:
        """The SeqioIterator over the split as this process reads it (`seqio.ShardInfo`), each example mapped
        by `select`, then batched by `batch`; `passthrough` features survive a Mixture. Its fingerprint is the
        bridge's arguments and `fields`."""
        seqio, tf = import_seqio()
        shard = seqio.ShardInfo(self.process_index, self.process_count) if self.process_count > 1 else None
        kwargs: dict[str, Any] = dict(sequence_length=None, split=self.split, use_cached=False,
                                      shuffle=self.shuffle, seed=self.seed, shard_info=shard,
                                      num_epochs=self.num_epochs)
        if isinstance(self.provider, seqio.Mixture) and passthrough:
            kwargs["passthrough_features"] = list(passthrough)
        select = tf.autograph.experimental.do_not_convert(select)

        def make(skip: int):
            ds = self.provider.get_dataset(**kwargs)
            ds = (ds.skip(skip) if skip else ds).map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return batch(ds).prefetch(tf.data.AUTOTUNE)

        config = {"kind": kind, "name": self.name, "split": self.split, **fields,
                  "batch_size": self.batch_size, "seed": self.seed, "shuffle": self.shuffle,
                  "num_epochs": self.num_epochs, "process_index": self.process_index,
                  "process_count": self.process_count}
        it = SeqioIterator(make, local_batch=self.local_batch, config=config, **kw)
        it.provider, it.batch_size, it.local_batch_size = self.provider, self.batch_size, self.local_batch
        it.num_batches = None
        return it


def make_seqio_pipeline(
    name: str,
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    split: str = "train",
    shuffle: bool | None = None,
    num_epochs: int | None = None,
    feature: str = "targets",
    process_index: int | None = None,
    process_count: int | None = None,
) -> SeqioIterator:
    """The LM bridge: packed `{"inputs", "targets"}` int32 [batch_size / P, seq_len] batches from the seqio
    Task or Mixture `name` (its `feature` token sequences). shuffle: default True for "train". num_epochs:
    default None (repeat forever) for "train", else 1 (a final partial batch is dropped). batch_size is
    global; process p of P reads `seqio.ShardInfo(p, P)`."""
    seq_len = check_int("seq_len", seq_len, 1)
    shuffle = split == "train" if shuffle is None else bool(shuffle)
    bridge = _Bridge.open(name, split, batch_size, seed, process_index, process_count, shuffle,
                          default_epochs(num_epochs, finite=split != "train"))
    feat = _check_feature(bridge.provider, feature)
    _, tf = import_seqio()
    to_chunk = tf.autograph.experimental.do_not_convert(
        lambda r: {"values": tf.cast(r.flat_values, tf.int32), "lengths": r.row_lengths()})
    fields = {"feature": feature, "vocab": _vocab_id(feat.vocabulary), "seq_len": seq_len}
    it = bridge.iterator(lambda ex: ex[feature], lambda ds: ds.ragged_batch(_CHUNK).map(to_chunk), "seqio-lm",
                         fields, mode="lm", seq_len=seq_len)
    it.seq_len, it.vocabulary = seq_len, feat.vocabulary
    return it


def make_seqio_puzzle_pipeline(
    name: str,
    split: str = "train",
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool | None = None,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> SeqioIterator:
    """Puzzle batches from a seqio puzzle Task or Mixture (features inputs, targets, puzzle_identifiers),
    shaped as `make_puzzle_pipeline`'s: `inputs`, `labels` int32 [b, L], `puzzle_identifiers` int32 [b],
    `mask` bool [b]. shuffle: default True for "train" (seqio's shuffle buffer, not TRM's group sampling).
    num_epochs: default None (repeat) when shuffling, else 1, with the final batch padded (mask False)."""
    shuffle = split == "train" if shuffle is None else bool(shuffle)
    bridge = _Bridge.open(name, split, batch_size, seed, process_index, process_count, shuffle,
                          default_epochs(num_epochs, finite=not shuffle))
    for f in ("inputs", "targets"):
        _check_feature(bridge.provider, f)
    keys = ("inputs", "targets", "puzzle_identifiers")
    it = bridge.iterator(lambda ex: {k: ex[k] for k in keys}, lambda ds: ds.batch(bridge.local_batch),
                         "seqio-puzzle", {}, passthrough=("puzzle_identifiers",), mode="puzzle", seq_len=None,
                         pad_final=not shuffle)
    it.split = split
    return it


# ----------------------------------------------------------------------------------------------------
# Trainer glue
# ----------------------------------------------------------------------------------------------------


def _resolve_data_spec(data: Any) -> str:
    """`resolve_seqio_spec` of a trainer DataConfig: its path, tokenizer, validation split and text field."""
    return resolve_seqio_spec(data.path, tokenizer=data.tokenizer, val_fraction=data.val_fraction,
                              val_path=data.val_path, text_field=data.text_field)


def check_seqio_data(data: Any, *, seq_len: int, batch_size: int) -> int:
    """Validate a `seqio:` data config (the trainer's DataConfig) before anything is written; returns the
    vocabulary size of the `targets` feature. Registers `seqio:attractor_jax.text:PATH` tasks."""
    check_int("seq_len", seq_len, 1)
    check_int("batch_size", batch_size, 1)
    name = _resolve_data_spec(data)
    provider = get_provider(name)
    if "train" not in provider.splits:
        raise ValueError(f"seqio provider '{name}' has no 'train' split (splits: {list(provider.splits)})")
    return int(_check_feature(provider, "targets").vocabulary.vocab_size)


def make_seqio_pipelines(data: Any, train: Any, process_index: int, process_count: int):
    """`(train_it, val_batches_fn)` for the trainer from `data.path = "seqio:..."`; the validation batches are
    the first `train.eval_batches` of the provider's "validation" split (none when it has no such split or the
    split is empty)."""
    name = _resolve_data_spec(data)
    common = dict(seq_len=train.seq_len, batch_size=train.batch_size, seed=train.seed, process_index=process_index,
                  process_count=process_count)
    train_it = make_seqio_pipeline(name, split="train", **common)

    def val_batches() -> list[dict[str, np.ndarray]]:
        if "validation" not in get_provider(name).splits:
            return []
        out = list(itertools.islice(make_seqio_pipeline(name, split="validation", **common), train.eval_batches))
        if not out:
            log.warning("seqio provider '%s': the validation split holds fewer than one batch of %d x %d tokens; "
                        "no validation", name, train.batch_size, train.seq_len + 1)
        return out

    return train_it, val_batches
