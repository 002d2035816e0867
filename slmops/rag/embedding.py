"""Ingestion's embedding stage: the new chunks embedded with checkpoints in the store (a
killed run resumes without re-embedding what finished), in this process or fanned out in
shards over a cluster, each shard cut the same way."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from slmops.errors import ConfigError, SlmopsError
from slmops.rag.ingest_config import IngestConfig, Progress, StoreRef, as_store
from slmops.rag.plan import EmbedStats, read_jsonl
from slmops.store import open_store
from slmops.store.base import ObjectStore
from slmops.store.hashing import sha256_bytes
from slmops.store.versions import INDEXES


def _checkpoint_prefix(name: str, model_id: str) -> str:
    return f"{INDEXES}/{name}/work/{sha256_bytes(model_id.encode())[:16]}"


def _load_checkpoints(store: ObjectStore, prefix: str) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for info in store.list_objects(prefix + "/"):
        with np.load(io.BytesIO(store.get_bytes(info.key)), allow_pickle=False) as shard:
            for text_hash, vector in zip(shard["hashes"], shard["vectors"], strict=True):
                found[str(text_hash)] = vector
    return found


@dataclass
class _Pending:
    """The new chunks of a run, what earlier attempts already embedded, and what is left."""

    chunks: list[dict[str, Any]]
    texts: list[str]  # what the embedder reads, row by row
    hashes: list[str]
    done: dict[str, np.ndarray]
    todo: list[int]  # rows still to embed, longest text first
    prefix: str  # where the checkpoints go
    model_id: str

    def blocks(self, size: int) -> list[list[int]]:
        """The rows to embed in blocks of `size`: one checkpoint (or one shard) each. The
        in-process and the fanned-out path cut the same blocks, so each batch the model sees
        holds the same texts either way."""
        return [self.todo[i : i + size] for i in range(0, len(self.todo), size)]

    def vectors(self, dim: int) -> np.ndarray:
        out = np.zeros((len(self.chunks), dim), dtype=np.float32)
        for row, text_hash in enumerate(self.hashes):
            if text_hash in self.done:
                out[row] = self.done[text_hash]
        return out


def _pending(store: ObjectStore, name: str, config: IngestConfig, workdir: Path) -> _Pending:
    from slmops.rag.embedder import model_id, resolve_model_path

    chunks = read_jsonl(workdir / "new_chunks.jsonl")
    mid = model_id(resolve_model_path(config.embed_model), config.embed_backend)
    prefix = _checkpoint_prefix(name, mid)
    done = _load_checkpoints(store, prefix) if chunks else {}
    texts = [embed_text(c, config) for c in chunks]
    hashes = [sha256_bytes(t.encode()) for t in texts]
    todo = [row for row, h in enumerate(hashes) if h not in done]
    # Longest first across the whole run, as sentence-transformers orders one call: batches
    # of similar length waste the least padding, and checkpointing does not break that up.
    todo.sort(key=lambda r: -len(texts[r]))
    return _Pending(chunks, texts, hashes, done, todo, prefix, mid)


def embed_text(chunk: dict[str, Any], config: IngestConfig) -> str:
    """What the embedder reads for a chunk (its checkpoint key is this text's hash)."""
    return f"{chunk['title']}\n\n{chunk['text']}" if config.embed_title else chunk["text"]


def _checkpoint(store: ObjectStore, key: str, hashes: list[str], vectors: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, hashes=np.array(hashes), vectors=vectors)
    store.put_bytes(key, buffer.getvalue(), overwrite=True)


def embed(
    store: StoreRef,
    name: str,
    config: IngestConfig,
    workdir: Path,
    *,
    on_progress: Progress | None = None,
) -> EmbedStats:
    """Embed `workdir/new_chunks.jsonl` into `workdir/new_embeddings.npy`, resumably."""
    store = as_store(store)
    t0 = time.perf_counter()
    work = _pending(store, name, config, workdir)
    stats = EmbedStats(model_id=work.model_id)
    if not work.chunks:
        np.save(workdir / "new_embeddings.npy", np.zeros((0, 0), dtype=np.float32))
        return stats
    from slmops.rag.embedder import get_embedder

    embedder = get_embedder(config.embed_model, backend=config.embed_backend)
    vectors = work.vectors(embedder.dim)
    stats.resumed = len(work.chunks) - len(work.todo)
    if on_progress:
        on_progress(stats.resumed, len(work.chunks))
    for rows in work.blocks(config.checkpoint_every):
        texts = [work.texts[r] for r in rows]
        batch = embedder.encode(texts, batch_size=config.batch_size)
        vectors[rows] = batch
        stats.embedded += len(rows)
        key = f"{work.prefix}/{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz"
        _checkpoint(store, key, [work.hashes[r] for r in rows], batch)
        if on_progress:
            on_progress(stats.resumed + stats.embedded, len(work.chunks))
    np.save(workdir / "new_embeddings.npy", vectors)
    stats.seconds = time.perf_counter() - t0
    return stats


# -- 2b. embed, fanned out ---------------------------------------------------------------------
class EmbedShard(BaseModel):
    """One block of new chunks to embed wherever a worker runs: its texts wait in the store,
    its vectors go back there as a checkpoint. Only store keys travel between processes."""

    store: str = Field(description="Store URI; the worker opens it with its own settings.")
    index: str
    number: int
    of: int
    texts: str = Field(description="Store key of the shard's input (JSONL: hash, text).")
    checkpoint: str = Field(description="Store key its vectors are written to (npz).")
    chunks: int
    embed_model: str | None
    embed_backend: str = "torch"
    model_id: str = Field(description="The run's embedding model; a worker with another refuses.")
    batch_size: int

    @property
    def label(self) -> str:
        return f"shard {self.number + 1}/{self.of} of index {self.index} ({self.chunks} chunks)"


def embed_shard(shard: EmbedShard) -> int:
    """Embed one shard (on a worker) and checkpoint its vectors to the store. A shard whose
    checkpoint exists was finished by an earlier attempt: nothing to do. Returns the chunks
    it embedded."""
    from slmops.rag.embedder import get_embedder

    store = open_store(shard.store)
    if store.exists(shard.checkpoint):
        return 0
    rows = [json.loads(line) for line in store.get_bytes(shard.texts).decode().splitlines()]
    embedder = get_embedder(shard.embed_model, backend=shard.embed_backend)
    if embedder.model_id != shard.model_id:
        raise ConfigError(
            f"{shard.label}: this worker's embedding model is {embedder.model_id}, the run's is "
            f"{shard.model_id}. Give every worker the same model (SLMOPS_EMBED_MODEL, or the "
            "same slmops install): vectors of two models in one index are meaningless"
        )
    vectors = embedder.encode([r["text"] for r in rows], batch_size=shard.batch_size)
    _checkpoint(store, shard.checkpoint, [r["hash"] for r in rows], vectors)
    return len(rows)


# Runs shards somewhere (a Dask or Ray cluster through a Prefect task runner, or in this
# process) and yields each with None once it is done, or with the error that ended it.
ShardRunner = Callable[[list[EmbedShard]], Iterator[tuple[EmbedShard, BaseException | None]]]


def run_shards_here(shards: list[EmbedShard]) -> Iterator[tuple[EmbedShard, BaseException | None]]:
    for shard in shards:
        try:
            embed_shard(shard)
        except Exception as exc:
            yield shard, exc
        else:
            yield shard, None


class ShardsFailed(SlmopsError):
    """Shards still failed after every attempt; the finished ones stay checkpointed."""


def embed_fanned_out(
    store: StoreRef,
    name: str,
    config: IngestConfig,
    workdir: Path,
    *,
    run_shards: ShardRunner = run_shards_here,
    attempts: int = 3,
    on_progress: Progress | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> EmbedStats:
    """`embed`, with the blocks of new chunks embedded as shards by `run_shards`, in parallel
    where it runs them on several workers. A shard that fails (its worker crashed, say) is run
    again, up to `attempts` times in all; every other shard's vectors are already in the store,
    so a crash costs its shard only, and a re-run of the whole ingest resumes from them too.
    The result is the same file `embed` writes: same rows, same order, the same batches."""
    store = as_store(store)
    t0 = time.perf_counter()
    work = _pending(store, name, config, workdir)
    stats = EmbedStats(model_id=work.model_id, resumed=len(work.chunks) - len(work.todo))
    if not work.chunks:
        np.save(workdir / "new_embeddings.npy", np.zeros((0, 0), dtype=np.float32))
        return stats
    run = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    inputs = f"{work.prefix}-shards/{run}"
    blocks = work.blocks(config.checkpoint_every)
    shards = []
    for number, rows in enumerate(blocks):
        key = f"{inputs}/{number:05d}.jsonl"
        lines = (
            json.dumps({"hash": work.hashes[r], "text": work.texts[r]}, ensure_ascii=False)
            for r in rows
        )
        store.put_bytes(key, ("\n".join(lines) + "\n").encode())
        shards.append(
            EmbedShard(
                store=store.uri,
                index=name,
                number=number,
                of=len(blocks),
                texts=key,
                checkpoint=f"{work.prefix}/{run}-{number:05d}.npz",
                chunks=len(rows),
                embed_model=config.embed_model,
                embed_backend=config.embed_backend,
                model_id=work.model_id,
                batch_size=config.batch_size,
            )
        )
    if on_progress:
        on_progress(stats.resumed, len(work.chunks))
    try:
        left = shards
        for attempt in range(1, attempts + 1):
            failed: list[tuple[EmbedShard, BaseException]] = []
            for shard, error in run_shards(left):
                if error is None:
                    stats.embedded += shard.chunks
                    if on_progress:
                        on_progress(stats.resumed + stats.embedded, len(work.chunks))
                else:
                    failed.append((shard, error))
                    log(f"{shard.label} failed (attempt {attempt} of {attempts}): {error}")
            left = [shard for shard, _ in failed]
            if not left:
                break
        if left:
            reasons = "; ".join(f"{s.label}: {e}" for s, e in failed[:3])
            raise ShardsFailed(
                f"{len(left)} of {len(shards)} shards failed {attempts} times ({reasons}). The "
                f"other shards' vectors are checkpointed in the store: a re-run embeds only the "
                "failed ones"
            )
        work.done = _load_checkpoints(store, work.prefix)
        missing = [r for r, h in enumerate(work.hashes) if h not in work.done]
        if missing:
            raise ShardsFailed(
                f"{len(missing)} chunks have no vectors in {work.prefix}/ although every shard "
                "reported done: was a checkpoint deleted meanwhile? Run the ingest again"
            )
        dim = len(next(iter(work.done.values())))
        np.save(workdir / "new_embeddings.npy", work.vectors(dim))
    finally:
        for info in list(store.list_objects(inputs + "/")):
            store.delete(info.key)
    stats.seconds = time.perf_counter() - t0
    return stats


def clear_checkpoints(store: ObjectStore, name: str, model_id: str) -> None:
    """Drop a finished run's embedding checkpoints (they are in the published version now),
    and any shard inputs a killed fanned-out run left behind."""
    prefix = _checkpoint_prefix(name, model_id)
    for folder in (prefix + "/", prefix + "-shards/"):
        for info in list(store.list_objects(folder)):
            store.delete(info.key)
