"""How a document is split into chunks (in the embedding model's tokens, sentence-aware), and
each chunk's stable id."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from slmops.errors import ConfigError
from slmops.rag.docs import DocSource, parse_document
from slmops.rag.index_files import disable_llm
from slmops.rag.ingest_config import IngestConfig
from slmops.store.hashing import sha256_bytes


def make_splitter(
    config: IngestConfig, count_tokens: Callable[[str], list[int]], max_tokens: int
) -> Any:
    if config.chunk_size > max_tokens:
        raise ConfigError(
            f"chunk_size {config.chunk_size} is larger than the embedding model's window of "
            f"{max_tokens} tokens: text past it would be silently cut off. Use at most "
            f"{max_tokens}"
        )
    if config.chunk_overlap >= config.chunk_size:
        raise ConfigError(
            f"chunk_overlap ({config.chunk_overlap}) must be smaller than "
            f"chunk_size ({config.chunk_size})"
        )
    from llama_index.core.node_parser import SentenceSplitter

    disable_llm()
    return SentenceSplitter(
        chunk_size=config.chunk_size, chunk_overlap=config.chunk_overlap, tokenizer=count_tokens
    )


def chunk_folder(
    folder: Path, config: IngestConfig | None = None, suffixes: Iterable[str] = (".md",)
) -> dict[str, list[str]]:
    """The chunks ingestion cuts each doc under a local folder into (its path relative to the
    folder -> chunk texts in order), for the docs whose names end in one of `suffixes`
    (Markdown by default; `slmops.rag.docs.FORMATS` for every format ingestion reads): the
    passages retrieval puts into a prompt, for building training conversations in the form
    the model is served."""
    from slmops.rag.embedder import token_counter

    config = config or IngestConfig()
    wanted = {suffix.lower() for suffix in suffixes}
    splitter = make_splitter(config, *token_counter(config.embed_model))
    source = DocSource(str(folder))
    files, _ = source.scan(config.limits)  # the files an ingest of the folder reads
    out = {}
    for file in sorted(files, key=lambda f: f.path):
        if PurePosixPath(file.path).suffix.lower() in wanted:
            doc = parse_document(file.path, source.read(file.path), config.limits)
            out[file.path] = [c for c in splitter.split_text(doc.text) if c.strip()]
    return out


def chunk_holding(chunks: list[str], sentence: str) -> str:
    """The first of a doc's chunks (`chunk_folder`) that holds `sentence` (line breaks and runs
    of spaces aside), else its first chunk: the passage retrieval shows for a question the
    sentence answers."""
    flat = " ".join(sentence.split())
    return next((c for c in chunks if flat in " ".join(c.split())), chunks[0])


def chunk_id(path: str, index: int, text: str) -> str:
    return sha256_bytes(f"{path}\0{index}\0{text}".encode())[:32]
