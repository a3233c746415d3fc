"""Data pipelines (grain), tokenizers, puzzle builders and seqio tasks."""

from attractor_jax.data.text import (
    SUPPORTED_SUFFIXES,
    TextCorpusStats,
    TextIterator,
    make_text_pipeline,
    resolve_text_files,
    text_corpus_stats,
)
from attractor_jax.data.tokenizers import (
    ByteTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    make_tokenizer,
)

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ByteTokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "TextCorpusStats",
    "TextIterator",
    "Tokenizer",
    "make_text_pipeline",
    "make_tokenizer",
    "resolve_text_files",
    "text_corpus_stats",
]
