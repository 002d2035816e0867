"""Incremental documentation ingestion into versioned RAG indices: the pipeline.

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

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slmops.rag.embedding import embed
from slmops.rag.ingest_config import IngestConfig, Progress, StageCallback, StoreRef
from slmops.rag.plan import EmbedStats, IngestPlan, IngestReport, prepare
from slmops.rag.publish import assemble, evaluate_candidate, publish
from slmops.store.manifest import Manifest, Trigger


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
