"""What each arm costs a month: serving tokens at the task's prices, and retraining at the
cadence the store's history shows (new base revisions, dataset versions)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from slmops.assess.results import ArmResult, CostEstimate, Costs
from slmops.assess.task import DAYS_PER_MONTH, AssessTask
from slmops.store.base import ObjectStore
from slmops.store.manifest import Manifest
from slmops.store.versions import INDEXES, VersionedArtifact


def _parse_time(value: object) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def history(
    store: ObjectStore, model: str | None, dataset: str | None, index: str | None
) -> dict[str, Any]:
    """How often the store saw new base revisions, dataset versions and index versions."""
    from slmops.base_models import seen_revisions

    moments: dict[str, list[datetime]] = {"base": [], "dataset": [], "index": []}
    if model:
        seen, _ = seen_revisions(store, model)
        moments["base"] = [t for r in seen.revisions if (t := _parse_time(r.get("seen_at")))]
    for key, collection, name in (("dataset", "datasets", dataset), ("index", INDEXES, index)):
        if not name:
            continue
        art = VersionedArtifact(store, collection, name)
        moments[key] = [art.manifest(v).created_at for v in art.versions()]
    every = [t for ts in moments.values() for t in ts]
    days = (max(every) - min(every)).total_seconds() / 86400 if len(every) > 1 else 0.0
    return {"days": days, **{k: len(v) for k, v in moments.items()}}


def estimate_costs(
    task: AssessTask,
    arms: dict[str, ArmResult],
    adapter_manifests: list[Manifest],
    seen: dict[str, Any],
) -> CostEstimate:
    """Monthly cost of each arm at the task's volume, and where fine-tuning pays for itself."""
    econ = task.economics
    if econ.training_usd_per_run is not None:
        per_run: float | None = econ.training_usd_per_run
        run_source = "the task file"
    else:
        costs = [
            float(m.resources["estimated_cost_usd"])
            for m in adapter_manifests
            if isinstance(m.resources.get("estimated_cost_usd"), int | float)
        ]
        per_run = float(np.mean(costs)) if costs else None
        run_source = (
            f"mean estimated cost of {len(costs)} adapter manifests"
            if costs
            else "no adapter manifest records a cost"
        )
    if econ.retrains_per_month is not None:
        cadence, cadence_source = econ.retrains_per_month, "the task file"
    elif seen["days"] >= 7:
        changes = max(seen["base"], 1) + max(seen["dataset"] - 1, 0)
        cadence = changes / seen["days"] * DAYS_PER_MONTH
        cadence_source = (
            f"{seen['base']} base revisions and {seen['dataset']} dataset versions in "
            f"{seen['days']:.0f} days of the store's history"
        )
    else:
        cadence = 52 / 12
        cadence_source = (
            f"weekly (the store's history covers {seen['days'] * 24:.1f} hours, too little "
            "to measure a cadence)"
        )
    rows = []
    for arm, result in arms.items():
        if not result.measured:
            continue
        per_request = (
            result.prompt_tokens * econ.input_usd_per_mtok
            + result.answer_tokens * econ.output_usd_per_mtok
        ) / 1e6
        serving = per_request * econ.requests_per_month
        training = (per_run or 0.0) * cadence if arm.startswith("fine-tuned") else 0.0
        rows.append(
            Costs(
                arm=arm,
                usd_per_request=per_request,
                serving_usd_per_month=serving,
                training_usd_per_month=training,
                total_usd_per_month=serving + training,
            )
        )
    by_arm = {c.arm: c for c in rows}
    break_even = None
    if "fine-tuned" in by_arm and "prompt+examples" in by_arm:
        saving = by_arm["prompt+examples"].usd_per_request - by_arm["fine-tuned"].usd_per_request
        if saving > 0:
            break_even = by_arm["fine-tuned"].training_usd_per_month / saving
    return CostEstimate(
        costs=rows,
        training_usd_per_run=per_run,
        training_cost_source=run_source,
        retrains_per_month=cadence,
        cadence_source=cadence_source,
        base_revisions=seen["base"],
        dataset_versions=seen["dataset"],
        index_versions=seen["index"],
        history_days=seen["days"],
        break_even_requests_per_month=break_even,
    )
