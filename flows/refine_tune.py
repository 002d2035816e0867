"""refine-tune: base model + revision + dataset -> validated dataset version -> LoRA/QLoRA
adapter -> adapter version in the store, with its lineage.

Triggered by `slmops.base-model.released` (adapters do not transfer between base revisions),
weekly, or by hand. Idempotent: the same base revision, dataset and config train once.

Run it:  python -m flows.refine_tune tiny-llama .slmops/models/tiny-llama
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from slmops.adapters import find_trained, training_key
from slmops.config import get_settings
from slmops.datasets import DatasetConfig
from slmops.manifest import Manifest, Trigger
from slmops.store import open_store
from slmops.training import TrainConfig
from slmops.versions import check_name
from tasks.context import current_trigger
from tasks.training import (
    base_model,
    dataset_version,
    format_check,
    publish,
    report_training,
    train,
)

EXAMPLE_DATA = "examples/support-bot/train.jsonl"


@flow(name="refine-tune")
def refine_tune(
    model: str,
    source: str,
    revision: str | None = None,
    dataset: str = EXAMPLE_DATA,
    dataset_name: str = "support-bot",
    adapter: str = "support-bot",
    config: TrainConfig | None = None,
    dataset_config: DatasetConfig | None = None,
    store: str | None = None,
    event_id: str | None = None,
) -> Manifest:
    """Fine-tune an adapter for a base-model revision and store it with its lineage.

    Args:
        model: Base model id as served (vLLM --served-model-name), e.g. tiny-llama.
        source: Where the base model lives: hf://org/name, s3://bucket/prefix or a folder.
        revision: Revision to train on (from the release event). Empty: the source's current.
        dataset: Training data, JSONL (chat messages or prompt/completion rows).
        dataset_name: Dataset name in the store (datasets/<name>/versions/...).
        adapter: Adapter name in the store (adapters/<name>/versions/...).
        config: LoRA/QLoRA hyperparameters; defaults suit small models.
        dataset_config: Bad-row policy, eval split, max tokens per row.
        store: Store URI. Empty: SLMOPS_STORE.
        event_id: The release event that triggered this run (set by the trigger).
    """
    logger = get_run_logger()
    config = config or TrainConfig()
    dataset_config = dataset_config or DatasetConfig()
    check_name(adapter, "adapter name")
    store_uri = store or get_settings().store
    trigger = current_trigger()
    if event_id:
        trigger = Trigger(type="event", id=event_id, by=trigger.by, flow_run_id=trigger.flow_run_id)

    rev, base_path = base_model(model, source, revision or None)
    data = dataset_version(store_uri, dataset_name, dataset, dataset_config, base_path, trigger)
    dataset_sha = next(i.sha256 for i in data.inputs if i.kind == "file") or ""
    key = training_key(rev.model, rev.revision, dataset_name, data.version, dataset_sha, config)
    existing = find_trained(open_store(store_uri), adapter, key)
    if existing is not None:
        logger.info(
            "adapter %s version %s was already trained for these inputs; nothing to do",
            adapter,
            existing.version,
        )
        report_training(store_uri, existing, True)
        return existing

    workdir = Path(tempfile.mkdtemp(prefix=f"slmops-train-{adapter}-"))
    try:
        result = train(
            store_uri,
            adapter,
            key,
            base_path,
            rev.model,
            dataset_name,
            data.version,
            config,
            workdir,
        )
        adapter_dir = workdir / "out" / "adapter"
        metrics = format_check(store_uri, base_path, adapter_dir, dataset_name, data.version)
        manifest = publish(
            store_uri,
            adapter,
            adapter_dir,
            result,
            key,
            rev,
            dataset_name,
            data,
            config,
            metrics,
            trigger,
        )
        logger.info(
            "adapter %s version %s: loss %.3f, json_valid %s (base %s)",
            adapter,
            manifest.version,
            result.final_loss,
            metrics.get("json_valid"),
            metrics.get("base_json_valid"),
        )
        report_training(store_uri, manifest, False)
        return manifest
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    refine_tune(sys.argv[1], sys.argv[2])
