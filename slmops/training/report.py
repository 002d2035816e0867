"""The report of a training run, as a person reads it on the run's page: the adapter version,
its lineage, its metrics and resources, the memory plan and the loss curve."""

from __future__ import annotations

import json

from slmops.errors import StoreError
from slmops.markdown import fmt, inline_png
from slmops.store.base import ObjectStore
from slmops.store.manifest import Manifest
from slmops.store.versions import ADAPTERS, VersionedArtifact
from slmops.training.memory_plan import MemoryPlan, plan_markdown

LOSS_PNG = "training/loss.png"
LOSS_ROWS = 10  # rows of the loss table below the chart (the last step always included)


def sampled_curve(curve: list[tuple[int, float]], rows: int = LOSS_ROWS) -> list[tuple[int, float]]:
    """About `rows` evenly spaced points of a curve, always ending with its last point."""
    if not curve:
        return []
    step = max(1, len(curve) // rows)
    picked = list(curve[::step])
    if picked[-1] != curve[-1]:
        picked.append(curve[-1])
    return [(int(s), float(v)) for s, v in picked]


def adapter_report(store: ObjectStore, manifest: Manifest, reused: bool) -> tuple[str, str]:
    """Markdown for an adapter version's training run, and a one-line JSON summary."""
    m, r = manifest.metrics, manifest.resources
    base = manifest.trained_on()
    data = next(i for i in manifest.inputs if i.kind == "dataset")
    head = f"Adapter `{manifest.name}` version `{manifest.version}`" + (
        " (already trained for these inputs: nothing trained)" if reused else ""
    )
    trigger = manifest.trigger
    lines = [
        f"## {head}",
        "",
        f"- base model: `{base.name}` revision `{(base.version or '')[:12]}`",
        f"- dataset: `{data.name}` version `{data.version}`",
        *[
            f"- warm start: from `{i.name}` version `{i.version}` (its weights, then "
            f"{m.get('steps')} steps)"
            for i in manifest.inputs
            if i.kind == "adapter"
        ],
        f"- trigger: {trigger.type}" + (f" ({trigger.by})" if trigger.by else ""),
        f"- stored at: `{store.uri}/{ADAPTERS}/{manifest.name}/versions/{manifest.version}/`",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "final_loss",
        "eval_loss",
        "json_valid",
        "base_json_valid",
        "steps",
        "tokens_seen",
        "tokens_per_second",
    ):
        if key in m:
            lines.append(f"| {key} | {fmt(m[key])} |")
    for key in (
        "method",
        "device",
        "threads",
        "threads_source",
        "cpu_seconds",
        "gpu_seconds",
        "peak_rss_mb",
        "estimated_cost_usd",
    ):
        if r.get(key) is not None:
            lines.append(f"| {key} | {fmt(r[key])} |")
    if isinstance(r.get("memory_plan"), dict):
        lines += ["", "### Memory plan", ""]
        lines += plan_markdown(MemoryPlan.model_validate(r["memory_plan"]))
    if m.get("loss_curve"):
        art = VersionedArtifact(store, ADAPTERS, manifest.name)
        assert manifest.version is not None
        try:
            chart = inline_png(art.read_file(manifest.version, LOSS_PNG), "training loss by step")
        except StoreError as exc:
            chart = f"(loss chart unavailable: {exc})"
        lines += ["", "### Training loss", "", chart, "", "| step | loss |", "|---|---|"]
        lines += [f"| {s} | {loss:.3f} |" for s, loss in sampled_curve(m["loss_curve"])]
    summary = json.dumps({"adapter": manifest.name, "version": manifest.version, "reused": reused})
    return "\n".join(lines), summary
