"""Incremental documentation ingestion into versioned RAG indices.

The stages, each usable on its own; `run_ingest` chains them, and the ingest-docs flow passes
the same stages wrapped as Prefect tasks (`IngestStages`), so the sequence exists once:

1. `prepare`: scan the source, hash every document, compare with the index version `latest`
   points at; parse and split only new and changed documents.
2. `embed`: embed the new chunks, checkpointing to the store as it goes, so a killed run
   resumes without re-embedding what finished.
3. `assemble`: the new version = unchanged documents' chunks and vectors, copied from the
   previous version, plus the new ones. Deleted documents are left out.
4. `publish`: upload the version, then flip `latest` from the previous version to it.

A version's files: `nodes.jsonl` (one chunk per line), `embeddings.npy` (float32, row i is
line i), `bm25/` (the BM25 index of the same chunks, row i is line i), `docs.json` (the
document table the next run plans against), `retrieval-eval.json` (dense, BM25 and hybrid).
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from slmops.errors import ConfigError, SlmopsError
from slmops.rag.docs import DocLimits, DocRejected, DocSource, ParsedDoc, SkippedDoc, parse_document
from slmops.rag.hybrid import BM25_DIR, build_bm25
from slmops.rag.index_files import DOCS, EMBEDDINGS, EVAL_REPORT, NODES, disable_llm
from slmops.store import open_store
from slmops.store.base import ObjectStore
from slmops.store.hashing import sha256_bytes
from slmops.store.manifest import InputRef, Manifest, Trigger
from slmops.store.versions import INDEXES, LATEST, VersionedArtifact, new_version_id

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


class DocRecord(BaseModel):
    path: str
    sha256: str
    size: int
    format: str
    title: str
    chunks: int
    pages: int | None = None


class IngestPlan(BaseModel):
    """What changed in the source since the version `latest` points at."""

    index: str
    source: str
    previous_version: str | None
    added: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    kept: list[SkippedDoc] = Field(
        default_factory=list, description="Unreadable now; previous chunks kept."
    )
    skipped: list[SkippedDoc] = Field(default_factory=list)
    new_chunks: int = 0
    fingerprint: str = Field("", description="Chunking + embedding model of this run.")
    rebuild: str | None = Field(None, description="Why every document is re-embedded.")
    timings: dict[str, float] = Field(default_factory=dict)

    @property
    def has_changes(self) -> bool:
        return bool(self.added or self.changed or self.deleted)


def fingerprint(config: IngestConfig) -> str:
    """What the chunks and vectors depend on: chunking settings and the model's content.

    Computed without loading the model, so a run with nothing to do stays cheap."""
    from slmops.rag.embedder import model_id, resolve_model_path

    model = model_id(resolve_model_path(config.embed_model), config.embed_backend)
    basis = f"{config.chunk_size}/{config.chunk_overlap}/{model}"
    if config.embed_title:  # indexes made before the setting keep their fingerprint off
        basis += "/title"
    return sha256_bytes(basis.encode())[:16]


class IngestReport(BaseModel):
    """The outcome of one ingest run, as shown in the run's report and the manifest."""

    plan: IngestPlan
    version: str | None = Field(None, description="New version, or None if nothing changed.")
    chunks_total: int = 0
    chunks_embedded: int = 0
    chunks_resumed: int = 0
    chunks_reused: int = 0
    retrieval: dict[str, float] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)

    def record(self, stats: EmbedStats, index_dir: Path) -> None:
        """Fill in the chunk counts once the new version is assembled in `index_dir`."""
        self.version = self.version or new_version_id()
        with open(index_dir / NODES, encoding="utf-8") as fh:
            self.chunks_total = sum(1 for _ in fh)
        self.chunks_embedded, self.chunks_resumed = stats.embedded, stats.resumed
        self.chunks_reused = self.chunks_total - self.plan.new_chunks
        self.timings["embed"] = stats.seconds

    def summary(self) -> str:
        p = self.plan
        head = (
            f"index {p.index}: {len(p.added)} added, {len(p.changed)} changed, "
            f"{len(p.deleted)} deleted, {len(p.unchanged)} unchanged, "
            f"{len(p.skipped) + len(p.kept)} skipped"
        )
        if p.rebuild:
            head += f" ({p.rebuild})"
        if self.version is None:
            return f"{head}; nothing to publish, latest stays at {p.previous_version}"
        return (
            f"{head}; {self.chunks_embedded} chunks embedded, {self.chunks_reused} reused, "
            f"{self.chunks_resumed} resumed; published {self.version}"
        )


def _index(store: ObjectStore, name: str) -> VersionedArtifact:
    return VersionedArtifact(store, INDEXES, name)


def previous_docs(
    store: ObjectStore, name: str
) -> tuple[str | None, dict[str, DocRecord], str | None]:
    """The version `latest` points at, its document table and its fingerprint."""
    art = _index(store, name)
    alias = art.get_alias(LATEST)
    if alias is None:
        return None, {}, None
    art.resolve(LATEST)  # a clear error if the alias points at a missing version
    table = json.loads(art.read_file(alias.version, DOCS))
    docs = {d["path"]: DocRecord.model_validate(d) for d in table["docs"]}
    return alias.version, docs, table.get("fingerprint")


# -- 1. prepare --------------------------------------------------------------------------------
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


def prepare(
    source_uri: str,
    store: StoreRef,
    name: str,
    config: IngestConfig,
    workdir: Path,
    *,
    source_endpoint: str | None = None,
    on_stage: StageCallback | None = None,
) -> IngestPlan:
    """Plan the run and split new/changed documents into `workdir/new_chunks.jsonl`.

    on_stage(stage, done, of) is called as files are read ("read") and split ("split")."""
    store = as_store(store)
    t0 = time.perf_counter()
    source = DocSource(source_uri, endpoint_url=source_endpoint)
    files, skipped = source.scan(config.limits)
    previous_version, previous, previous_fingerprint = previous_docs(store, name)
    plan = IngestPlan(
        index=name,
        source=source_uri,
        previous_version=previous_version,
        skipped=skipped,
        fingerprint=fingerprint(config),
    )
    if previous and previous_fingerprint != plan.fingerprint:
        plan.rebuild = (
            "chunking settings or embedding model changed since "
            f"{previous_version}: every document is re-embedded"
        )
        reusable: dict[str, DocRecord] = {}
    else:
        reusable = previous
    t_scan = time.perf_counter()

    parsed: list[ParsedDoc] = []
    present: set[str] = set()
    for n, file in enumerate(files, 1):
        if on_stage:
            on_stage("read", n, len(files))
        try:
            data = source.read(file.path)
        except DocRejected as exc:
            _reject(plan, reusable, file.path, str(exc))
            continue
        present.add(file.path)
        digest = sha256_bytes(data)
        old = previous.get(file.path)
        if old is not None and old.sha256 == digest and file.path in reusable:
            plan.unchanged.append(file.path)
            continue
        try:
            parsed.append(parse_document(file.path, data, config.limits))
        except DocRejected as exc:
            _reject(plan, reusable, file.path, str(exc))
            continue
        (plan.changed if old is not None else plan.added).append(file.path)
    kept = {k.path for k in plan.kept}
    plan.deleted = sorted(set(previous) - present - kept)
    t_read = time.perf_counter()

    if not files and not previous and not config.allow_empty:
        raise ConfigError(
            f"docs source {source_uri!r} holds no documents "
            f"({len(skipped)} files skipped): nothing to index"
        )
    if previous and not present and not kept and not config.allow_empty:
        raise ConfigError(
            f"docs source {source_uri!r} holds no readable documents, but index {name!r} has "
            f"{len(previous)}: refusing to publish an empty index over it. Check the source, or "
            "set allow_empty to really empty the index"
        )

    if workdir.exists():  # a retried task starts from a clean slate
        for stale in ("new_chunks.jsonl", "new_docs.jsonl", "new_embeddings.npy"):
            (workdir / stale).unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    chunks, records = [], []
    if parsed:
        from slmops.rag.embedder import get_embedder

        embedder = get_embedder(config.embed_model, backend=config.embed_backend)
        splitter = make_splitter(config, embedder.count_tokens, embedder.max_tokens)
        for n, doc in enumerate(parsed, 1):
            if on_stage:
                on_stage("split", n, len(parsed))
            pieces = [p for p in splitter.split_text(doc.text) if p.strip()]
            for i, text in enumerate(pieces):
                chunks.append(
                    {
                        "id": chunk_id(doc.path, i, text),
                        "doc": doc.path,
                        "i": i,
                        "title": doc.title,
                        "text": text,
                    }
                )
            records.append(
                DocRecord(
                    path=doc.path,
                    sha256=doc.sha256,
                    size=doc.size,
                    format=doc.format,
                    title=doc.title,
                    chunks=len(pieces),
                    pages=doc.pages,
                ).model_dump()
            )
    _write_jsonl(workdir / "new_docs.jsonl", records)
    _write_jsonl(workdir / "new_chunks.jsonl", chunks)
    plan.new_chunks = len(chunks)
    plan.timings = {
        "scan": t_scan - t0,
        "read_and_hash": t_read - t_scan,
        "parse_and_split": time.perf_counter() - t_read,
    }
    for part in (plan.added, plan.changed, plan.unchanged):
        part.sort()
    return plan


def _reject(plan: IngestPlan, previous: dict[str, DocRecord], path: str, reason: str) -> None:
    if path in previous:  # never lose a good document to a bad edit or a race
        plan.kept.append(SkippedDoc(path=path, reason=f"{reason}; kept the previous version"))
    else:
        plan.skipped.append(SkippedDoc(path=path, reason=reason))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# -- 2. embed ----------------------------------------------------------------------------------
class EmbedStats(BaseModel):
    embedded: int = 0
    resumed: int = 0
    seconds: float = 0.0
    model_id: str = ""


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

    chunks = _read_jsonl(workdir / "new_chunks.jsonl")
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


# -- 3. assemble -------------------------------------------------------------------------------
def assemble(store: StoreRef, plan: IngestPlan, workdir: Path) -> Path:
    """Write the new version's files into `workdir/index/`; returns that folder."""
    store = as_store(store)
    out = workdir / "index"
    out.mkdir(parents=True, exist_ok=True)
    new_chunks = _read_jsonl(workdir / "new_chunks.jsonl")
    new_vectors = np.load(workdir / "new_embeddings.npy")
    records = {
        d["path"]: DocRecord.model_validate(d) for d in _read_jsonl(workdir / "new_docs.jsonl")
    }

    nodes: list[dict[str, Any]] = []
    parts: list[np.ndarray] = []
    carried = set(plan.unchanged) | {k.path for k in plan.kept}
    if carried:
        assert plan.previous_version is not None
        art = _index(store, plan.index)
        old_nodes = [
            json.loads(line)
            for line in art.read_file(plan.previous_version, NODES).decode().splitlines()
            if line
        ]
        old_vectors = np.load(io.BytesIO(art.read_file(plan.previous_version, EMBEDDINGS)))
        keep = [i for i, node in enumerate(old_nodes) if node["doc"] in carried]
        nodes += [old_nodes[i] for i in keep]
        parts.append(old_vectors[keep])
        old_docs = json.loads(art.read_file(plan.previous_version, DOCS))["docs"]
        for doc in old_docs:
            if doc["path"] in carried:
                records[doc["path"]] = DocRecord.model_validate(doc)
    nodes += new_chunks
    if len(new_chunks):
        parts.append(new_vectors)
    vectors = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    # Stable order (by document, then position) so identical inputs give identical files.
    order = sorted(range(len(nodes)), key=lambda i: (nodes[i]["doc"], nodes[i]["i"]))
    nodes = [nodes[i] for i in order]
    vectors = vectors[order] if len(order) else vectors
    _write_jsonl(out / NODES, nodes)
    np.save(out / EMBEDDINGS, vectors.astype(np.float32))
    build_bm25(nodes, out / BM25_DIR)
    table = {
        "fingerprint": plan.fingerprint,
        "docs": [records[p].model_dump() for p in sorted(records)],
        "skipped": [s.model_dump() for s in plan.skipped + plan.kept],
    }
    (out / DOCS).write_text(json.dumps(table, indent=1, ensure_ascii=False))
    return out


# -- 4. publish --------------------------------------------------------------------------------
def publish(
    store: StoreRef,
    report: IngestReport,
    index_dir: Path,
    config: IngestConfig,
    *,
    model_id: str,
    trigger: Trigger | None = None,
) -> Manifest:
    """Upload the version, then move `latest` to it (only if `latest` has not moved meanwhile)."""
    store = as_store(store)
    plan = report.plan
    art = _index(store, plan.index)
    docs = json.loads((index_dir / DOCS).read_text())["docs"]
    docs_digest = sha256_bytes(json.dumps(sorted((d["path"], d["sha256"]) for d in docs)).encode())
    manifest = Manifest(
        kind="index",
        name=plan.index,
        parent=plan.previous_version,
        inputs=[
            InputRef(
                kind="docs",
                name=plan.source,
                uri=plan.source,
                sha256=docs_digest,
                documents=len(docs),
            ),
            InputRef(kind="embedding-model", name=model_id.split("@")[0], version=model_id),
        ]
        + (
            [InputRef(kind="index", name=plan.index, version=plan.previous_version)]
            if plan.previous_version
            else []
        ),
        config=config.model_dump(),
        metrics={
            "documents": len(docs),
            "chunks": report.chunks_total,
            "docs_added": len(plan.added),
            "docs_changed": len(plan.changed),
            "docs_deleted": len(plan.deleted),
            "docs_unchanged": len(plan.unchanged),
            "docs_skipped": len(plan.skipped) + len(plan.kept),
            "chunks_embedded": report.chunks_embedded,
            "chunks_reused": report.chunks_reused,
            "chunks_resumed": report.chunks_resumed,
            **{f"retrieval.{k}": v for k, v in report.retrieval.items()},
        },
        timings=report.timings,
        trigger=trigger or Trigger(),
    )
    stored = art.publish(manifest, index_dir, version=report.version)
    art.set_alias(
        LATEST,
        stored.version,
        expect=plan.previous_version,
        reason=report.summary(),
        trigger=trigger,
    )
    clear_checkpoints(store, plan.index, model_id)
    return stored


# -- evaluation and the whole run --------------------------------------------------------------


def evaluate_candidate(
    index_dir: Path, name: str, config: IngestConfig, *, questions: str | Path | None, k: int
) -> dict[str, float]:
    """Retrieval metrics of the assembled (not yet published) version, saved beside it: each
    question set in each mode (`curated.dense.*`, `curated.bm25.*`, `curated.hybrid.*`) and
    in the mode queries use (`curated.*`: SLMOPS_RETRIEVAL_MODE, hybrid by default)."""
    from slmops.config import get_settings
    from slmops.rag.embedder import get_embedder
    from slmops.rag.evals import evaluate, generate_questions, load_questions, write_report
    from slmops.rag.hybrid import MODES
    from slmops.rag.retrieval import LoadedIndex

    embedder = get_embedder(config.embed_model, backend=config.embed_backend)
    loaded = LoadedIndex(name, "candidate", index_dir, embedder)
    sets = [("curated", load_questions(questions))] if questions else []
    generated = generate_questions(loaded.nodes)
    if generated:
        sets.append(("generated", generated))
    served = get_settings().retrieval_mode
    results = []
    for set_name, asked in sets:
        by_mode = {
            mode: evaluate(loaded, asked, k=k, name=f"{set_name}.{mode}", mode=mode)
            for mode in MODES
        }
        results.append(by_mode[served].model_copy(update={"name": set_name}))
        results += by_mode.values()
    write_report(results, index_dir / EVAL_REPORT)
    return {key: value for r in results for key, value in r.metrics().items()}


@dataclass(frozen=True)
class IngestStages:
    """The stage functions `run_ingest` calls, by keyword. The defaults run them in-process;
    the ingest-docs flow passes the same functions wrapped as Prefect tasks (retries,
    progress artifacts), so the pipeline is written once."""

    prepare: Callable[..., IngestPlan] = prepare
    embed: Callable[..., EmbedStats] = embed
    assemble: Callable[..., Path] = assemble
    evaluate: Callable[..., dict[str, float]] = evaluate_candidate
    publish: Callable[..., Manifest] = publish


def run_ingest(
    source_uri: str,
    store: StoreRef,
    name: str,
    config: IngestConfig | None = None,
    *,
    workdir: Path,
    questions: str | Path | None = None,
    k: int = 5,
    trigger: Trigger | None = None,
    on_progress: Progress | None = None,
    on_plan: Callable[[IngestPlan], None] | None = None,
    on_stage: StageCallback | None = None,
    source_endpoint: str | None = None,
    evaluate: bool = True,
    stages: IngestStages = IngestStages(),
) -> IngestReport:
    """Bring index `name` up to date with `source_uri`: plan, embed what changed, assemble,
    evaluate, publish and move `latest`. Nothing changed: no new version."""
    from slmops.rag.embedder import get_embedder
    from slmops.rag.evals import load_questions
    from slmops.store.versions import check_name

    config = config or IngestConfig()
    check_name(name, "index name")
    if questions:
        load_questions(questions)  # a bad questions file fails before any work
    t0 = time.perf_counter()
    plan = stages.prepare(
        source_uri=source_uri,
        store=store,
        name=name,
        config=config,
        workdir=workdir,
        source_endpoint=source_endpoint,
        **({"on_stage": on_stage} if on_stage else {}),  # Prefect tasks take plain inputs
    )
    if on_plan:
        on_plan(plan)
    report = IngestReport(plan=plan, timings=dict(plan.timings))
    if not plan.has_changes:
        report.timings["total"] = time.perf_counter() - t0
        return report
    stats = stages.embed(
        store=store, name=name, config=config, workdir=workdir, on_progress=on_progress
    )
    t1 = time.perf_counter()
    index_dir = stages.assemble(store=store, plan=plan, workdir=workdir)
    t2 = time.perf_counter()
    report.record(stats, index_dir)
    if evaluate:
        report.retrieval = stages.evaluate(
            index_dir=index_dir, name=name, config=config, questions=questions, k=k
        )
    t3 = time.perf_counter()
    report.timings.update({"assemble": t2 - t1, "evaluate": t3 - t2})
    model_id = (
        stats.model_id or get_embedder(config.embed_model, backend=config.embed_backend).model_id
    )
    stages.publish(
        store=store,
        report=report,
        index_dir=index_dir,
        config=config,
        model_id=model_id,
        trigger=trigger,
    )
    report.timings["publish"] = time.perf_counter() - t3
    report.timings["total"] = time.perf_counter() - t0
    return report
