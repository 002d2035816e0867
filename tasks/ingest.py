"""Ingestion steps as Prefect tasks: retries, a progress artifact while embedding, the report."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NONE

from slmops.pipelines.ingest import IngestStages
from slmops.progress import Tenths
from slmops.rag import embedding, plan
from slmops.rag import publish as publishing
from slmops.rag.embedding import EmbedShard, ShardRunner
from slmops.rag.ingest_config import IngestConfig
from slmops.rag.plan import EmbedStats, IngestReport
from slmops.rag.report import ingest_report
from slmops.store import open_store
from slmops.store.versions import INDEXES, VersionedArtifact
from tasks.retries import RETRIES
from tasks.signals import ProgressBar

prepare_docs = task(name="plan-and-split", **RETRIES)(plan.prepare)
assemble_index = task(name="assemble-index", **RETRIES)(publishing.assemble)
evaluate_retrieval = task(name="evaluate-retrieval")(publishing.evaluate_candidate)
# Not retried: a version half-written by a failed attempt must not be written again, and a
# lost race on `latest` must be looked at, not overwritten.
publish_index = task(name="publish-index", cache_policy=NONE)(publishing.publish)


def _progress(name: str) -> Callable[[int, int], None]:
    bar = ProgressBar(f"embedding-{name}", f"Embedding the new chunks of index {name}")
    tenths, logger = Tenths(every_s=30), get_run_logger()

    def progress(done: int, of: int) -> None:
        bar.update(100.0 * done / max(of, 1))
        if tenths.crossed(done, of):  # and the run's log, every 10%
            logger.info(f"embedding {name}: {done:,}/{of:,} chunks ({done / max(of, 1):.0%})")

    return progress


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
    return embedding.embed(store, name, config, workdir, on_progress=_progress(name))


# One shard on a cluster's worker. Retried there for what may pass again (a store hiccup); a
# worker that dies is the coordinator's to handle (it runs the shard again elsewhere).
embed_shard = task(
    name="embed-shard",
    task_run_name="embed-shard-{shard.number}",
    cache_policy=NONE,
    **RETRIES,
)(embedding.embed_shard)


def on_dask(address: str) -> ShardRunner:
    """Run shards as `embed-shard` task runs on the Dask cluster at `address` (its scheduler,
    tcp://host:8786), through Prefect's Dask task runner: each shows in the flow run's graph.
    The workers need this project installed and the store's settings in their environment."""

    def run(shards: list[EmbedShard]) -> Iterator[tuple[EmbedShard, BaseException | None]]:
        from prefect.futures import as_completed
        from prefect_dask import DaskTaskRunner

        with DaskTaskRunner(address=address) as runner:
            futures = [runner.submit(embed_shard, {"shard": shard}) for shard in shards]
            by_run = {f.task_run_id: shard for f, shard in zip(futures, shards, strict=True)}
            for future in as_completed(futures):
                shard = by_run[future.task_run_id]
                try:
                    future.result(raise_on_failure=True)
                except Exception as exc:  # a task that failed, or a worker that died (KilledWorker)
                    yield shard, exc
                else:
                    yield shard, None

    return run


def embed_on_cluster(address: str) -> Callable[..., EmbedStats]:
    """The embed stage, fanned out in shards on a Dask cluster (`IngestStages.embed`). Called
    in the flow's own process; the shards are its task runs."""

    def embed(
        store: str, name: str, config: IngestConfig, workdir: Path, on_progress: object = None
    ) -> EmbedStats:
        logger = get_run_logger()
        logger.info(f"embedding index {name}'s new chunks in shards on the Dask cluster {address}")
        return embedding.embed_fanned_out(
            store,
            name,
            config,
            workdir,
            run_shards=on_dask(address),
            on_progress=_progress(name),
            log=logger.warning,
        )

    return embed


# The ingest pipeline (slmops.pipelines.ingest.run_ingest) with each stage as a Prefect task.
TASK_STAGES = IngestStages(
    prepare=prepare_docs,
    embed=embed_chunks,
    assemble=assemble_index,
    evaluate=evaluate_retrieval,
    publish=publish_index,
)


@task(name="report-ingest")
def report_ingest(store_uri: str, report: IngestReport) -> str:
    """The run's report in the Prefect UI (slmops.rag.report): what changed, what was skipped
    and why, timings, and retrieval quality against the previous version."""
    plan = report.plan
    previous = None
    if report.version and plan.previous_version:
        art = VersionedArtifact(open_store(store_uri), INDEXES, plan.index)
        previous = art.manifest(plan.previous_version)
    rows, markdown = ingest_report(report, previous)
    if rows:
        create_table_artifact(
            rows, key=f"ingest-{plan.index}-documents", description=report.summary()
        )
    create_markdown_artifact(markdown, key=f"ingest-{plan.index}")
    return report.summary()
