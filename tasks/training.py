"""The refine-tune pipeline's training steps (slmops.pipelines.training_steps) as Prefect
tasks: retries, task names in the UI, a progress bar while training, the run's report as a
markdown artifact."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
)
from prefect.cache_policies import NONE
from prefect.concurrency.sync import concurrency

from slmops.pipelines import training_steps
from slmops.store import open_store
from slmops.store.claims import Claim
from slmops.store.manifest import Manifest
from slmops.training.report import adapter_report
from slmops.training.trainer import TrainConfig, TrainResult
from tasks.retries import RETRIES
from tasks.signals import ProgressBar

# A held GPU slot's lease: renewed while training runs; a run that dies frees it this long after.
GPU_SLOT_LEASE_S = 120.0

# Stages that need nothing of Prefect but retries and a name: the core functions, as tasks.
base_model = task(name="base-model", task_run_name="base model {model}", **RETRIES)(
    training_steps.checkout_base
)
dataset_version = task(name="dataset-version", task_run_name="dataset {name}", **RETRIES)(
    training_steps.dataset_version
)
find_trained = task(name="find-trained", **RETRIES)(training_steps.find_trained)
format_check = task(name="format-check")(training_steps.format_check)
# Not retried: a version half-written by a failed attempt must not be written again. Holds
# a live claim among its inputs: never cached or persisted.
publish = task(name="publish-adapter", cache_policy=NONE, persist_result=False)(
    training_steps.publish
)


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
    return training_steps.warm_start_from(
        store_uri, adapter, model, revision, config, weights, log=get_run_logger()
    )


# Holds a live claim (a store client, a lease): never cached or persisted.
@task(name="claim-training", cache_policy=NONE, persist_result=False, **RETRIES)
def claim_training(store_uri: str, adapter: str, key: str) -> tuple[Claim | None, Manifest | None]:
    """Claim the training key (one run trains it), or wait for the run that holds it."""
    return training_steps.claim_training(store_uri, adapter, key, log=get_run_logger())


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
    """Train with checkpoints in the store (see slmops.pipelines.training_steps.train), with a
    progress bar on the run's page."""
    steps = config.warm_start_steps if warm_start and config.warm_start_steps else config.max_steps
    bar = ProgressBar(f"training-progress-{adapter}", f"Training {adapter}: {steps} steps")

    def on_step(step: int, of: int) -> None:
        bar.update(100.0 * step / of)

    with gpu_slot(config.gpu_slot):
        return training_steps.train(
            store_uri,
            adapter,
            key,
            base_path,
            served_model,
            dataset,
            version,
            config,
            workdir,
            warm_start,
            log=get_run_logger(),
            on_step=on_step,
        )


@contextmanager
def gpu_slot(name: str | None) -> Iterator[None]:
    """Hold a slot of the global concurrency limit `name` (a class of GPUs) while the block
    runs: waits while every slot is taken; the slot's lease (renewed while held) expires on
    the server if the process dies, so a crashed run does not keep its GPUs. Strict: a limit
    that does not exist fails instead of training unguarded."""
    if not name:
        yield
        return
    log = get_run_logger()
    log.info(f"waiting for a slot of {name!r} (global concurrency limit) to train")
    tick = time.monotonic()
    with concurrency(name, occupy=1, strict=True, lease_duration=GPU_SLOT_LEASE_S):
        log.info(f"holding a slot of {name!r} (waited {time.monotonic() - tick:.0f}s)")
        yield
    log.info(f"released the slot of {name!r}")


@task(name="report-training")
def report_training(store_uri: str, manifest: Manifest, reused: bool) -> str:
    """The run's report in the Prefect UI: lineage, metrics, the loss curve as a chart."""
    markdown, summary = adapter_report(open_store(store_uri), manifest, reused)
    create_markdown_artifact(markdown, key=f"training-report-{manifest.name}")
    return summary
