"""ingest-docs: documentation -> changed documents only -> chunks -> embeddings -> new index
version in the store -> alias `latest`.

Run it:  python -m flows.ingest_docs examples/support-bot/docs
    or:  prefect deployment run 'ingest-docs/hourly'
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from slmops.config import get_settings
from slmops.embedder import get_embedder
from slmops.ingest import IngestConfig, IngestReport
from slmops.retrieval_eval import load_questions
from slmops.versions import check_name
from tasks.context import current_trigger
from tasks.ingest import (
    assemble_index,
    embed_chunks,
    evaluate_retrieval,
    prepare_docs,
    publish_index,
    report_ingest,
)


class IngestDocsParams(BaseModel):
    source: str = Field(
        description="Documentation to index: a folder, or s3://bucket/prefix (any bucket)."
    )
    index: str = Field("docs", description="Index name; versions live under indexes/<name>/.")
    store: str | None = Field(
        None,
        description="Artifact store URI (s3://bucket/prefix or a folder). Empty: SLMOPS_STORE.",
    )
    source_endpoint_url: str | None = Field(
        None, description="S3 endpoint of the source bucket, if it is not the store's."
    )
    questions: str | None = Field(
        None,
        description="Retrieval eval questions (JSONL: question, expected sources). "
        "Pairs generated from the docs are always evaluated too.",
    )
    k: int = Field(5, ge=1, le=50, description="Retrieval eval cut-off: hit rate@k and MRR@k.")
    config: IngestConfig = Field(
        default_factory=IngestConfig, description="Chunking, embedding model, limits."
    )


@flow(name="ingest-docs")
def ingest_docs(params: IngestDocsParams) -> IngestReport:
    """Bring an index up to date with its documentation, as a new version (or none if nothing
    changed). The previous version stays intact; `latest` moves only once the new one is
    complete and evaluated."""
    logger = get_run_logger()
    settings = get_settings()
    store_uri = params.store or settings.store
    check_name(params.index, "index name")
    if params.questions:
        load_questions(params.questions)  # bad input fails before any work
    endpoint = params.source_endpoint_url or settings.s3_endpoint_url
    workdir = Path(tempfile.mkdtemp(prefix=f"slmops-ingest-{params.index}-"))
    try:
        plan = prepare_docs(
            params.source, store_uri, params.index, params.config, workdir, endpoint
        )
        report = IngestReport(plan=plan, timings=dict(plan.timings))
        logger.info(
            "%d added, %d changed, %d deleted, %d unchanged, %d skipped; %d chunks to embed",
            len(plan.added),
            len(plan.changed),
            len(plan.deleted),
            len(plan.unchanged),
            len(plan.skipped) + len(plan.kept),
            plan.new_chunks,
        )
        for skipped in plan.skipped + plan.kept:
            logger.warning("skipped %s: %s", skipped.path, skipped.reason)
        if plan.has_changes:
            stats = embed_chunks(store_uri, params.index, params.config, workdir, plan.new_chunks)
            index_dir = assemble_index(store_uri, plan, workdir)
            report.record(stats, index_dir)
            report.retrieval = evaluate_retrieval(
                index_dir, params.index, params.config, params.questions, params.k
            )
            model_id = stats.model_id or get_embedder(params.config.embed_model).model_id
            publish_index(store_uri, report, index_dir, params.config, model_id, current_trigger())
        logger.info(report_ingest(store_uri, report))
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    ingest_docs(
        IngestDocsParams(source=sys.argv[1] if len(sys.argv) > 1 else "examples/support-bot/docs")
    )
