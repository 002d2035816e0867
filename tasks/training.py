"""Fine-tuning steps as Prefect tasks: base model, dataset version, the training claim,
training with checkpoints in the store, a format check, publishing, the run's report."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE

from slmops import adapters, datasets, models
from slmops.claims import Claim, ClaimRecord
from slmops.config import get_settings
from slmops.datasets import DatasetConfig
from slmops.evaluation.suites import load_suites
from slmops.generation import json_format_scores
from slmops.manifest import Manifest, Trigger
from slmops.memory_plan import plan_markdown
from slmops.models import Revision
from slmops.progress import Tenths
from slmops.store import open_store
from slmops.training import TrainConfig, TrainResult, train_adapter
from slmops.versions import ADAPTERS, VersionedArtifact
from tasks.context import RETRIES
from tasks.report import adapter_report

# Progress updates each add an event to the server's feed: about 20 per run is plenty.
PROGRESS_UPDATES = 20


@task(name="base-model", task_run_name="base model {model}", **RETRIES)
def base_model(model: str, source: str, revision: str | None) -> tuple[Revision, str]:
    """The base model at `revision` (default: the source's current one) as a local folder;
    a revision a newer release superseded is refused (its own event trains the new one)."""
    cache = Path(get_settings().cache_dir).expanduser()
    rev, path = models.checkout(model, source, revision, cache, superseded_ok=False)
    return rev, str(path)


@task(name="dataset-version", task_run_name="dataset {name}", **RETRIES)
def dataset_version(
    store_uri: str, name: str, path: str, config: DatasetConfig, base_path: str, trigger: Trigger
) -> Manifest:
    """Validate the training data (every bad row by line) and store it as a version."""
    return datasets.publish_dataset(
        open_store(store_uri),
        name,
        path,
        config,
        datasets.chat_token_counter(base_path),
        trigger=trigger,
    )


@task(name="find-trained", **RETRIES)
def find_trained(store_uri: str, adapter: str, key: str) -> Manifest | None:
    """The adapter version already trained for this training key, if any."""
    return adapters.find_trained(open_store(store_uri), adapter, key)


@task(name="warm-start", **RETRIES)
def warm_start_from(
    store_uri: str,
    adapter: str,
    model: str,
    revision: str,
    config: TrainConfig,
    weights: str | None = None,
) -> str | None:
    """The champion version this run starts from, if the recipe warm-starts and one fits."""
    store = open_store(store_uri)
    champion, why = adapters.warm_start_from(store, adapter, model, revision, config, weights)
    get_run_logger().info("training %s: %s", adapter, why)
    return champion.version if champion else None


# Holds a live claim (a store client, a lease): never cached or persisted.
@task(name="claim-training", cache_policy=NONE, persist_result=False, **RETRIES)
def claim_training(store_uri: str, adapter: str, key: str) -> tuple[Claim | None, Manifest | None]:
    """Claim the training key (one run trains it), or wait for the run that holds it."""
    logger = get_run_logger()

    def waiting(holder: ClaimRecord) -> None:
        logger.info(
            "training key %s is being trained by %s (claim valid until %s); waiting for it",
            key,
            holder.holder,
            f"{holder.expires_at:%H:%M:%S} UTC",
        )

    claim, found = adapters.claim_training(open_store(store_uri), adapter, key, on_wait=waiting)
    if claim is not None and claim.taken_over is not None:
        logger.warning(
            "took over the claim of %s, which stopped renewing it (a crashed run); "
            "resuming from its newest checkpoint",
            claim.taken_over.holder,
        )
    return claim, found


@task(name="train-adapter", cache_policy=NONE, **RETRIES)
def train(
    store_uri: str,
    adapter: str,
    key: str,
    base_path: str,
    served_model: str,
    dataset: str,
    version: str,
    config: TrainConfig,
    workdir: Path,
    warm_start: str | None = None,
) -> tuple[TrainResult, Path]:
    """Train, copying each checkpoint to the store; a re-run resumes from the newest one.
    With `warm_start` (a version of this adapter), start from its weights and train
    `config.warm_start_steps` steps.

    Returns the result and the adapter folder (peft files + training/)."""
    store = open_store(store_uri)
    init_from = None
    if warm_start is not None and config.warm_start_steps:
        init_from = workdir / "warm-start"
        shutil.rmtree(init_from, ignore_errors=True)
        VersionedArtifact(store, ADAPTERS, adapter).download(warm_start, init_from)
        config = config.model_copy(update={"max_steps": config.warm_start_steps})
    train_rows = datasets.read_rows(store, dataset, version, datasets.TRAIN)
    eval_rows = datasets.read_rows(store, dataset, version, datasets.EVAL)
    resume = adapters.latest_checkpoint(store, adapter, key, workdir / "resume")
    progress = create_progress_artifact(
        progress=0.0,
        key=f"training-progress-{adapter}",
        description=f"Training {adapter}: {config.max_steps} steps",
    )
    assert isinstance(progress, UUID)  # sync call in a sync task
    every = max(1, config.max_steps // PROGRESS_UPDATES)
    logger, started, tenths = get_run_logger(), time.monotonic(), Tenths()

    def on_log(step: int, logs: dict[str, float]) -> None:
        if step % every == 0 or step == config.max_steps:
            update_progress_artifact(progress, progress=100.0 * step / config.max_steps)
        if tenths.crossed(step, config.max_steps):  # the run's log says how far it is
            elapsed = time.monotonic() - started
            left = elapsed / step * (config.max_steps - step)
            loss = f", loss {logs['loss']:.3f}" if "loss" in logs else ""
            logger.info(
                f"training {adapter}: step {step}/{config.max_steps}{loss}, "
                f"{elapsed:.0f}s so far, about {left:.0f}s left"
            )

    shutil.rmtree(workdir / "out", ignore_errors=True)
    result = train_adapter(
        Path(base_path),
        train_rows,
        eval_rows,
        workdir / "out",
        config,
        served_model=served_model,
        resume_from=resume,
        init_from=init_from,
        on_checkpoint=lambda folder, _: adapters.save_checkpoint(store, adapter, key, folder),
        on_log=on_log,
        on_plan=lambda plan: logger.info(
            "memory plan for %s:\n%s", adapter, "\n".join(plan_markdown(plan, table=False))
        ),
    )
    where = (
        f"{result.threads} CPU threads ({result.threads_source})"
        if result.threads
        else result.device
    )
    logger.info(
        f"trained {adapter}: {result.steps} steps in {result.train_seconds:.0f}s "
        f"({result.train_seconds / max(result.steps, 1):.2f}s a step, "
        f"{result.tokens_per_second:.0f} tokens/s) on {where}"
    )
    return result, workdir / "out" / "adapter"


@task(name="format-check")
def format_check(
    store_uri: str,
    base_path: str,
    adapter_dir: Path,
    dataset: str,
    version: str,
    suites: str,
    prompts: int = 50,
) -> dict[str, float]:
    """Share of valid JSON answers on held-out prompts: base model alone vs with the adapter.

    The keys an answer must hold are the `required` ones of the eval suites' answer schema."""
    keys = tuple(load_suites(suites).schema_doc.get("required", ()))
    rows = datasets.read_rows(open_store(store_uri), dataset, version, datasets.EVAL)
    held_out = [r[:-1] for r in rows][:prompts]
    return json_format_scores(Path(base_path), adapter_dir, held_out, keys)


@task(name="publish-adapter", cache_policy=NONE, persist_result=False)
def publish(
    store_uri: str,
    adapter: str,
    adapter_dir: Path,
    result: TrainResult,
    key: str,
    rev: Revision,
    dataset: Manifest,
    config: TrainConfig,
    metrics: dict[str, float],
    trigger: Trigger,
    claim: Claim | None,
    warm_start: str | None = None,
) -> Manifest:
    """Store the adapter version with its lineage and move `latest` to it.

    Not retried: a version half-written by a failed attempt must not be written again."""
    dataset_sha = next((i.sha256 for i in dataset.inputs if i.kind == "file"), None)
    return adapters.publish_adapter(
        open_store(store_uri),
        adapter,
        adapter_dir,
        result,
        key=key,
        base_model=rev.model,
        base_revision=rev.revision,
        base_source=rev.source,
        base_weights=rev.weights,
        dataset=dataset.name,
        dataset_version=dataset.version or "",
        dataset_sha=dataset_sha or "",
        config=config,
        metrics=metrics,
        trigger=trigger,
        claim=claim,
        warm_start=warm_start,
    )


@task(name="report-training")
def report_training(store_uri: str, manifest: Manifest, reused: bool) -> str:
    """The run's report in the Prefect UI: lineage, metrics, the loss curve as a chart."""
    markdown, summary = adapter_report(open_store(store_uri), manifest, reused)
    create_markdown_artifact(markdown, key=f"training-report-{manifest.name}")
    return summary
