"""ingest-docs: documentation -> changed documents only -> chunks -> embeddings -> new index
version in the store -> alias `latest`.

Run it:  python -m flows.ingest_docs examples/support-bot/docs
    or:  prefect deployment run 'ingest-docs/hourly'
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from slmops.config import get_settings
from slmops.pipelines.ingest import run_ingest
from slmops.rag.ingest_config import IngestConfig
from slmops.rag.plan import IngestPlan, IngestReport
from tasks.ingest import TASK_STAGES, embed_on_cluster, report_ingest
from tasks.trigger import current_trigger


class IngestDocsParams(BaseModel):
    source: str = Field(
        description="Documentation to index: a folder, or s3://bucket/prefix (any bucket)."
    )
    index: str = Field("docs", description="Index name; versions live under indexes/INDEX/.")
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
    cluster: str | None = Field(
        None,
        description="Dask scheduler (tcp://host:8786) to embed the new chunks on, in shards of "
        "config.checkpoint_every chunks. Empty: embed in the flow's own process.",
    )


@flow(name="ingest-docs")
def ingest_docs(params: IngestDocsParams) -> IngestReport:
    """Bring an index up to date with its documentation, as a new version (or none if nothing
    changed). The previous version stays intact; `latest` moves only once the new one is
    complete and evaluated.

    Args:
        params: Which documentation, into which index and store, chunked and evaluated how.
    """
    logger = get_run_logger()
    settings = get_settings()
    store_uri = params.store or settings.store

    def log_plan(plan: IngestPlan) -> None:
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

    workdir = Path(tempfile.mkdtemp(prefix=f"slmops-ingest-{params.index}-"))
    try:
        report = run_ingest(
            params.source,
            store_uri,
            params.index,
            params.config,
            workdir=workdir,
            questions=params.questions,
            k=params.k,
            trigger=current_trigger(),
            on_plan=log_plan,
            source_endpoint=params.source_endpoint_url or settings.s3_endpoint_url,
            stages=(
                replace(TASK_STAGES, embed=embed_on_cluster(params.cluster))
                if params.cluster
                else TASK_STAGES
            ),
        )
        logger.info(report_ingest(store_uri=store_uri, report=report))
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    ingest_docs(
        IngestDocsParams(source=sys.argv[1] if len(sys.argv) > 1 else "examples/support-bot/docs")
    )
