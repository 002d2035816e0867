"""Refine-tune, the pipeline: base model + revision + dataset -> validated dataset version ->
training key -> claim -> LoRA/QLoRA adapter -> format check -> adapter version with its
lineage -> eval gate against the champion -> promotion (when the policy says `auto_promote`
and a serving config is set).

    run_refine_tune(params)                       # in-process (`slmops refine-tune`)
    run_refine_tune(params, stages=TASK_STAGES)   # the refine-tune flow: each stage a task

The pipeline is written once, here; the flow (flows/refine_tune.py) passes the same stage
functions wrapped as Prefect tasks (retries, progress artifacts, the run's log) and the gate
and promotion as subflows, the way `slmops.rag.ingest.IngestStages` serves the ingest flow.

Idempotent: the same base weights, dataset and weight-changing config train once, even when
two runs start together (the one that claims the training key trains, holding the claim
while it works; the other waits and returns its adapter). An adapter found already trained is
gated if the current champion has not judged it yet.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from slmops.generation import GeneratorChoice
from slmops.store.manifest import Manifest, Trigger
from slmops.training.datasets import DatasetConfig
from slmops.training.trainer import TrainConfig, TrainResult

EXAMPLE_DATA = "examples/support-bot/train.jsonl"
EXAMPLE_SUITES = "examples/support-bot/evals"
EXAMPLE_POLICY = "examples/support-bot/evals/policy.yaml"

LOG = logging.getLogger("slmops.training.refine_tune")
Log = logging.Logger | logging.LoggerAdapter


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


# --- the stages -------------------------------------------------------------------------------
# Plain inputs (URIs, names, paths) so that the flow can run each one as a task.


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
    started, tenths = time.monotonic(), Tenths()

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


def gate(
    params: RefineTuneParams, store_uri: str, version: str, trigger: Trigger, log: Log = LOG
) -> Any:
    """The eval gate: the new adapter against the champion, answered by `params.generator`.
    Returns the GateRecord."""
    from slmops.config import get_settings
    from slmops.evaluation.verdicts import evaluate_adapter
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


def preflight(params: RefineTuneParams, store_uri: str) -> None:
    """Everything the gate and promotion will need, checked before any training: the suites,
    the policy against them, every index a suite retrieves from (its `latest` alias), and the
    serving config when one is set or the generator needs it. Raises ConfigError saying what
    to run."""
    from slmops.errors import ConfigError
    from slmops.evaluation.gate import known_metrics
    from slmops.evaluation.policy import load_policy
    from slmops.serving.answering import serving_if_set
    from slmops.store import open_store
    from slmops.store.versions import INDEXES, LATEST, VersionedArtifact
    from slmops.suites.spec import load_suites

    if not params.gate:
        return
    loaded = load_suites(params.suites)
    load_policy(params.policy, known_metrics(loaded))
    store = open_store(store_uri)
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
    from slmops.serving.client import load_serving_config
    from slmops.serving.promotion import promote as run_promotion
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


def serving_mismatch(params: RefineTuneParams, store_uri: str, version: str) -> str | None:
    """Why the replicas cannot serve this version's base revision (None: they can)."""
    from slmops.config import get_settings
    from slmops.serving.client import load_serving_config
    from slmops.serving.promotion import base_mismatch
    from slmops.store import open_store
    from slmops.store.versions import ADAPTERS, VersionedArtifact

    config = load_serving_config(params.serving or get_settings().serving or "")
    manifest = VersionedArtifact(open_store(store_uri), ADAPTERS, params.adapter).manifest(version)
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
    check_adapter_base(open_store(store_uri), params.adapter, params.model)
    preflight(params, store_uri)

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
            _promote_if_allowed(params, store_uri, record, trigger, stages, log)
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
        _promote_if_allowed(params, store_uri, record, trigger, stages, log)
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
    mismatch = serving_mismatch(params, store_uri, version)
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
