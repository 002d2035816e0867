"""The refine-tune pipeline's training steps, each taking what a Prefect task passes (the
store URI, names, paths) and opening the store once at its entry: the base checked out, the
dataset validated and stored, the training key claimed, the adapter trained, checked, stored
with its lineage, and whether the champion has judged it yet."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmops.store.manifest import Manifest, Trigger
from slmops.training.datasets import DatasetConfig
from slmops.training.recipe import TrainConfig
from slmops.training.trainer import TrainResult

LOG = logging.getLogger("slmops.training.refine_tune")
Log = logging.Logger | logging.LoggerAdapter


def checkout_base(model: str, source: str, revision: str | None) -> tuple[Any, str]:
    """The base model at `revision` (default: the source's current one) as a local folder;
    a revision a newer release superseded is refused (its own event trains the new one).
    Returns the `slmops.base_models.Revision` and the folder."""
    from slmops import base_models as models
    from slmops.config import get_settings

    cache = Path(get_settings().cache_dir).expanduser()
    rev, path = models.checkout(model, source, revision, cache, superseded_ok=False)
    return rev, str(path)


def dataset_version(
    store_uri: str, name: str, path: str, config: DatasetConfig, base_path: str, trigger: Trigger
) -> Manifest:
    """Validate the training data (every bad row by line) and store it as a version."""
    from slmops.store import open_store
    from slmops.training import datasets

    return datasets.publish_dataset(
        open_store(store_uri),
        name,
        path,
        config,
        datasets.chat_token_counter(base_path),
        trigger=trigger,
    )


def find_trained(store_uri: str, adapter: str, key: str) -> Manifest | None:
    """The adapter version already trained for this training key, if any."""
    from slmops.store import open_store
    from slmops.training import adapters

    return adapters.find_trained(open_store(store_uri), adapter, key)


def warm_start_from(
    store_uri: str,
    adapter: str,
    model: str,
    revision: str,
    config: TrainConfig,
    weights: str | None = None,
    *,
    log: Log = LOG,
) -> str | None:
    """The champion version this run starts from, if the recipe warm-starts and one fits."""
    from slmops.store import open_store
    from slmops.training import adapters

    store = open_store(store_uri)
    champion, why = adapters.warm_start_from(store, adapter, model, revision, config, weights)
    log.info("training %s: %s", adapter, why)
    return champion.version if champion else None


def claim_training(
    store_uri: str, adapter: str, key: str, *, log: Log = LOG
) -> tuple[Any, Manifest | None]:
    """Claim the training key (one run trains it), or wait for the run that holds it.
    Returns (the `slmops.store.claims.Claim` or None, the adapter another run trained or None)."""
    from slmops.store import open_store
    from slmops.store.claims import ClaimRecord
    from slmops.training import adapters

    def waiting(holder: ClaimRecord) -> None:
        log.info(
            "training key %s is being trained by %s (claim valid until %s); waiting for it",
            key,
            holder.holder,
            f"{holder.expires_at:%H:%M:%S} UTC",
        )

    claim, found = adapters.claim_training(open_store(store_uri), adapter, key, on_wait=waiting)
    if claim is not None and claim.taken_over is not None:
        log.warning(
            "took over the claim of %s, which stopped renewing it (a crashed run); "
            "resuming from its newest checkpoint",
            claim.taken_over.holder,
        )
    return claim, found


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
    *,
    log: Log = LOG,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[TrainResult, Path]:
    """Train, copying each checkpoint to the store; a re-run resumes from the newest one.
    With `warm_start` (a version of this adapter), start from its weights and train
    `config.warm_start_steps` steps. The log says how far it is every tenth of the steps;
    `on_step(step, of)` hears every logged step.

    Returns the result and the adapter folder (peft files + training/)."""
    from slmops.progress import Tenths
    from slmops.store import open_store
    from slmops.store.versions import ADAPTERS, VersionedArtifact
    from slmops.training import adapters, datasets
    from slmops.training.memory_plan import plan_markdown
    from slmops.training.trainer import train_adapter

    store = open_store(store_uri)
    init_from = None
    if warm_start is not None and config.warm_start_steps:
        init_from = workdir / "warm-start"
        shutil.rmtree(init_from, ignore_errors=True)
        VersionedArtifact(store, ADAPTERS, adapter).download(warm_start, init_from)
        config = config.warm_start_config()
    train_rows = datasets.read_rows(store, dataset, version, datasets.TRAIN)
    eval_rows = datasets.read_rows(store, dataset, version, datasets.EVAL)
    resume = adapters.latest_checkpoint(store, adapter, key, workdir / "resume")
    started, tenths = time.monotonic(), Tenths(every_s=30)

    def on_log(step: int, logs: dict[str, float]) -> None:
        if on_step:
            on_step(step, config.max_steps)
        if tenths.crossed(step, config.max_steps):
            elapsed = time.monotonic() - started
            left = elapsed / step * (config.max_steps - step)
            loss = f", loss {logs['loss']:.3f}" if "loss" in logs else ""
            log.info(
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
        on_plan=lambda plan: log.info(
            "memory plan for %s:\n%s", adapter, "\n".join(plan_markdown(plan, table=False))
        ),
    )
    where = (
        f"{result.threads} CPU threads ({result.threads_source})"
        if result.threads
        else result.device
    )
    log.info(
        f"trained {adapter}: {result.steps} steps in {result.train_seconds:.0f}s "
        f"({result.train_seconds / max(result.steps, 1):.2f}s a step, "
        f"{result.tokens_per_second:.0f} tokens/s, "
        f"{'padding-free' if result.padding_free else 'padded'} batches) on {where}"
    )
    return result, workdir / "out" / "adapter"


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
    from slmops.generation import json_format_scores
    from slmops.store import open_store
    from slmops.suites.spec import load_suites
    from slmops.training import datasets

    keys = tuple(load_suites(suites).schema_doc.get("required", ()))
    rows = datasets.read_rows(open_store(store_uri), dataset, version, datasets.EVAL)
    held_out = [r[:-1] for r in rows][:prompts]
    return json_format_scores(Path(base_path), adapter_dir, held_out, keys)


def publish(
    store_uri: str,
    adapter: str,
    adapter_dir: Path,
    result: TrainResult,
    key: str,
    rev: Any,
    dataset: Manifest,
    config: TrainConfig,
    metrics: dict[str, float],
    trigger: Trigger,
    claim: Any,
    warm_start: str | None = None,
) -> Manifest:
    """Store the adapter version with its lineage (base model revision `rev`, the dataset
    version, the warm-start parent) and move `latest` to it. Not to be retried: a version
    half-written by a failed attempt must not be written again."""
    from slmops.store import open_store
    from slmops.training import adapters

    dataset_sha = next((i.sha256 for i in dataset.inputs if i.kind == "file"), None)
    lineage = adapters.Lineage(
        key=key,
        base_model=rev.model,
        base_revision=rev.revision,
        base_source=rev.source,
        base_weights=rev.weights,
        dataset=dataset.name,
        dataset_version=dataset.version or "",
        dataset_sha=dataset_sha or "",
        config=config,
        warm_start=warm_start,
    )
    return adapters.publish_adapter(
        open_store(store_uri),
        adapter,
        adapter_dir,
        result,
        lineage,
        metrics=metrics,
        trigger=trigger,
        claim=claim,
    )


def report_training(store_uri: str, manifest: Manifest, reused: bool) -> str:
    """One line on the adapter version: trained or reused, steps, loss, base revision."""
    loss = manifest.metrics.get("final_loss")
    base = manifest.base_model()
    return (
        f"adapter {manifest.name} version {manifest.version}: "
        + ("already trained for these inputs" if reused else "trained")
        + f", {manifest.metrics.get('steps', '?')} steps"
        + (f", final loss {loss:.3f}" if isinstance(loss, int | float) else "")
        + (f", base {base.name} revision {(base.version or '')[:12]}" if base else "")
    )


def has_verdict(
    store_uri: str,
    adapter: str,
    version: str,
    suites: str | Path | None = None,
    policy: str | Path | None = None,
) -> bool:
    """Has `adapter@version` been judged against the current champion already, under these
    suites and policy (when given)? A verdict made under other cases or rules (a floor raised,
    a case added) does not count: the gate runs again (on stored answers: minutes less)."""
    from slmops.evaluation.verdicts import champion_label, find_verdict
    from slmops.store import open_store

    store = open_store(store_uri)
    verdict = find_verdict(store, adapter, version, champion_label(store, adapter, "auto"))
    if verdict is None or suites is None or policy is None:
        return verdict is not None
    return judged_under(verdict, suites, policy)


def judged_under(verdict: Any, suites: str | Path, policy: str | Path) -> bool:
    """Was `verdict` made under these suites and this policy (the same cases and rules)?"""
    from slmops.evaluation.gate import known_metrics, rules_digest
    from slmops.evaluation.policy import load_policy
    from slmops.suites.spec import load_suites

    loaded = load_suites(suites)
    return bool(
        verdict.rules_sha256 == rules_digest(loaded, load_policy(policy, known_metrics(loaded)))
    )
