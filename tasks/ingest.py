"""Ingestion steps as Prefect tasks: retries, a progress artifact while embedding, the report."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from slmops import ingest
from slmops.ingest import EmbedStats, IngestConfig, IngestPlan, IngestReport
from slmops.manifest import Manifest, Trigger
from slmops.store import open_store
from slmops.versions import INDEXES, VersionedArtifact
from tasks.context import RETRIES


@task(name="plan-and-split", **RETRIES)  # type: ignore[arg-type]
def prepare_docs(
    source: str,
    store_uri: str,
    index: str,
    config: IngestConfig,
    workdir: Path,
    source_endpoint: str | None,
) -> IngestPlan:
    """Compare the source with `latest`; parse and split only new and changed documents."""
    return ingest.prepare(
        source, open_store(store_uri), index, config, workdir, source_endpoint=source_endpoint
    )


@task(name="embed-chunks", **RETRIES)  # type: ignore[arg-type]
def embed_chunks(
    store_uri: str, index: str, config: IngestConfig, workdir: Path, total: int
) -> EmbedStats:
    """Embed new chunks with checkpoints; a retried or re-run task resumes from them."""
    artifact_id = create_progress_artifact(
        progress=0.0,
        key=f"embedding-{index}",
        description=f"Embedding {total} chunks of index {index}",
    )

    def progress(done: int, of: int) -> None:
        update_progress_artifact(artifact_id, progress=100.0 * done / max(of, 1))

    return ingest.embed(open_store(store_uri), index, config, workdir, on_progress=progress)


@task(name="assemble-index", **RETRIES)  # type: ignore[arg-type]
def assemble_index(store_uri: str, plan: IngestPlan, workdir: Path) -> Path:
    return ingest.assemble(open_store(store_uri), plan, workdir)


@task(name="evaluate-retrieval")
def evaluate_retrieval(
    index_dir: Path, index: str, config: IngestConfig, questions: str | None, k: int
) -> dict[str, float]:
    """Hit rate@k and MRR of the candidate version, before it is published."""
    return ingest.evaluate_candidate(index_dir, index, config, questions=questions, k=k)


@task(name="publish-index", retries=0)
def publish_index(
    store_uri: str,
    report: IngestReport,
    index_dir: Path,
    config: IngestConfig,
    model_id: str,
    trigger: Trigger,
) -> Manifest:
    """Upload the version, then flip `latest` from the previous version to it.

    Not retried: a lost race on `latest` must be looked at, not overwritten."""
    return ingest.publish(
        open_store(store_uri), report, index_dir, config, model_id=model_id, trigger=trigger
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
