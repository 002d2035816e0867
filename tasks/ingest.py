"""Ingestion steps as Prefect tasks: retries, a progress artifact while embedding, the report."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NONE

from slmops.progress import Tenths
from slmops.rag import ingest
from slmops.rag.ingest import EmbedStats, IngestConfig, IngestReport, IngestStages
from slmops.store import open_store
from slmops.store.versions import INDEXES, VersionedArtifact
from tasks.retries import RETRIES
from tasks.signals import ProgressBar

prepare_docs = task(name="plan-and-split", **RETRIES)(ingest.prepare)
assemble_index = task(name="assemble-index", **RETRIES)(ingest.assemble)
evaluate_retrieval = task(name="evaluate-retrieval")(ingest.evaluate_candidate)
# Not retried: a version half-written by a failed attempt must not be written again, and a
# lost race on `latest` must be looked at, not overwritten.
publish_index = task(name="publish-index", cache_policy=NONE)(ingest.publish)


@task(name="embed-chunks", cache_policy=NONE, **RETRIES)
def embed_chunks(
    store: str,
    name: str,
    config: IngestConfig,
    workdir: Path,
    on_progress: object = None,
) -> EmbedStats:
    """Embed new chunks with checkpoints; a retried or re-run task resumes from them.

    Progress shows as a Prefect progress artifact (`on_progress` is not used here)."""
    bar = ProgressBar(f"embedding-{name}", f"Embedding the new chunks of index {name}")
    tenths, logger = Tenths(), get_run_logger()

    def progress(done: int, of: int) -> None:
        bar.update(100.0 * done / max(of, 1))
        if tenths.crossed(done, of):  # and the run's log, every 10%
            logger.info(f"embedding {name}: {done:,}/{of:,} chunks ({done / max(of, 1):.0%})")

    return ingest.embed(store, name, config, workdir, on_progress=progress)


# The ingest pipeline (slmops.rag.ingest.run_ingest) with each stage as a Prefect task.
TASK_STAGES = IngestStages(
    prepare=prepare_docs,
    embed=embed_chunks,
    assemble=assemble_index,
    evaluate=evaluate_retrieval,
    publish=publish_index,
)


@task(name="report-ingest")
def report_ingest(store_uri: str, report: IngestReport) -> str:
    """The run's report in the Prefect UI: what changed, what was skipped and why, timings,
    and retrieval quality against the previous version."""
    plan = report.plan
    rows = [
        {"document": p, "change": kind, "detail": ""}
        for kind, paths in (
            ("added", plan.added),
            ("changed", plan.changed),
            ("deleted", plan.deleted),
        )
        for p in paths
    ]
    rows += [
        {"document": s.path, "change": "skipped", "detail": s.reason}
        for s in plan.skipped + plan.kept
    ]
    if rows:
        create_table_artifact(
            rows, key=f"ingest-{plan.index}-documents", description=report.summary()
        )

    previous: dict[str, float] = {}
    if report.version and plan.previous_version:
        art = VersionedArtifact(open_store(store_uri), INDEXES, plan.index)
        previous = {
            k.removeprefix("retrieval."): v
            for k, v in art.manifest(plan.previous_version).metrics.items()
            if k.startswith("retrieval.")
        }
    lines = [
        f"## Ingest of `{plan.source}` into index `{plan.index}`",
        "",
        report.summary(),
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {stage} | {seconds:.2f} |" for stage, seconds in report.timings.items()]
    if report.retrieval:
        lines += [
            "",
            f"| retrieval metric | {report.version} | {plan.previous_version or '-'} | change |",
            "|---|---|---|---|",
        ]
        for key, value in report.retrieval.items():
            old = previous.get(key)
            delta = f"{value - old:+.4f}" if isinstance(old, int | float) else "-"
            lines.append(f"| {key} | {value:g} | {old if old is not None else '-'} | {delta} |")
    create_markdown_artifact("\n".join(lines), key=f"ingest-{plan.index}")
    return report.summary()
