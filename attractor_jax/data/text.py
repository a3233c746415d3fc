"""Language-model text pipeline on grain: sources, tokenisation, packing, shuffling, sharding, resumption.

    it = make_text_pipeline("corpus.txt", seq_len=256, batch_size=8, seed=0)   # tokenizer="byte" by default
    batch = next(it)          # {"inputs": int32 [b, T], "targets": int32 [b, T]}: targets = inputs shifted
    state = it.get_state()    # small JSON-serialisable dict; it.set_state(state) resumes exactly

**Sources** (one interface): a `.txt` / `.jsonl` / `.parquet` file (`.txt.gz`, `.jsonl.gz` too), a directory
(searched recursively) or glob of them, a list of any of these, or a Hugging Face dataset
`hf://OWNER/NAME[/CONFIG][:SPLIT]` streamed with the optional `datasets` package. A `.txt` file is one
document, or several when it contains `doc_separator` (by default `<|endoftext|>`, as in TinyStories); a
`.jsonl` line or a parquet row is one document (field/column `text_field`, default "text"). Empty documents
are dropped.

**Packing**: every document is tokenised and followed by EOS, the documents are concatenated into one stream
of N tokens and the stream is cut into rows of `seq_len + 1` tokens; a row gives `inputs = row[:-1]`, `targets
= row[1:]`. An epoch has R = ceil(N / (seq_len+1)) rows; the last row wraps around to the start of the epoch's
stream, so no token of an epoch is lost (a few at the start appear twice).

**Local files (map mode, the default)**: the corpus is tokenised once into memory (and cached in the
process, so the train and validation pipelines and `text_corpus_stats` share the work), and every batch is
computed from its index with numpy. Epoch e uses its own permutation of the documents (so packing differs
per epoch) and its own permutation of the rows, both drawn from `np.random.default_rng([seed, e])`. Global
row g belongs to epoch g // R; global batch k holds rows [k·B, (k+1)·B) and process p of P takes the
contiguous block of b = B / P rows starting at k·B + p·b. Processes therefore see disjoint rows, their
blocks concatenated in process order are exactly the batch a single process would see, and the iterator
state (the next batch index) is the same on every host and valid for any host count. The iterator is a grain
`DatasetIterator` over a `grain.MapDataset`, with background prefetch; `grain.checkpoint.CheckpointSave(it)`
/ `CheckpointRestore(it)` save and restore it through orbax.

**Streaming (hf:// specs, or `streaming=True` for local files too big for memory)**: documents are read in
order; document i goes to process i mod P (counted after the validation filter); a seeded shuffle buffer of
`shuffle_buffer` documents mixes them, per epoch; rows are packed on the fly. The state is (epoch, document
index, token offset), restored by re-reading the epoch's stream up to that document, so it is exact but per
host count.

**Validation split**: `val_path` (a separate source) or `val_fraction` f. In map mode the split point is the
token (1-f)·N of the corpus in file order, moved to the nearest document boundary when one lies within f·N/2
of it (so no document is in both splits), else cut inside the document (a single-document corpus such as
tinyshakespeare is split like nanoGPT does). In streaming mode document i is held out when i mod round(1/f) is
round(1/f)-1. Call the pipeline twice with the same f and split="train" / "validation": the splits are
disjoint.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import itertools
import json
import math
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import grain
import numpy as np

from attractor_jax.data.common import (
    BatchSource,
    GrainWrapper,
    LruCache,
    check_batching,
    check_int,
    check_state_fingerprint,
    default_epochs,
    import_optional,
    lm_batch,
    prefetching_iterator,
)
from attractor_jax.data.tokenizers import ByteTokenizer, Tokenizer, make_tokenizer

__all__ = [
    "SUPPORTED_SUFFIXES",
    "TextCorpusStats",
    "TextIterator",
    "check_val_options",
    "iter_documents",
    "iter_file_documents",
    "jsonl_field",
    "keyed_documents",
    "make_text_pipeline",
    "resolve_text_files",
    "split_documents",
    "text_corpus_stats",
]

SUPPORTED_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
HF_PREFIX = "hf://"
DEFAULT_DOC_SEPARATOR = "<|endoftext|>"
_SPLITS = {"train": "train", "validation": "validation", "val": "validation"}
PathSpec = str | os.PathLike | Sequence[str | os.PathLike]


# ----------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------


def _suffix(path: str | os.PathLike) -> str | None:
    name = os.fspath(path).lower()
    for suf in SUPPORTED_SUFFIXES:
        if name.endswith(suf):
            return suf
    return None


def _expected() -> str:
    suffixes = "/".join(SUPPORTED_SUFFIXES)
    return f"a {suffixes} file, a directory or glob of them, or {HF_PREFIX}OWNER/NAME[/CONFIG]"


def _as_list(path: PathSpec) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    items = [os.fspath(p) for p in path]
    if not items:
        raise ValueError(f"text data path list is empty: expected {_expected()}")
    return items


def resolve_text_files(path: PathSpec) -> list[pathlib.Path]:
    """The text files a local path spec names, in a deterministic order. A file must have a supported suffix;
    directories (recursive) and globs keep only supported files and must contain at least one."""
    out: list[pathlib.Path] = []
    for item in _as_list(path):
        if item.startswith(HF_PREFIX):
            raise ValueError(f"'{item}' is a Hugging Face dataset, not a local path; it cannot be mixed with files")
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            files = [pathlib.Path(m) for m in matches if os.path.isfile(m) and _suffix(m)]
            if not files:
                raise FileNotFoundError(f"no {'/'.join(SUPPORTED_SUFFIXES)} files match the glob '{item}'")
            out.extend(files)
            continue
        p = pathlib.Path(item).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and _suffix(f.name)
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                raise FileNotFoundError(f"directory '{p}' contains no {'/'.join(SUPPORTED_SUFFIXES)} files")
            out.extend(files)
        elif p.is_file():
            if _suffix(p.name) is None:
                raise ValueError(
                    f"unsupported text file '{p}' (suffix '{''.join(p.suffixes) or '<none>'}'): "
                    f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
                )
            out.append(p)
        else:
            raise FileNotFoundError(f"text data path '{item}' does not exist (expected {_expected()})")
    return out


def _split_text(text: str, doc_separator: str | None) -> list[str]:
    sep = DEFAULT_DOC_SEPARATOR if doc_separator == "auto" else doc_separator
    if sep and sep in text:
        return [d for d in (piece.strip() for piece in text.split(sep)) if d]
    return [text] if text.strip() else []


def _open_text(path: pathlib.Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def jsonl_field(path: pathlib.Path, field: str) -> Iterator[tuple[int, Any]]:
    """``(line number, value of field)`` of each non-blank line of a (possibly gzipped) jsonl file; ValueError
    naming the line for one that is not a JSON object holding ``field``."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
            if not isinstance(obj, dict) or field not in obj:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with a string field '{field}'")
            yield lineno, obj[field]


def iter_file_documents(path: pathlib.Path, text_field: str, doc_separator: str | None) -> Iterator[str]:
    """Documents of one text file (a supported suffix), in file order; empty documents are dropped."""
    suf = _suffix(path.name)
    if suf in (".txt", ".txt.gz"):
        with _open_text(path) as f:
            yield from _split_text(f.read(), doc_separator)
    elif suf in (".jsonl", ".jsonl.gz"):
        for lineno, text in jsonl_field(path, text_field):
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: field '{text_field}' is {type(text).__name__}, expected a string")
            if text.strip():
                yield text
    elif suf == ".parquet":
        pq = import_optional("pyarrow.parquet", f"reading '{path}' needs the 'pyarrow' package (pip install "
                             "pyarrow, or attractor_jax[text])")
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if text_field not in names:
            raise ValueError(f"{path}: no column '{text_field}' (columns: {names}); set text_field=")
        for rb in pf.iter_batches(columns=[text_field], batch_size=4096):
            for text in rb.column(0).to_pylist():
                if isinstance(text, str) and text.strip():
                    yield text
    else:  # resolve_text_files only lets supported suffixes through
        raise ValueError(f"unsupported text file '{path}': expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def keyed_documents(
    files: Sequence[pathlib.Path],
    text_field: str,
    doc_separator: str | None,
    order: Iterable[int] | None = None,
) -> Iterator[tuple[int, str]]:
    """(key, document) of the files taken in `order` (default: file order). Document i of file f has the key
    i + f, which the streaming validation split (and seqio's) tests."""
    for f in range(len(files)) if order is None else order:
        for i, text in enumerate(iter_file_documents(files[int(f)], text_field, doc_separator)):
            yield i + int(f), text


def _parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    body = spec[len(HF_PREFIX) :]
    body, _, hf_split = body.partition(":")
    parts = [p for p in body.split("/") if p]
    if len(parts) not in (2, 3):
        raise ValueError(f"bad Hugging Face dataset spec '{spec}': expected {HF_PREFIX}OWNER/NAME[/CONFIG][:SPLIT]")
    return "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None), (hf_split or "train")


def _hub_documents(spec: str, text_field: str) -> Callable[[], Iterator[tuple[int, str]]]:
    """(index, document) of a streaming Hugging Face dataset's non-empty documents, in its fixed order, each time
    the returned function is called (the hub is contacted once, here, so that errors come early)."""
    repo, config, hf_split = _parse_hf_spec(spec)
    datasets = import_optional("datasets", f"'{spec}' is a Hugging Face dataset: install the 'datasets' "
                               "package (pip install datasets, or attractor_jax[hf])")
    try:
        ds = datasets.load_dataset(repo, name=config, split=hf_split, streaming=True)
    except Exception as e:  # network, auth, a typo in the name: all surface here
        raise ConnectionError(
            f"could not open Hugging Face dataset '{spec}' (repo '{repo}', config {config!r}, split "
            f"'{hf_split}'): {type(e).__name__}: {e}. Check the name and that the hub is reachable, "
            "or download the files and pass a local path"
        ) from e
    features = getattr(ds, "features", None)
    if features is not None and text_field not in features:
        raise ValueError(f"Hugging Face dataset '{spec}' has no column '{text_field}' (columns: {list(features)})")

    def documents() -> Iterator[tuple[int, str]]:
        for i, ex in enumerate(ds):
            text = ex.get(text_field)
            if isinstance(text, str) and text.strip():
                yield i, text

    return documents


# ----------------------------------------------------------------------------------------------------
# Tokenised corpus (map mode)
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Corpus:
    """All documents as one token array; document d is tokens[starts[d]:starts[d+1]] and ends with EOS
    (except a document piece cut by the validation split)."""

    tokens: np.ndarray
    starts: np.ndarray  # int64 [D + 1], starts[0] = 0, starts[-1] = N

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_documents(self) -> int:
        return int(self.starts.shape[0] - 1)

    def slice(self, lo: int, hi: int) -> "_Corpus":
        inner = self.starts[(self.starts > lo) & (self.starts < hi)]
        starts = np.concatenate([[lo], inner, [hi]]).astype(np.int64) - lo
        return _Corpus(self.tokens[lo:hi], starts)


def _token_dtype(vocab_size: int) -> np.dtype:
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _tokenize_documents(docs: list[str], tok: Tokenizer) -> _Corpus:
    if isinstance(tok, ByteTokenizer):
        tokens = tok.encode_documents(docs)
        ends = np.flatnonzero(tokens == tok.eos_id) + 1
        return _Corpus(tokens, np.concatenate([[0], ends]).astype(np.int64))
    dtype = _token_dtype(tok.vocab_size)
    eos = np.array([tok.eos_id], dtype=dtype)
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    for i in range(0, len(docs), 1024):
        for ids in tok.encode_batch(docs[i : i + 1024]):
            parts.append(np.asarray(ids).astype(dtype, copy=False))
            parts.append(eos)
            lengths.append(len(ids) + 1)
    tokens = np.concatenate(parts) if parts else np.zeros((0,), dtype)
    return _Corpus(tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


_CORPUS_CACHE = LruCache(2)


def _tokenizer_key(tok: Tokenizer) -> Any:
    spec = getattr(tok, "spec", None)
    if spec is None:
        return None
    try:
        st = os.stat(spec)
        return (type(tok).__name__, spec, st.st_size, st.st_mtime_ns)
    except OSError:
        return (type(tok).__name__, spec)


def _load_corpus(files: list[pathlib.Path], tok: Tokenizer, text_field: str, doc_separator: str | None) -> _Corpus:
    """Read and tokenise every file (cached per process on file identity, tokenizer and options)."""

    def read() -> _Corpus:
        docs = [d for f in files for d in iter_file_documents(f, text_field, doc_separator)]
        if not docs:
            names = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
            raise ValueError(f"text data {names} contains no documents (every file or record is empty)")
        return _tokenize_documents(docs, tok)

    tkey = _tokenizer_key(tok)
    if tkey is None:
        return read()
    stats = [(f, f.stat()) for f in files]
    ident = tuple((str(f.resolve()), st.st_size, st.st_mtime_ns) for f, st in stats)
    return _CORPUS_CACHE.get((ident, tkey, text_field, doc_separator), read)


def _split_corpus(corpus: _Corpus, split: str, val_fraction: float) -> _Corpus:
    """The train or validation part of a corpus held out by `val_fraction` (see the module docstring)."""
    n = corpus.num_tokens
    target = int(round((1.0 - val_fraction) * n))
    cut = target
    interior = corpus.starts[1:-1]
    if interior.size:
        b = int(interior[np.argmin(np.abs(interior - target))])
        if abs(b - target) <= 0.5 * val_fraction * n:
            cut = b
    if cut <= 0 or cut >= n:
        raise ValueError(
            f"val_fraction={val_fraction} leaves an empty {'validation' if cut >= n else 'training'} split "
            f"of a corpus of {n} tokens; expected a fraction that holds out at least one token on each side"
        )
    return corpus.slice(0, cut) if split == "train" else corpus.slice(cut, n)


# ----------------------------------------------------------------------------------------------------
# Stats
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextCorpusStats:
    """Size of one split for logging. `num_rows` counts rows of seq_len+1 tokens per epoch. Streaming sources
    report None (their size is unknown without reading them)."""

    num_documents: int | None
    num_tokens: int | None
    num_rows: int | None
    seq_len: int


# ----------------------------------------------------------------------------------------------------
# Map mode: batches computed from their index
# ----------------------------------------------------------------------------------------------------


class _PackedBatches(BatchSource):
    """Random-access source whose element k is process-local batch k (the maths: module docstring)."""

    def __init__(self, corpus: _Corpus, *, seq_len: int, seed: int, shuffle: bool, **batching: Any):
        super().__init__(**batching)
        self._tokens = corpus.tokens
        self._starts = corpus.starts
        self._n = corpus.num_tokens
        self._row = seq_len + 1
        self._rows_per_epoch = math.ceil(self._n / self._row)
        self._seed, self._shuffle = seed, shuffle
        self._arange = np.arange(self._row, dtype=np.int64)
        self._tables = LruCache(2)  # a batch spans at most two epochs

    def _epoch_tables(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(document permutation, row permutation, start of each permuted document in the epoch's stream)."""
        rng = np.random.default_rng([self._seed, epoch])
        doc_perm = rng.permutation(self._starts.shape[0] - 1)
        row_perm = rng.permutation(self._rows_per_epoch)
        lengths = np.diff(self._starts)[doc_perm]
        return doc_perm, row_perm, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def rows(self, global_rows: np.ndarray) -> np.ndarray:
        """Token rows [len(global_rows), seq_len+1] for global row indices."""
        epochs, within = np.divmod(global_rows, self._rows_per_epoch)
        out = np.empty((global_rows.shape[0], self._row), dtype=np.int32)
        for e in np.unique(epochs):
            sel = epochs == e
            r = within[sel]
            if self._shuffle:
                doc_perm, row_perm, cum = self._tables.get(int(e), lambda: self._epoch_tables(int(e)))
                pos = (row_perm[r][:, None] * self._row + self._arange) % self._n
                q = np.searchsorted(cum, pos, side="right") - 1
                flat = self._starts[doc_perm[q]] + (pos - cum[q])
            else:
                flat = (r[:, None] * self._row + self._arange) % self._n
            out[sel] = self._tokens[flat]
        return out

    def batch(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        return lm_batch(self.rows(positions))


# ----------------------------------------------------------------------------------------------------
# Iterators
# ----------------------------------------------------------------------------------------------------


class TextIterator(grain.DatasetIterator):
    """A grain `DatasetIterator` of `{"inputs", "targets"}` int32 [b, T] batches with exact, JSON-serialisable
    `get_state()` / `set_state()` (so `grain.checkpoint.CheckpointSave(it)` works inside an orbax Composite).

    The state carries a fingerprint of the pipeline (tokenizer, seq_len, batch size, seed, shuffle, split,
    corpus size); `set_state` with a state from a different pipeline raises ValueError instead of resuming
    silently wrong.

    Attributes: `stats` (TextCorpusStats of this split), `tokenizer`, `seq_len`, `batch_size` (global),
    `local_batch_size` (rows this process yields), `num_batches` (None when unbounded), `config` (the
    fingerprint).
    """

    stats: TextCorpusStats
    tokenizer: Tokenizer
    seq_len: int
    batch_size: int
    local_batch_size: int
    num_batches: int | None
    config: dict[str, Any]

    state_kind = "text"

    def __str__(self) -> str:
        batch = f"{self.local_batch_size}/{self.batch_size}"
        return f"TextIterator({self.config['mode']}, seq_len={self.seq_len}, batch={batch})"


class _MapTextIterator(GrainWrapper, TextIterator):
    """Wraps grain's prefetching iterator over the `_PackedBatches` MapDataset."""


class _StreamTextIterator(TextIterator):
    """Packs a document stream on the fly. `doc_stream(epoch)` must yield this process's documents of that
    epoch in the same order every time it is called; the state is (epoch, document index, token offset)."""

    def __init__(self, doc_stream: Callable[[int], Iterable[str]], tokenizer: Tokenizer, *, seq_len: int,
                 local_batch: int, num_epochs: int | None):
        super().__init__()
        self._doc_stream = doc_stream
        self._tok = tokenizer
        self._row = seq_len + 1
        self._b = local_batch
        self._num_epochs = num_epochs
        self._eos = np.array([tokenizer.eos_id], dtype=np.int32)
        self._epoch = self._doc = self._offset = self._batches = 0
        self._docs: Iterator[str] | None = None
        self._cur: np.ndarray | None = None

    def _load_current(self) -> bool:
        """Make self._cur the document at (epoch, doc); False when the epochs are exhausted."""
        while True:
            if self._num_epochs is not None and self._epoch >= self._num_epochs:
                return False
            if self._docs is None:
                self._docs = iter(self._doc_stream(self._epoch))
                for _ in itertools.islice(self._docs, self._doc):
                    pass
            text = next(self._docs, None)
            if text is not None:
                ids = self._tok.encode_batch([text])[0]
                self._cur = np.concatenate([ids.astype(np.int32, copy=False), self._eos])
                return True
            if self._doc == 0:
                raise ValueError(
                    f"text stream for epoch {self._epoch} yielded no documents for this process "
                    "(empty source, an empty validation split, or more processes than documents)"
                )
            self._epoch, self._doc, self._offset, self._docs = self._epoch + 1, 0, 0, None

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        need = self._b * self._row
        out = np.empty(need, dtype=np.int32)
        filled = 0
        while filled < need:
            if self._cur is None and not self._load_current():
                raise StopIteration
            take = min(need - filled, self._cur.shape[0] - self._offset)
            out[filled : filled + take] = self._cur[self._offset : self._offset + take]
            filled += take
            self._offset += take
            if self._offset == self._cur.shape[0]:
                self._cur, self._doc, self._offset = None, self._doc + 1, 0
        self._batches += 1
        return lm_batch(out.reshape(self._b, self._row))

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "doc": self._doc, "offset": self._offset, "batches": self._batches,
                "config": dict(self.config)}

    def set_state(self, state: dict[str, Any]) -> None:
        check_state_fingerprint(self.config, state, self.state_kind)
        self._epoch, self._doc = int(state["epoch"]), int(state["doc"])
        self._offset, self._batches = int(state["offset"]), int(state["batches"])
        self._docs, self._cur = None, None


def _shuffle_buffer(docs: Iterable[str], size: int, rng: np.random.Generator) -> Iterator[str]:
    """Deterministic reservoir-style shuffle: a seeded draw picks which buffered document comes out next."""
    buf: list[str] = []
    for d in docs:
        if len(buf) < size:
            buf.append(d)
            continue
        i = int(rng.integers(size))
        yield buf[i]
        buf[i] = d
    for i in rng.permutation(len(buf)):
        yield buf[int(i)]


def _raw_documents(a: _TextArgs) -> Callable[[int], Iterator[tuple[int, str]]]:
    """(key, document) of one epoch of a streamed source: a hub dataset in its fixed order, files in a
    per-epoch order when shuffling (keys: `keyed_documents`)."""
    if _is_hf(a.source):
        hub = _hub_documents(os.fspath(a.source), a.text_field)
        return lambda epoch: hub()  # the shuffle buffer reshuffles per epoch; the hub order is fixed
    files = resolve_text_files(a.source)

    def files_epoch(epoch: int) -> Iterator[tuple[int, str]]:
        order = np.random.default_rng([a.seed, epoch, 1]).permutation(len(files)) if a.shuffle else None
        yield from keyed_documents(files, a.text_field, a.doc_separator, order)

    return files_epoch


def iter_documents(path: PathSpec, *, text_field: str = "text", doc_separator: str | None = "auto"
                   ) -> Iterator[str]:
    """The non-empty documents of any source the pipelines read (files, folders, globs, `hf://` datasets), in
    source order, unshuffled and unsplit: what an evaluation scores."""
    if _is_hf(path):
        docs = _hub_documents(os.fspath(path), text_field)()
    else:
        docs = keyed_documents(resolve_text_files(path), text_field, doc_separator)
    for _, text in docs:
        yield text


def _make_doc_stream(a: _TextArgs, shuffle_buffer: int) -> Callable[[int], Iterator[str]]:
    """This process's documents of an epoch: the validation filter on stable document keys, then round-robin
    host sharding, then a shuffle buffer."""
    raw = _raw_documents(a)

    def stream(epoch: int) -> Iterator[str]:
        docs = split_documents(raw(epoch), a.split, a.val_fraction)
        mine = (text for i, (_, text) in enumerate(docs) if i % a.process_count == a.process_index)
        if a.shuffle and shuffle_buffer > 1:
            rng = np.random.default_rng([a.seed, epoch, 2, a.process_index])
            return _shuffle_buffer(mine, shuffle_buffer, rng)
        return iter(mine)

    return stream


# ----------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TextArgs:
    """The checked arguments of `make_text_pipeline` that its two modes share."""

    source: PathSpec
    split: str
    val_fraction: float
    tokenizer: Tokenizer
    seq_len: int
    batch_size: int
    local_batch: int
    process_index: int
    process_count: int
    seed: int
    shuffle: bool
    num_epochs: int | None
    text_field: str
    doc_separator: str | None

    def fingerprint(self, mode: str) -> dict[str, Any]:
        """The fields of the iterator-state fingerprint that both modes record."""
        tok = self.tokenizer
        return {"mode": mode, "tokenizer": f"{type(tok).__name__}:{tok.vocab_size}:{tok.eos_id}",
                "seq_len": self.seq_len, "batch_size": self.batch_size, "seed": self.seed, "shuffle": self.shuffle,
                "split": self.split, "val_fraction": self.val_fraction, "text_field": self.text_field,
                "doc_separator": self.doc_separator}


def _is_hf(path: PathSpec) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(HF_PREFIX)


def check_val_options(val_fraction: float, val_path: PathSpec | None) -> None:
    """ValueError unless `val_fraction` is a number in [0, 1), given only without a `val_path`."""
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction={val_fraction!r} is invalid: expected a number in [0, 1)")
    if val_path is not None and val_fraction > 0:
        raise ValueError("give either val_fraction or val_path, not both")


def split_documents(keyed: Iterable[tuple[int, str]], split: str, val_fraction: float
                    ) -> Iterator[tuple[int, str]]:
    """The (key, document) pairs of `split` when `val_fraction` of them is held out by key (streaming mode,
    seqio): with p = round(1/val_fraction), at least 2, key k is a validation document exactly when
    k mod p == p - 1. All pairs when val_fraction is 0."""
    if val_fraction <= 0:
        return iter(keyed)
    p = max(2, int(round(1.0 / val_fraction)))
    want_val = split == "validation"
    return (kd for kd in keyed if (kd[0] % p == p - 1) == want_val)


def _select_source(path: PathSpec, split: str, val_fraction: float, val_path: PathSpec | None):
    """(source spec, val_fraction to apply or 0) for the requested split."""
    if split not in _SPLITS:
        raise ValueError(f"split={split!r} is invalid: expected one of 'train', 'validation'")
    split = _SPLITS[split]
    check_val_options(val_fraction, val_path)
    if split == "validation":
        if val_path is not None:
            return split, val_path, 0.0
        if val_fraction == 0:
            raise ValueError("split='validation' needs val_fraction > 0 or a val_path")
    return split, path, float(val_fraction)


def _load_split(source: PathSpec, split: str, val_fraction: float, tok: Tokenizer, text_field: str, doc_separator):
    corpus = _load_corpus(resolve_text_files(source), tok, text_field, doc_separator)
    if val_fraction > 0:
        corpus = _split_corpus(corpus, split, val_fraction)
    return corpus


def text_corpus_stats(
    path: PathSpec,
    *,
    seq_len: int,
    tokenizer: str | Tokenizer = "byte",
    split: str = "train",
    val_fraction: float = 0.0,
    val_path: PathSpec | None = None,
    text_field: str = "text",
    doc_separator: str | None = "auto",
) -> TextCorpusStats:
    """Documents, tokens and rows per epoch of one split, for logging. Local sources are tokenised once per
    process (cached, and shared with `make_text_pipeline`); hf:// sources report None."""
    seq_len = check_int("seq_len", seq_len, 1)
    split, source, frac = _select_source(path, split, val_fraction, val_path)
    if _is_hf(source):
        return TextCorpusStats(None, None, None, seq_len)
    corpus = _load_split(source, split, frac, make_tokenizer(tokenizer), text_field, doc_separator)
    return TextCorpusStats(
        corpus.num_documents, corpus.num_tokens, math.ceil(corpus.num_tokens / (seq_len + 1)), seq_len
    )


def make_text_pipeline(
    path: PathSpec,
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    tokenizer: str | Tokenizer = "byte",
    split: str = "train",
    val_fraction: float = 0.0,
    val_path: PathSpec | None = None,
    shuffle: bool | None = None,
    num_epochs: int | None = None,
    text_field: str = "text",
    doc_separator: str | None = "auto",
    streaming: bool | None = None,
    shuffle_buffer: int = 10_000,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch: int = 2,
) -> TextIterator:
    """The text LM input pipeline: an iterator of `{"inputs", "targets"}` int32 [batch_size/P, seq_len].

    path: a local file/directory/glob (or list of them) or `hf://OWNER/NAME[/CONFIG][:SPLIT]`.
    seq_len: tokens per row (rows of seq_len + 1 tokens are packed).
    batch_size: the **global** batch; each of the P processes yields batch_size / P rows (P = `process_count`,
      default `jax.process_count()`).
    seed: drives every shuffle. tokenizer: "byte", a `.model` / `.json` path, or a Tokenizer.
    split: "train" or "validation"; the validation data are `val_path`, or `val_fraction` held out of `path`.
    shuffle: default True for train, False for validation.
    num_epochs: default None (repeat forever) for train, 1 for validation; a final partial batch is dropped.
    text_field: JSONL field / parquet / HF column.
    doc_separator: splits `.txt` files into documents ("auto" splits on `<|endoftext|>` when present; None
      keeps each file whole).
    streaming: default True for hf:// specs; True also streams local files instead of loading them.
    shuffle_buffer: documents in the streaming shuffle buffer.
    prefetch: batches prepared ahead in a background thread (map mode; 0 disables the thread).
    process_index / process_count: default to `jax.process_index()` / `jax.process_count()`, which start JAX's
      backend: on multi-host, build the pipeline after `jax.distributed.initialize()` (or pass both).
    """
    seq_len = check_int("seq_len", seq_len, 1)
    batch_size, seed, pidx, pcount, local_batch = check_batching(batch_size, seed, process_index, process_count)
    prefetch = check_int("prefetch", prefetch, 0)
    shuffle_buffer = check_int("shuffle_buffer", shuffle_buffer, 1)
    split, source, frac = _select_source(path, split, val_fraction, val_path)
    num_epochs = default_epochs(num_epochs, finite=split == "validation")
    tok = make_tokenizer(tokenizer)
    shuffle = split == "train" if shuffle is None else bool(shuffle)
    args = _TextArgs(source, split, frac, tok, seq_len, batch_size, local_batch, pidx, pcount, seed, shuffle,
                     num_epochs, text_field, doc_separator)
    if streaming is None:
        streaming = _is_hf(source)
    if streaming:
        it, stats, num_batches, extra = _stream_iterator(args, shuffle_buffer)
    else:
        it, stats, num_batches, extra = _map_iterator(args, prefetch)
    it.stats, it.tokenizer, it.seq_len = stats, tok, seq_len
    it.batch_size, it.local_batch_size, it.num_batches = batch_size, local_batch, num_batches
    it.config = {**args.fingerprint("stream" if streaming else "map"), **extra}
    return it


def _map_iterator(a: _TextArgs, prefetch: int) -> tuple[TextIterator, TextCorpusStats, int | None, dict]:
    """Map mode: (iterator, stats, number of batches, corpus fields of the fingerprint)."""
    if _is_hf(a.source):
        raise ValueError(f"'{a.source}' is a Hugging Face dataset: it can only be streamed (streaming=True)")
    corpus = _load_split(a.source, a.split, a.val_fraction, a.tokenizer, a.text_field, a.doc_separator)
    row = a.seq_len + 1
    if corpus.num_tokens < row:
        raise ValueError(
            f"seq_len={a.seq_len} is too long for the {a.split} split of '{a.source}': it has "
            f"{corpus.num_tokens} tokens, expected at least seq_len + 1 = {row}"
        )
    rows_per_epoch = math.ceil(corpus.num_tokens / row)
    num_batches = None if a.num_epochs is None else (a.num_epochs * rows_per_epoch) // a.batch_size
    if num_batches == 0:
        raise ValueError(
            f"batch_size={a.batch_size} is too large for the {a.split} split of '{a.source}': "
            f"{a.num_epochs} epoch(s) hold {a.num_epochs * rows_per_epoch} rows of {row} tokens, "
            "fewer than one batch"
        )
    src = _PackedBatches(corpus, seq_len=a.seq_len, seed=a.seed, shuffle=a.shuffle, num_batches=num_batches,
                         global_batch=a.batch_size, local_batch=a.local_batch,
                         offset=a.process_index * a.local_batch)
    stats = TextCorpusStats(corpus.num_documents, corpus.num_tokens, rows_per_epoch, a.seq_len)
    extra = {"num_tokens": corpus.num_tokens, "num_documents": corpus.num_documents}
    return _MapTextIterator(prefetching_iterator(src, prefetch)), stats, num_batches, extra


def _stream_iterator(a: _TextArgs, shuffle_buffer: int) -> tuple[TextIterator, TextCorpusStats, None, dict]:
    """Streaming mode: (iterator, stats, None, process fields of the fingerprint)."""
    it = _StreamTextIterator(_make_doc_stream(a, shuffle_buffer), a.tokenizer, seq_len=a.seq_len,
                             local_batch=a.local_batch, num_epochs=a.num_epochs)
    extra = dict(process_index=a.process_index, process_count=a.process_count, shuffle_buffer=shuffle_buffer)
    return it, TextCorpusStats(None, None, None, a.seq_len), None, extra
