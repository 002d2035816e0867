"""Eval-gate steps as Prefect tasks: run the gate (with progress), then tell the world: a
markdown artifact with the verdict and the chart, and an event `slmops.gate.passed|failed`."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
)
from prefect.cache_policies import NONE

from slmops.config import get_settings
from slmops.evaluation.report import markdown
from slmops.evaluation.verdicts import GateRecord
from slmops.markdown import png_uri
from slmops.pipelines import training_steps
from slmops.pipelines.gate import evaluate_adapter
from slmops.serving.answering import answering_backend
from slmops.store import open_store
from slmops.store.manifest import Trigger
from slmops.store.versions import EVALS, VersionedArtifact
from tasks.retries import RETRIES
from tasks.signals import ProgressBar, announce_adapter

PASSED, FAILED = "slmops.gate.passed", "slmops.gate.failed"


@task(name="run-gate", task_run_name="gate {adapter}@{version}", cache_policy=NONE, **RETRIES)
def run_gate(
    store_uri: str,
    adapter: str,
    version: str,
    champion: str,
    suites: str,
    policy: str,
    trigger: Trigger,
    generator: str = "auto",
    serving: str | None = None,
) -> GateRecord:
    """Answer every eval case with candidate and champion, judge, store the verdict."""
    logger = get_run_logger()
    bar = ProgressBar(f"gate-progress-{adapter}", f"Eval gate of {adapter}")
    stages = {"candidate": (0.0, 50.0), "champion": (50.0, 45.0)}

    def on_progress(stage: str, done: int, of: int) -> None:
        start, span = stages.get(stage, (95.0, 5.0))
        bar.update(start + span * done / max(of, 1))

    store = open_store(store_uri)
    with answering_backend(store, generator, serving, say=logger.info) as backend:
        record = evaluate_adapter(
            store,
            adapter,
            version,
            champion=champion,
            suites=suites,
            policy=policy,
            cache_dir=Path(get_settings().cache_dir).expanduser(),
            trigger=trigger,
            on_progress=on_progress,
            backend=backend,
            say=logger.info,
        )
    bar.update(100.0)
    return record


@task(name="has-verdict", **RETRIES)
def has_verdict(
    store_uri: str, adapter: str, version: str, suites: str | None = None, policy: str | None = None
) -> bool:
    """Has `adapter@version` been judged against the current champion already, under these
    suites and policy?"""
    return training_steps.has_verdict(store_uri, adapter, version, suites, policy)


@task(name="report-gate")
def report_gate(store_uri: str, record: GateRecord) -> str:
    """The verdict on the run's page (table, reasons, chart inline) and as an event."""
    verdict = record.verdict
    evals = VersionedArtifact(open_store(store_uri), EVALS, verdict.adapter)
    png = evals.read_file(record.run, "comparison.png")
    chart = png_uri(png)
    body = markdown(verdict, chart) + f"\n\nStored at `{record.report_uri}`."
    create_markdown_artifact(
        body,
        key=f"gate-{verdict.adapter}",
        description=f"Gate {verdict.status}: {verdict.adapter}@{verdict.version}",
    )
    announce_adapter(
        PASSED if verdict.passed else FAILED,
        verdict.adapter,
        {
            "adapter": verdict.adapter,
            "version": verdict.version,
            "champion": verdict.champion,
            "eval_run": record.run,
            "reasons": verdict.reasons,
        },
    )
    return f"gate {verdict.status} for {verdict.adapter}@{verdict.version}" + (
        "" if verdict.passed else ": " + "; ".join(verdict.reasons)
    )
