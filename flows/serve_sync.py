"""serve-sync: make every vLLM replica serve what the store says.

vLLM forgets runtime-loaded adapters when it restarts, and a new replica starts with none.
This reconciles each replica with the champion alias: the champion under its versioned name
and the stable name, the previous champion under its versioned name (for an instant
rollback), no other version. It reports every drift it found and whether it fixed it; the run
fails if a replica could not be fixed (e.g. it is down).

Run it:  python -m flows.serve_sync support-bot
    or:  slmops serve sync support-bot
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from slmops.config import get_settings
from slmops.errors import SlmopsError
from slmops.serving.reconcile import SyncReport
from slmops.store.versions import check_name
from tasks.promotion import AdapterOnReplicas, sync_replicas
from tasks.trigger import current_trigger


@flow(name="serve-sync")
def serve_sync(params: AdapterOnReplicas) -> SyncReport:
    """Bring every replica back to the champion; report the drift fixed.

    Args:
        params: The adapter and the serving config.
    """
    check_name(params.adapter, "adapter name")
    logger = get_run_logger()
    if not (params.serving or get_settings().serving):
        # The schedule runs on every stack, with or without replicas: nothing to reconcile.
        logger.warning("no serving config (SLMOPS_SERVING or `serving`): no replicas to sync")
        return SyncReport(adapter=params.adapter, champion=None)
    report = sync_replicas(
        store_uri=params.store or get_settings().store,
        adapter=params.adapter,
        serving=params.serving,
        trigger=current_trigger(),
    )
    logger.info(
        "%s: champion %s, %d drift(s) found, %d fixed",
        params.adapter,
        report.champion,
        len(report.drift),
        sum(d.fixed for d in report.drift),
    )
    if not report.ok:
        raise SlmopsError(
            "replicas not reconciled: "
            + "; ".join(
                f"{d.replica}: {d.problem} ({d.error})" for d in report.drift if not d.fixed
            )
        )
    return report


if __name__ == "__main__":
    serve_sync(AdapterOnReplicas(adapter=sys.argv[1] if len(sys.argv) > 1 else "support-bot"))
