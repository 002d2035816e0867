"""Assessment steps as Prefect tasks: answer with every arm (with a progress artifact and a
log line every 10% of each arm), store the report, show it on the run's page."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
)
from prefect.cache_policies import NONE

from slmops.assess.report import markdown
from slmops.assess.task import ARMS, CHART, load_task
from slmops.config import get_settings
from slmops.evaluation.progress import Heartbeat
from slmops.markdown import png_uri
from slmops.pipelines.assess import AssessRun, run_assessment, store_assessment
from slmops.progress import Tenths
from slmops.serving.answering import answering_backend
from slmops.store import open_store
from slmops.store.manifest import Trigger
from slmops.store.versions import EVALS, VersionedArtifact
from tasks.retries import RETRIES
from tasks.signals import ProgressBar


@task(name="answer-every-arm", cache_policy=NONE, **RETRIES)
def answer_every_arm(
    store_uri: str,
    task_file: str,
    max_cases: int | None = None,
    generator: str = "auto",
    serving: str | None = None,
) -> AssessRun:
    """Every arm answers every case (or the first `max_cases` of each suite); scored,
    compared, priced and decided."""
    logger = get_run_logger()
    assessment = load_task(task_file)
    if max_cases:
        assessment = assessment.model_copy(update={"max_cases_per_suite": max_cases})
    bar = ProgressBar(
        f"assess-progress-{assessment.name}", f"Assessment {assessment.name}: {len(ARMS)} arms"
    )
    tenths = Tenths(every_s=30)

    def on_progress(arm: str, done: int, of: int) -> None:
        part = ARMS.index(arm) + done / max(of, 1)
        bar.update(100.0 * part / len(ARMS))
        if tenths.crossed(done, of, arm):
            logger.info(f"arm {arm}: {done}/{of} cases answered")

    store = open_store(store_uri)
    with (
        answering_backend(store, generator, serving, say=logger.info) as backend,
        Heartbeat(logger.info, f"assess {assessment.name}", inner=on_progress) as beat,
    ):
        run = run_assessment(
            store,
            assessment,
            Path(get_settings().cache_dir).expanduser(),
            on_progress=beat,
            backend=backend,
        )
    bar.update(100.0)
    return run


@task(name="store-assessment", cache_policy=NONE)
def store_report(store_uri: str, run: AssessRun, trigger: Trigger) -> str:
    """Publish the report under evals/assess-NAME/ and show it on the run's page."""
    store = open_store(store_uri)
    with tempfile.TemporaryDirectory(prefix="slmops-assess-") as work:
        version = store_assessment(store, run, Path(work), trigger)
    result = run.assessment
    art = VersionedArtifact(store, EVALS, f"assess-{result.task}")
    chart = png_uri(art.read_file(version, CHART))
    uri = f"{store.uri}/{art.version_prefix(version)}/report.md"
    create_markdown_artifact(
        markdown(result, chart) + f"\n\nStored at `{uri}`.",
        key=f"assess-{result.task}",
        description=f"Assessment {result.task}: {result.recommendation}",
    )
    return f"assessment {result.task}: {result.recommendation}. {result.summary} Report: {uri}"
