"""Fine-tuning steps as Prefect tasks: base model, dataset version, training with checkpoints
in the store, a format check, publishing, the run's report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from slmops import adapters, datasets, models
from slmops.config import get_settings
from slmops.datasets import DatasetConfig
from slmops.errors import ConfigError
from slmops.generation import generate, json_valid_rate
from slmops.manifest import Manifest, Trigger
from slmops.models import Revision, WatchedModel
from slmops.store import open_store
from slmops.training import TrainConfig, TrainResult, train_adapter
from tasks.context import RETRIES

ANSWER_KEYS = ("answer", "sources", "confidence")


@task(name="base-model", **RETRIES)  # type: ignore[arg-type]
def base_model(model: str, source: str, revision: str | None) -> tuple[Revision, str]:
    """The base model at `revision` (default: the source's current one) as a local folder."""
    rev = models.current_revision(WatchedModel(name=model, source=source))
    if revision and revision != rev.revision and not source.startswith("hf://"):
        raise ConfigError(
            f"model {model} at {source} is now at revision {rev.revision[:12]}, not "
            f"{revision[:12]}: a newer release superseded this one; its own event trains it"
        )
    rev = rev.model_copy(update={"revision": revision or rev.revision})
    path = models.materialize(source, rev.revision, Path(get_settings().cache_dir).expanduser())
    return rev, str(path)


@task(name="dataset-version", **RETRIES)  # type: ignore[arg-type]
def dataset_version(
    store_uri: str, name: str, path: str, config: DatasetConfig, base_path: str, trigger: Trigger
) -> Manifest:
    """Validate the training data (every bad row by line) and store it as a version."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)

    def count(messages: list[dict[str, str]]) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True))

    return datasets.publish_dataset(
        open_store(store_uri), name, path, config, count, trigger=trigger
    )


@task(name="train-adapter", retries=1, retry_delay_seconds=5)
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
) -> TrainResult:
    """Train, copying each checkpoint to the store; a re-run resumes from the newest one."""
    store = open_store(store_uri)
    train_rows = datasets.read_rows(store, dataset, version, datasets.TRAIN)
    eval_rows = datasets.read_rows(store, dataset, version, datasets.EVAL)
    resume = adapters.latest_checkpoint(store, adapter, key, workdir / "resume")
    progress = create_progress_artifact(
        progress=0.0,
        key=f"training-{adapter}",
        description=f"Training {adapter}: {config.max_steps} steps",
    )

    def on_log(step: int, _: dict[str, float]) -> None:
        update_progress_artifact(progress, progress=100.0 * step / config.max_steps)

    shutil.rmtree(workdir / "out", ignore_errors=True)
    return train_adapter(
        Path(base_path),
        train_rows,
        eval_rows,
        workdir / "out",
        config,
        served_model=served_model,
        resume_from=resume,
        on_checkpoint=lambda folder, _: adapters.save_checkpoint(store, adapter, key, folder),
        on_log=on_log,
    )


@task(name="format-check")
def format_check(
    store_uri: str, base_path: str, adapter_dir: Path, dataset: str, version: str
) -> dict[str, float]:
    """Share of valid JSON answers on held-out prompts: base model alone vs with the adapter."""
    rows = datasets.read_rows(open_store(store_uri), dataset, version, datasets.EVAL)
    prompts = [r[:-1] for r in rows][:50]
    if not prompts:
        return {}
    base = json_valid_rate(generate(Path(base_path), prompts), ANSWER_KEYS)
    tuned = json_valid_rate(generate(Path(base_path), prompts, adapter=adapter_dir), ANSWER_KEYS)
    return {"json_valid": tuned, "base_json_valid": base, "format_prompts": len(prompts)}


@task(name="publish-adapter", retries=0)
def publish(
    store_uri: str,
    adapter: str,
    adapter_dir: Path,
    result: TrainResult,
    key: str,
    rev: Revision,
    dataset: str,
    dataset_manifest: Manifest,
    config: TrainConfig,
    metrics: dict[str, float],
    trigger: Trigger,
) -> Manifest:
    dataset_sha = next(i.sha256 for i in dataset_manifest.inputs if i.kind == "file")
    return adapters.publish_adapter(
        open_store(store_uri),
        adapter,
        adapter_dir,
        result,
        key=key,
        base_model=rev.model,
        base_revision=rev.revision,
        base_source=rev.source,
        dataset=dataset,
        dataset_version=dataset_manifest.version,
        dataset_sha=dataset_sha or "",
        config=config,
        metrics=metrics,
        trigger=trigger,
    )


@task(name="report-training")
def report_training(store_uri: str, manifest: Manifest, reused: bool) -> str:
    m, r = manifest.metrics, manifest.resources
    base = next(i for i in manifest.inputs if i.kind == "base-model")
    data = next(i for i in manifest.inputs if i.kind == "dataset")
    head = f"adapter {manifest.name} version {manifest.version}" + (
        " (already trained for these inputs: nothing trained)" if reused else ""
    )
    lines = [
        f"## {head}",
        "",
        f"- base model: `{base.name}` revision `{base.version}`",
        f"- dataset: `{data.name}` version `{data.version}`",
        f"- trigger: {manifest.trigger.type} {manifest.trigger.id or ''}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "final_loss",
        "eval_loss",
        "json_valid",
        "base_json_valid",
        "tokens_seen",
        "tokens_per_second",
        "steps",
    ):
        if key in m:
            lines.append(f"| {key} | {m[key]} |")
    for key in (
        "method",
        "device",
        "cpu_seconds",
        "gpu_seconds",
        "peak_rss_mb",
        "estimated_cost_usd",
    ):
        lines.append(f"| {key} | {r.get(key)} |")
    curve = m.get("loss_curve") or []
    if curve:
        step = max(1, len(curve) // 10)
        lines += [
            "",
            "Loss curve (every few steps; the PNG is stored at "
            f"`{store_uri}/adapters/{manifest.name}/versions/{manifest.version}/"
            "training/loss.png`):",
            "",
            "| step | loss |",
            "|---|---|",
        ]
        lines += [f"| {s} | {loss:.3f} |" for s, loss in curve[::step]]
    create_markdown_artifact("\n".join(lines), key=f"training-{manifest.name}")
    return json.dumps({"adapter": manifest.name, "version": manifest.version, "reused": reused})
