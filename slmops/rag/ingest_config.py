"""How documents become an index: the settings (IngestConfig, whose fingerprint each index
version records), and the store each ingestion stage is given (an opened store, or its URI
where a Prefect task or a shard in another process is given one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from slmops.rag.docs import DocLimits
from slmops.store import open_store
from slmops.store.base import ObjectStore
from slmops.store.hashing import sha256_bytes

Progress = Callable[[int, int], None]
StageCallback = Callable[[str, int, int], None]  # (stage, done, of)
StoreRef = ObjectStore | str  # a store, or its URI (what Prefect tasks are given)


def as_store(store: StoreRef) -> ObjectStore:
    return store if isinstance(store, ObjectStore) else open_store(store)


class IngestConfig(BaseModel):
    """How documents become an index. Changing a field changes the index's content."""

    chunk_size: int = Field(
        200,
        ge=16,
        description="Chunk size in the embedding model's "
        "tokens; at most its window (256 for MiniLM, less 2 special tokens).",
    )
    chunk_overlap: int = Field(20, ge=0, description="Tokens shared by neighbouring chunks.")
    batch_size: int = Field(64, ge=1, description="Texts per forward pass of the embedder.")
    embed_model: str | None = Field(
        None,
        description="sentence-transformers model folder "
        "(unset: SLMOPS_EMBED_MODEL, else the bundled MiniLM).",
    )
    embed_backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch",
        description="What runs the embedding model: torch, onnx (ONNX Runtime, the same vectors "
        "to float32 rounding, faster on CPU) or onnx-int8 (int8 weights, faster still, vectors "
        "within about cos 0.99). Part of the model's identity: changing it re-embeds the index. "
        "The onnx backends need `pip install 'slmops[onnx]'`.",
    )
    limits: DocLimits = Field(
        default_factory=DocLimits,
        description="Per-file limits: larger files and longer PDFs are skipped and reported.",
    )
    embed_title: bool = Field(
        True,
        description="Embed each chunk as its document's title, a blank line and its text (the "
        "title places a chunk from the middle of a page; BM25 indexes it too). Changing it "
        "re-embeds the index.",
    )
    checkpoint_every: int = Field(512, ge=1, description="Chunks embedded between checkpoints.")
    allow_empty: bool = Field(
        False,
        description="Allow publishing an index with no documents "
        "(off: an empty source is treated as a mistake).",
    )


def fingerprint(config: IngestConfig) -> str:
    """What the chunks and vectors depend on: chunking settings and the model's content.

    Computed without loading the model, so a run with nothing to do stays cheap."""
    from slmops.rag.embedder import model_id, resolve_model_path

    model = model_id(resolve_model_path(config.embed_model), config.embed_backend)
    basis = f"{config.chunk_size}/{config.chunk_overlap}/{model}"
    if config.embed_title:  # indexes made before the setting keep their fingerprint off
        basis += "/title"
    return sha256_bytes(basis.encode())[:16]
