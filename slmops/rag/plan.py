"""Ingestion's plan: how documents become an index (IngestConfig), what changed since the
version `latest` points at, and the new and changed documents parsed and split (`prepare`).
The report of a run (IngestReport) is built here too; the pipeline is
slmops.pipelines.ingest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from slmops.errors import ConfigError
from slmops.rag.chunking import chunk_id, make_splitter
from slmops.rag.docs import DocRejected, DocSource, ParsedDoc, SkippedDoc, parse_document
from slmops.rag.index_files import DOCS, NODES
from slmops.rag.ingest_config import IngestConfig, StageCallback, StoreRef, as_store, fingerprint
from slmops.store.base import ObjectStore
from slmops.store.hashing import sha256_bytes
from slmops.store.versions import INDEXES, LATEST, VersionedArtifact, new_version_id


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


class EmbedStats(BaseModel):
    embedded: int = 0
    resumed: int = 0
    seconds: float = 0.0
    model_id: str = ""


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


def index_artifact(store: ObjectStore, name: str) -> VersionedArtifact:
    return VersionedArtifact(store, INDEXES, name)


def previous_docs(
    store: ObjectStore, name: str
) -> tuple[str | None, dict[str, DocRecord], str | None]:
    """The version `latest` points at, its document table and its fingerprint."""
    art = index_artifact(store, name)
    alias = art.get_alias(LATEST)
    if alias is None:
        return None, {}, None
    art.resolve(LATEST)  # a clear error if the alias points at a missing version
    table = json.loads(art.read_file(alias.version, DOCS))
    docs = {d["path"]: DocRecord.model_validate(d) for d in table["docs"]}
    return alias.version, docs, table.get("fingerprint")


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
    write_jsonl(workdir / "new_docs.jsonl", records)
    write_jsonl(workdir / "new_chunks.jsonl", chunks)
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


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
