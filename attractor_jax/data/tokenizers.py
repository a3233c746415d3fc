"""Tokenizers behind one interface: a built-in byte tokenizer, SentencePiece models and HF `tokenizers` JSON.

Every tokenizer has `encode(str) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `eos_id`, plus
`encode_batch(texts) -> list[np.ndarray]` (the fast path the text pipeline uses) and `spec`, a string that
identifies it (it goes into the data iterator's state so a resumed run cannot silently switch tokenizers).

The byte tokenizer needs no download and has `vocab_size == 256`, matching the tiny model presets. Ids are the
UTF-8 bytes of the text. Id 0 (the NUL byte, which does not occur in real text) is the end-of-document token:
any NUL characters in the input are removed by `encode`, so id 0 always means EOS.

SentencePiece (`pip install sentencepiece`) and HF `tokenizers` (`pip install tokenizers`) are optional
imports; a clear ImportError names the package when it is missing.
"""

from __future__ import annotations

import os
import pathlib
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from attractor_jax.data.common import import_optional

__all__ = [
    "Tokenizer",
    "ByteTokenizer",
    "SentencePieceTokenizer",
    "HFTokenizer",
    "make_tokenizer",
]

# Tokens that HF tokenizer files commonly use to end a document, tried in this order.
_HF_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eos|>", "[EOS]", "<|im_end|>")


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline and generation code need from a tokenizer."""

    spec: str
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...


class ByteTokenizer:
    """UTF-8 bytes as ids (vocab 256); id 0 (NUL) is EOS and NUL characters are removed from the input."""

    spec = "byte"
    vocab_size = 256
    eos_id = 0

    @staticmethod
    def _clean(text: str) -> str:
        return text.replace("\0", "") if "\0" in text else text

    def encode_array(self, text: str) -> np.ndarray:
        """The ids of `text` as a uint8 array (no copy of the bytes beyond the UTF-8 encoding)."""
        return np.frombuffer(self._clean(text).encode("utf-8"), dtype=np.uint8)

    def encode(self, text: str) -> list[int]:
        return list(self._clean(text).encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """All documents, each followed by EOS, as one flat uint8 array: a single join and encode, no
        per-token Python work (about 1 ms per MB)."""
        joined = "\0".join(self._clean(t) for t in texts) + "\0"
        return np.frombuffer(joined.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Sequence[int]) -> str:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            bad = int(arr[(arr < 0) | (arr > 255)][0])
            raise ValueError(f"byte tokenizer: token id {bad} is outside the vocabulary [0, 256)")
        arr = arr[arr != self.eos_id]
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256, eos_id=0)"


class SentencePieceTokenizer:
    """A SentencePiece `.model` file. EOS is the model's `eos_id()`; a model without one is rejected."""

    def __init__(self, path: str | os.PathLike):
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model '{path}' does not exist (expected a .model file)")
        spm = import_optional("sentencepiece", f"tokenizer '{path}' is a SentencePiece model: install the "
                              "'sentencepiece' package (pip install sentencepiece, or attractor_jax[text])")
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self.spec = str(path.resolve())
        self.vocab_size = int(self._sp.get_piece_size())
        self.eos_id = int(self._sp.eos_id())
        if self.eos_id < 0:
            raise ValueError(f"SentencePiece model '{path}' has no EOS piece (eos_id = -1); train it with "
                             "--eos_id >= 0")

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32) for ids in self._sp.encode(list(texts), out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.spec!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class HFTokenizer:
    """A Hugging Face `tokenizers` JSON file (`tokenizer.json`). Special tokens are not added by `encode` (the
    pipeline appends EOS itself); EOS is `eos_token` or the first of the usual end tokens the vocabulary has.
    """

    def __init__(self, path: str | os.PathLike, eos_token: str | None = None):
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file '{path}' does not exist (expected a tokenizers JSON file)")
        tokenizers = import_optional("tokenizers", (
            f"tokenizer '{path}' is a Hugging Face tokenizers JSON file: install the 'tokenizers' package "
            "(pip install tokenizers, or attractor_jax[text])"))
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a plain Exception on a malformed file
            raise ValueError(f"tokenizer file '{path}' is not a valid tokenizers JSON file: {e}") from e
        self.spec = str(path.resolve())
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        candidates = (eos_token,) if eos_token is not None else _HF_EOS_CANDIDATES
        for tok in candidates:
            tid = self._tok.token_to_id(tok)
            if tid is not None:
                self.eos_token, self.eos_id = tok, int(tid)
                break
        else:
            raise ValueError(f"tokenizer '{path}' has no end-of-document token: tried {list(candidates)}; "
                             "add one to the vocabulary or pass eos_token=")

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.spec!r}, vocab_size={self.vocab_size}, eos={self.eos_token!r}/{self.eos_id})"


def make_tokenizer(spec: str | os.PathLike | Tokenizer = "byte", *, eos_token: str | None = None) -> Tokenizer:
    """Build a tokenizer from a spec: "byte", a path ending in `.model` (SentencePiece) or `.json` (HF
    `tokenizers`). A Tokenizer instance is returned unchanged. `eos_token` applies to HF JSON files only."""
    if not isinstance(spec, (str, os.PathLike)):
        if isinstance(spec, Tokenizer):
            return spec
        raise TypeError(f"tokenizer must be 'byte', a path or a Tokenizer, got {type(spec).__name__}")
    s = os.fspath(spec)
    if s == "byte":
        return ByteTokenizer()
    if s.endswith(".model"):
        return SentencePieceTokenizer(s)
    if s.endswith(".json"):
        return HFTokenizer(s, eos_token=eos_token)
    raise ValueError(f"unknown tokenizer '{s}': expected 'byte', a SentencePiece file ending in .model, "
                     "or a Hugging Face tokenizers file ending in .json")
