"""Data pipelines (grain), tokenizers, puzzle builders and seqio tasks."""

from attractor_jax.data.puzzles import (
    PuzzleDatasetMetadata,
    PuzzleIterator,
    build_arc_dataset,
    build_maze_dataset,
    build_sudoku_dataset,
    generate_maze,
    generate_sudoku,
    load_puzzle_metadata,
    make_puzzle_pipeline,
    validate_maze,
    validate_sudoku,
)
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
    "PuzzleDatasetMetadata",
    "PuzzleIterator",
    "SentencePieceTokenizer",
    "TextCorpusStats",
    "TextIterator",
    "Tokenizer",
    "build_arc_dataset",
    "build_maze_dataset",
    "build_sudoku_dataset",
    "generate_maze",
    "generate_sudoku",
    "load_puzzle_metadata",
    "make_puzzle_pipeline",
    "make_text_pipeline",
    "make_tokenizer",
    "resolve_text_files",
    "text_corpus_stats",
    "validate_maze",
    "validate_sudoku",
]
