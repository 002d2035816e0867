"""Ingestion's last stages: the new version assembled (unchanged documents' chunks and vectors
copied from the previous version, the new ones added, deleted ones left out), its retrieval
evaluated, uploaded, and `latest` moved to it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from slmops.rag.embedding import clear_checkpoints
from slmops.rag.hybrid import BM25_DIR, build_bm25
from slmops.rag.index_files import DOCS, EMBEDDINGS, EVAL_REPORT, NODES
from slmops.rag.ingest_config import IngestConfig, StoreRef, as_store
from slmops.rag.plan import (
    DocRecord,
    IngestPlan,
    IngestReport,
    index_artifact,
    read_jsonl,
    write_jsonl,
)
from slmops.store.hashing import sha256_bytes
from slmops.store.manifest import InputRef, Manifest, Trigger
from slmops.store.versions import LATEST


def assemble(store: StoreRef, plan: IngestPlan, workdir: Path) -> Path:
    """Write the new version's files into `workdir/index/`; returns that folder."""
    store = as_store(store)
    out = workdir / "index"
    out.mkdir(parents=True, exist_ok=True)
    new_chunks = read_jsonl(workdir / "new_chunks.jsonl")
    new_vectors = np.load(workdir / "new_embeddings.npy")
    records = {
        d["path"]: DocRecord.model_validate(d) for d in read_jsonl(workdir / "new_docs.jsonl")
    }

    nodes: list[dict[str, Any]] = []
    parts: list[np.ndarray] = []
    carried = set(plan.unchanged) | {k.path for k in plan.kept}
    if carried:
        assert plan.previous_version is not None
        art = index_artifact(store, plan.index)
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
    write_jsonl(out / NODES, nodes)
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
    art = index_artifact(store, plan.index)
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
