"""refine-tune: base model + revision + dataset -> validated dataset version -> claim the
training key -> LoRA/QLoRA adapter -> adapter version in the store, with its lineage.

Triggered by `slmops.base-model.released` for the adapter's own base model (adapters do not
transfer between base revisions), weekly, or by hand. Idempotent: the same base revision,
dataset and weight-changing config train once, even when two runs start together (the one
that claims the key trains; the other waits and returns its adapter).

Then the eval gate (flows/eval_gate.py) judges the new adapter against the champion, and if
it passes and the policy says `auto_promote`, promote-adapter puts it on every vLLM replica.

Run it:  python -m flows.refine_tune tiny-llama .slmops/models/tiny-llama
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from flows.eval_gate import EXAMPLE_POLICY, EXAMPLE_SUITES, EvalGateParams, eval_gate
from flows.promote_adapter import PromoteParams, promote_adapter
from slmops.adapters import check_adapter_base, rows_sha256, training_key
from slmops.claims import holding
from slmops.config import get_settings
from slmops.datasets import DatasetConfig
from slmops.evaluation import GateRecord, auto_promote
from slmops.manifest import Manifest, Trigger
from slmops.store import open_store
from slmops.training import TrainConfig
from slmops.versions import check_name
from tasks.context import current_trigger
from tasks.gate import has_verdict
from tasks.training import (
    base_model,
    claim_training,
    dataset_version,
    find_trained,
    format_check,
    publish,
    report_training,
    train,
    warm_start_from,
)

EXAMPLE_DATA = "examples/support-bot/train.jsonl"


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


@flow(name="refine-tune")
def refine_tune(params: RefineTuneParams) -> Manifest:
    """Fine-tune an adapter for a base-model revision and store it with its lineage.

    Args:
        params: Base model and revision, training data, adapter name and hyperparameters.
    """
    logger = get_run_logger()
    check_name(params.adapter, "adapter name")
    store_uri = params.store or get_settings().store
    trigger = current_trigger()
    if params.event_id:
        trigger = Trigger(
            type="event", id=params.event_id, by=trigger.by, flow_run_id=trigger.flow_run_id
        )
    check_adapter_base(open_store(store_uri), params.adapter, params.model)

    rev, base_path = base_model(
        model=params.model, source=params.source, revision=params.revision or None
    )
    data = dataset_version(
        store_uri=store_uri,
        name=params.dataset_name,
        path=params.dataset,
        config=params.dataset_config,
        base_path=base_path,
        trigger=trigger,
    )
    warm_start = None
    if params.config.warm_start_steps:
        warm_start = warm_start_from(
            store_uri=store_uri,
            adapter=params.adapter,
            model=rev.model,
            revision=rev.revision,
            config=params.config,
            weights=rev.weights,
        )
    assert rev.weights is not None  # base_model checks the revision out
    key = training_key(
        rev.model, rev.weights, params.dataset_name, rows_sha256(data), params.config, warm_start
    )
    claim = None
    existing = find_trained(store_uri=store_uri, adapter=params.adapter, key=key)
    if existing is None:
        claim, existing = claim_training(store_uri=store_uri, adapter=params.adapter, key=key)
    if existing is not None:
        logger.info(
            "adapter %s version %s was already trained for these inputs; nothing to do",
            params.adapter,
            existing.version,
        )
        report_training(store_uri=store_uri, manifest=existing, reused=True)
        if params.gate and not has_verdict(
            store_uri=store_uri, adapter=params.adapter, version=existing.version
        ):
            promote_if_allowed(params, store_uri, gate_adapter(params, store_uri, existing.version))
        return existing

    assert claim is not None
    record: GateRecord | None = None
    workdir = Path(tempfile.mkdtemp(prefix=f"slmops-train-{params.adapter}-"))
    try:
        with holding(claim):
            result, adapter_dir = train(
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
            metrics = format_check(
                store_uri=store_uri,
                base_path=base_path,
                adapter_dir=adapter_dir,
                dataset=params.dataset_name,
                version=data.version or "",
                suites=params.suites,
            )
            manifest = publish(
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
            report_training(store_uri=store_uri, manifest=manifest, reused=False)
            if params.gate:  # inside the claim: a run waiting on this key finds the verdict
                record = gate_adapter(params, store_uri, manifest.version)
        promote_if_allowed(params, store_uri, record)
        logger.info(
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


def gate_adapter(params: RefineTuneParams, store_uri: str, version: str) -> GateRecord:
    """The eval gate as a subflow: the new adapter against the champion."""
    return eval_gate(
        EvalGateParams(
            adapter=params.adapter,
            version=version,
            champion="auto",
            suites=params.suites,
            policy=params.policy,
            store=store_uri,
        )
    )


def promote_if_allowed(params: RefineTuneParams, store_uri: str, record: GateRecord | None) -> None:
    """Promotion as a subflow, when the gate passed and the policy says auto_promote."""
    if record is None or not record.verdict.passed or not auto_promote(params.policy):
        return
    if not (params.serving or get_settings().serving):
        get_run_logger().warning(
            "the policy says auto_promote, but no serving config is set (SLMOPS_SERVING or "
            "the serving parameter): %s@%s stays the challenger",
            params.adapter,
            record.verdict.version,
        )
        return
    mismatch = serving_mismatch(params, store_uri, record.verdict.version)
    if mismatch:
        get_run_logger().warning(
            "not promoted: %s. %s@%s stays the challenger; promote it (promote-adapter) once "
            "the replicas run its base revision (`slmops stack up` rolls the local ones)",
            mismatch,
            params.adapter,
            record.verdict.version,
        )
        return
    promote_adapter(
        PromoteParams(
            adapter=params.adapter,
            version=record.verdict.version,
            serving=params.serving,
            suites=params.suites,
            store=store_uri,
        )
    )


def serving_mismatch(params: RefineTuneParams, store_uri: str, version: str) -> str | None:
    """Why the replicas cannot serve this version's base revision (None: they can)."""
    from slmops.promotion import base_mismatch
    from slmops.serving import load_serving_config
    from slmops.store import open_store
    from slmops.versions import ADAPTERS, VersionedArtifact

    config = load_serving_config(params.serving or get_settings().serving or "")
    manifest = VersionedArtifact(open_store(store_uri), ADAPTERS, params.adapter).manifest(version)
    return base_mismatch(config, manifest, f"{params.adapter}@{version}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m flows.refine_tune MODEL_NAME MODEL_SOURCE")
    refine_tune(RefineTuneParams(model=sys.argv[1], source=sys.argv[2]))
