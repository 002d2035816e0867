"""Refine-tune, the pipeline: base model + revision + dataset -> validated dataset version ->
training key -> claim -> LoRA/QLoRA adapter -> format check -> adapter version with its
lineage -> eval gate against the champion -> promotion (when the policy says `auto_promote`
and a serving config is set).

    run_refine_tune(params)                       # in-process (`slmops refine-tune`)
    run_refine_tune(params, stages=TASK_STAGES)   # the refine-tune flow: each stage a task

The pipeline is written once, here; the flow (flows/refine_tune.py) passes the same stage
functions wrapped as Prefect tasks (retries, progress artifacts, the run's log) and the gate
and promotion as subflows, the way `slmops.pipelines.ingest.IngestStages` serves the ingest flow.

Idempotent: the same base weights, dataset and weight-changing config train once, even when
two runs start together (the one that claims the training key trains, holding the claim
while it works; the other waits and returns its adapter). An adapter found already trained is
gated if the current champion has not judged it yet.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from slmops.generation import GeneratorChoice
from slmops.pipelines.defaults import EXAMPLE_DATA, EXAMPLE_POLICY, EXAMPLE_SUITES
from slmops.pipelines.training_steps import (
    LOG,
    Log,
    checkout_base,
    claim_training,
    dataset_version,
    find_trained,
    format_check,
    has_verdict,
    publish,
    report_training,
    train,
    warm_start_from,
)
from slmops.store.base import ObjectStore
from slmops.store.manifest import Manifest, Trigger
from slmops.training.datasets import DatasetConfig
from slmops.training.trainer import TrainConfig, TrainResult

__all__ = ["RefineTuneParams", "RefineTuneStages", "run_refine_tune"]


class RefineTuneParams(BaseModel):
    """What to train: which base model and revision, on which data, into which adapter."""

    model: str = Field(
        description="Base model id as served (vLLM --served-model-name), e.g. tiny-llama. "
        "An adapter is trained for one base model only."
    )
    source: str = Field(
        description="Where the base model lives: hf://org/name, s3://bucket/prefix or a folder."
    )
    revision: str | None = Field(
        None,
        description="Base revision to train on (set from the release event). "
        "Empty: the source's current revision.",
    )
    adapter: str = Field(
        "support-bot", description="Adapter name in the store: adapters/ADAPTER/versions/..."
    )
    dataset: str = Field(
        EXAMPLE_DATA, description="Training data, JSONL: chat messages or prompt/completion rows."
    )
    dataset_name: str = Field(
        "support-bot", description="Dataset name in the store: datasets/NAME/versions/..."
    )
    config: TrainConfig = Field(
        default_factory=TrainConfig, description="LoRA/QLoRA hyperparameters."
    )
    dataset_config: DatasetConfig = Field(
        default_factory=DatasetConfig,
        description="Bad-row policy, eval split, max tokens per row.",
    )
    store: str | None = Field(
        None,
        description="Artifact store URI (s3://bucket/prefix or a folder). Empty: SLMOPS_STORE.",
    )
    event_id: str | None = Field(
        None, description="The release event that started this run (set by the trigger)."
    )
    gate: bool = Field(
        True,
        description="Run the eval gate on the new adapter against the champion (a passing "
        "adapter becomes the challenger; a failing one moves no alias).",
    )
    suites: str = Field(EXAMPLE_SUITES, description="Eval suites folder for the gate.")
    policy: str = Field(
        EXAMPLE_POLICY,
        description="Gate policy YAML; with `auto_promote: true` a passing adapter is promoted "
        "to the replicas at once.",
    )
    serving: str | None = Field(
        None,
        description="Serving config YAML for auto-promotion (the vLLM replicas). Empty: "
        "SLMOPS_SERVING; if neither is set, a passing adapter stays the challenger.",
    )
    generator: GeneratorChoice = Field(
        "auto",
        description="What answers the gate's cases: vllm (the replica set serving the base "
        "revision, the candidate under its versioned name), transformers (in the worker), auto "
        "(vllm when a serving config is set and a set serves the revision).",
    )


def gate(
    params: RefineTuneParams, store_uri: str, version: str, trigger: Trigger, log: Log = LOG
) -> Any:
    """The eval gate: the new adapter against the champion, answered by `params.generator`.
    Returns the GateRecord."""
    from slmops.config import get_settings
    from slmops.pipelines.gate import evaluate_adapter
    from slmops.serving.answering import answering_backend
    from slmops.store import open_store

    store = open_store(store_uri)
    with answering_backend(store, params.generator, params.serving, say=log.info) as backend:
        return evaluate_adapter(
            store,
            params.adapter,
            version,
            champion="auto",
            suites=params.suites,
            policy=params.policy,
            cache_dir=Path(get_settings().cache_dir).expanduser(),
            trigger=trigger,
            backend=backend,
            say=log.info,
        )


def preflight(params: RefineTuneParams, store: ObjectStore) -> None:
    """Everything the gate and promotion will need, checked before any training: the suites,
    the policy against them, every index a suite retrieves from (its `latest` alias), and the
    serving config when one is set or the generator needs it. Raises ConfigError saying what
    to run."""
    from slmops.errors import ConfigError
    from slmops.evaluation.gate import known_metrics
    from slmops.evaluation.policy import load_policy
    from slmops.serving.answering import serving_if_set
    from slmops.store.versions import INDEXES, LATEST, VersionedArtifact
    from slmops.suites.spec import load_suites

    if not params.gate:
        return
    loaded = load_suites(params.suites)
    load_policy(params.policy, known_metrics(loaded))
    for name in sorted({s.index for s in loaded.config.suites.values() if s.index}):
        if VersionedArtifact(store, INDEXES, name).get_alias(LATEST) is None:
            raise ConfigError(
                f"the gate's suites ({params.suites}) retrieve from index {name}, which has no "
                f"version in {store.uri} yet: run `slmops ingest DOCS --index {name}` (or the "
                "ingest-docs flow) first; nothing was trained"
            )
    serving = serving_if_set(params.serving)
    if params.generator == "vllm" and serving is None:
        from slmops.serving.engine import engine_python

        engine_python()  # the gate starts an engine of its own: vLLM must be installed


def promote(params: RefineTuneParams, store_uri: str, version: str, trigger: Trigger) -> None:
    """Promotion of `version` to every replica of the serving config."""
    from slmops.config import get_settings
    from slmops.pipelines.promotion import promote as run_promotion
    from slmops.serving.client import load_serving_config
    from slmops.store import open_store

    config = load_serving_config(params.serving or get_settings().serving or "")
    run_promotion(
        open_store(store_uri),
        params.adapter,
        version,
        config,
        suites=params.suites,
        trigger=trigger,
        log=LOG.info,
    )


def serving_mismatch(params: RefineTuneParams, store: ObjectStore, version: str) -> str | None:
    """Why the replicas cannot serve this version's base revision (None: they can)."""
    from slmops.config import get_settings
    from slmops.serving.client import load_serving_config
    from slmops.serving.placement import base_mismatch
    from slmops.store.versions import ADAPTERS, VersionedArtifact

    config = load_serving_config(params.serving or get_settings().serving or "")
    manifest = VersionedArtifact(store, ADAPTERS, params.adapter).manifest(version)
    return base_mismatch(config, manifest, f"{params.adapter}@{version}")


@dataclass(frozen=True)
class RefineTuneStages:
    """The stage functions `run_refine_tune` calls, by keyword (gate and promote take the
    run's params, the store URI, the version and the trigger). The defaults run in-process;
    the refine-tune flow passes them wrapped as Prefect tasks and subflows."""

    checkout: Callable[..., tuple[Any, str]] = checkout_base
    dataset: Callable[..., Manifest] = dataset_version
    warm_start: Callable[..., str | None] = warm_start_from
    find_trained: Callable[..., Manifest | None] = find_trained
    claim: Callable[..., tuple[Any, Manifest | None]] = claim_training
    train: Callable[..., tuple[TrainResult, Path]] = train
    check: Callable[..., dict[str, float]] = format_check
    publish: Callable[..., Manifest] = publish
    report: Callable[..., str] = report_training
    has_verdict: Callable[..., bool] = has_verdict
    gate: Callable[[RefineTuneParams, str, str, Trigger], Any] = gate
    promote: Callable[[RefineTuneParams, str, str, Trigger], None] = promote


def run_refine_tune(
    params: RefineTuneParams,
    *,
    trigger: Trigger | None = None,
    stages: RefineTuneStages = RefineTuneStages(),
    log: Log = LOG,
) -> Manifest:
    """Train (or find) the adapter for this base revision, data and recipe; gate it and,
    when the policy allows, promote it. Returns the adapter version."""
    from slmops.config import get_settings
    from slmops.store import open_store
    from slmops.store.claims import holding
    from slmops.store.versions import check_name
    from slmops.training.adapters import check_adapter_base, rows_sha256, training_key

    check_name(params.adapter, "adapter name")
    store_uri = params.store or get_settings().store
    trigger = trigger or Trigger(type="api")
    if params.event_id:
        trigger = Trigger(
            type="event", id=params.event_id, by=trigger.by, flow_run_id=trigger.flow_run_id
        )
    store = open_store(store_uri)  # this process's one handle; stages are given the URI
    check_adapter_base(store, params.adapter, params.model)
    preflight(params, store)

    rev, base_path = stages.checkout(
        model=params.model, source=params.source, revision=params.revision or None
    )
    data = stages.dataset(
        store_uri=store_uri,
        name=params.dataset_name,
        path=params.dataset,
        config=params.dataset_config,
        base_path=base_path,
        trigger=trigger,
    )
    warm_start = None
    if params.config.warm_start_steps:
        warm_start = stages.warm_start(
            store_uri=store_uri,
            adapter=params.adapter,
            model=rev.model,
            revision=rev.revision,
            config=params.config,
            weights=rev.weights,
        )
    assert rev.weights is not None  # the checkout digests the weights
    key = training_key(
        rev.model, rev.weights, params.dataset_name, rows_sha256(data), params.config, warm_start
    )
    claim = None
    existing = stages.find_trained(store_uri=store_uri, adapter=params.adapter, key=key)
    if existing is None:
        claim, existing = stages.claim(store_uri=store_uri, adapter=params.adapter, key=key)
    if existing is not None:
        log.info(
            "adapter %s version %s was already trained for these inputs; nothing to do",
            params.adapter,
            existing.version,
        )
        stages.report(store_uri=store_uri, manifest=existing, reused=True)
        if params.gate and not stages.has_verdict(
            store_uri=store_uri,
            adapter=params.adapter,
            version=existing.version,
            suites=params.suites,
            policy=params.policy,
        ):
            record = stages.gate(params, store_uri, existing.version, trigger)
            _promote_if_allowed(params, store, store_uri, record, trigger, stages, log)
        return existing

    assert claim is not None
    record = None
    workdir = Path(tempfile.mkdtemp(prefix=f"slmops-train-{params.adapter}-"))
    try:
        with holding(claim):
            result, adapter_dir = stages.train(
                store_uri=store_uri,
                adapter=params.adapter,
                key=key,
                base_path=base_path,
                served_model=rev.model,
                dataset=params.dataset_name,
                version=data.version or "",
                config=params.config,
                workdir=workdir,
                warm_start=warm_start,
            )
            metrics = stages.check(
                store_uri=store_uri,
                base_path=base_path,
                adapter_dir=adapter_dir,
                dataset=params.dataset_name,
                version=data.version or "",
                suites=params.suites,
            )
            manifest = stages.publish(
                store_uri=store_uri,
                adapter=params.adapter,
                adapter_dir=adapter_dir,
                result=result,
                key=key,
                rev=rev,
                dataset=data,
                config=params.config,
                metrics=metrics,
                trigger=trigger,
                claim=claim,
                warm_start=warm_start,
            )
            stages.report(store_uri=store_uri, manifest=manifest, reused=False)
            if params.gate:  # inside the claim: a run waiting on this key finds the verdict
                record = stages.gate(params, store_uri, manifest.version, trigger)
        _promote_if_allowed(params, store, store_uri, record, trigger, stages, log)
        log.info(
            "adapter %s version %s: loss %.3f, json_valid %s (base %s)",
            params.adapter,
            manifest.version,
            result.final_loss,
            metrics.get("json_valid"),
            metrics.get("base_json_valid"),
        )
        return manifest
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _promote_if_allowed(
    params: RefineTuneParams,
    store: ObjectStore,
    store_uri: str,
    record: Any,
    trigger: Trigger,
    stages: RefineTuneStages,
    log: Log,
) -> None:
    """Promotion, when the gate passed and the policy says auto_promote."""
    from slmops.config import get_settings
    from slmops.evaluation.verdicts import auto_promote

    if record is None or not record.verdict.passed or not auto_promote(params.policy):
        return
    version = record.verdict.version
    if not (params.serving or get_settings().serving):
        log.warning(
            "the policy says auto_promote, but no serving config is set (SLMOPS_SERVING or "
            "the serving parameter): %s@%s stays the challenger",
            params.adapter,
            version,
        )
        return
    mismatch = serving_mismatch(params, store, version)
    if mismatch:
        log.warning(
            "not promoted: %s. %s@%s stays the challenger; promote it (promote-adapter) once "
            "the replicas run its base revision (`slmops stack up --roll` rolls the local ones)",
            mismatch,
            params.adapter,
            version,
        )
        return
    stages.promote(params, store_uri, version, trigger)
