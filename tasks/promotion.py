"""Serving steps as Prefect tasks: promote, roll back, reconcile. Each tells the world what
happened: a markdown artifact on the run, an event (`slmops.adapter.promoted`,
`slmops.adapter.promotion-failed`, `slmops.adapter.rolled-back`) and the audit log (written
by the core).

No retries here: promotion undoes its own partial work and a second attempt would start from
a changed state; `serve sync` (a cron deployment) is what converges after a transient fault.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from pydantic import BaseModel, Field

from slmops.errors import SlmopsError
from slmops.pipelines.promotion import promote
from slmops.serving.client import ServingConfig, resolve_serving_config
from slmops.serving.promotion import PromotionResult
from slmops.serving.reconcile import SyncReport, rollback, sync
from slmops.serving.report import promotion_report
from slmops.store import open_store
from slmops.store.manifest import Trigger
from tasks.signals import announce_adapter

PROMOTED = "slmops.adapter.promoted"
PROMOTION_FAILED = "slmops.adapter.promotion-failed"
ROLLED_BACK = "slmops.adapter.rolled-back"


class AdapterOnReplicas(BaseModel):
    """Which adapter, on which replicas (the rollback and serve-sync flows' parameters)."""

    adapter: str = Field("support-bot", description="Adapter name in the store.")
    serving: str | None = Field(
        None, description="Serving config YAML (the replicas). Empty: SLMOPS_SERVING."
    )
    store: str | None = Field(
        None,
        description="Artifact store URI (s3://bucket/prefix or a folder). Empty: SLMOPS_STORE.",
    )


def serving_config(path: str | None, drain_s: float | None = None) -> ServingConfig:
    """The serving config from `path`, else SLMOPS_SERVING; drain_s overrides its drain."""
    config = resolve_serving_config(path)
    if drain_s is not None:
        config = config.model_copy(update={"drain_s": drain_s})
    return config


@task(name="promote-adapter", task_run_name="promote {adapter}@{version}", cache_policy=NONE)
def promote_adapter(
    store_uri: str,
    adapter: str,
    version: str,
    serving: str | None,
    suites: str,
    drain_s: float | None,
    trigger: Trigger,
) -> PromotionResult:
    """Two-phase promotion to every replica; a failure undoes itself and is announced."""
    logger = get_run_logger()
    try:
        config = serving_config(serving, drain_s)
        result = promote(
            open_store(store_uri),
            adapter,
            version,
            config,
            suites=suites,
            trigger=trigger,
            log=logger.info,
        )
    except SlmopsError as exc:
        announce_adapter(
            PROMOTION_FAILED, adapter, {"adapter": adapter, "version": version, "reason": str(exc)}
        )
        create_markdown_artifact(
            f"## Promotion refused: {adapter}@{version}\n\n{exc}\n",
            key=f"promotion-{adapter}",
            description=f"Promotion of {adapter}@{version} failed",
        )
        raise
    announce_adapter(PROMOTED, adapter, result.model_dump(mode="json"))
    create_markdown_artifact(
        promotion_report("Promoted", result),
        key=f"promotion-{adapter}",
        description=f"{adapter}@{result.version} promoted",
    )
    return result


@task(name="rollback-adapter", task_run_name="rollback {adapter}", cache_policy=NONE)
def rollback_adapter(
    store_uri: str, adapter: str, serving: str | None, trigger: Trigger
) -> PromotionResult:
    """The previous champion back on every replica."""
    logger = get_run_logger()
    result = rollback(
        open_store(store_uri),
        adapter,
        serving_config(serving),
        trigger=trigger,
        log=logger.info,
    )
    announce_adapter(ROLLED_BACK, adapter, result.model_dump(mode="json"))
    create_markdown_artifact(
        promotion_report("Rolled back", result),
        key=f"promotion-{adapter}",
        description=f"{adapter} rolled back to {result.version}",
    )
    return result


@task(name="sync-replicas", task_run_name="sync {adapter}", cache_policy=NONE)
def sync_replicas(
    store_uri: str, adapter: str, serving: str | None, trigger: Trigger
) -> SyncReport:
    """Make every replica serve what the champion alias says; report the drift fixed."""
    logger = get_run_logger()
    report = sync(
        open_store(store_uri), adapter, serving_config(serving), trigger=trigger, log=logger.info
    )
    if report.drift:
        rows = "\n".join(
            f"| {d.replica} | {d.problem} | "
            + ("fixed" if d.fixed else f"NOT fixed: {d.error}")
            + " |"
            for d in report.drift
        )
        create_markdown_artifact(
            f"## Serving drift of {adapter} (champion {report.champion})\n\n"
            f"| replica | drift | result |\n|---|---|---|\n{rows}\n",
            key=f"serving-sync-{adapter}",
            description=f"{len(report.drift)} drift(s) on the replicas of {adapter}",
        )
    return report
