"""promote-adapter: a gate-passed adapter version -> every vLLM replica, or none of them.

preflight (verdict, hashes, rank, base revision, replicas reachable) -> phase 1 on every
replica (load the versioned name, list-check, smoke-test golden prompts) -> phase 2 (flip the
champion alias, move the stable name, keep the previous champion loaded, drain older ones).
A failure in phase 1 unloads what it loaded and changes nothing else.

refine-tune runs this by itself when the gate policy says `auto_promote: true`; otherwise a
person runs it from the UI.

Run it:  python -m flows.promote_adapter support-bot challenger
    or:  prefect deployment run 'promote-adapter/manual' --param params='{"version": "challenger"}'
"""

from __future__ import annotations

import sys

from prefect import flow
from pydantic import BaseModel, Field

from slmops.config import get_settings
from slmops.pipelines.defaults import EXAMPLE_SUITES
from slmops.serving.promotion import PromotionResult
from slmops.store.versions import check_name
from tasks.promotion import promote_adapter as promote_task
from tasks.trigger import current_trigger


class PromoteParams(BaseModel):
    """Which adapter version to put into production, and on which replicas."""

    adapter: str = Field("support-bot", description="Adapter name in the store.")
    version: str = Field(
        "challenger",
        description="Version id or alias to promote. challenger = the last adapter that passed "
        "the gate. It needs a passing verdict against the current champion.",
    )
    serving: str | None = Field(
        None,
        description="Serving config YAML (replicas, what they serve, the shared adapter "
        "folder). Empty: SLMOPS_SERVING.",
    )
    suites: str = Field(
        EXAMPLE_SUITES, description="Eval suites folder: the smoke test asks its format cases."
    )
    drain_s: float | None = Field(
        None,
        ge=0,
        description="Seconds to wait before unloading versions older than the previous "
        "champion. Empty: the serving config's drain_s.",
    )
    store: str | None = Field(
        None,
        description="Artifact store URI (s3://bucket/prefix or a folder). Empty: SLMOPS_STORE.",
    )


@flow(name="promote-adapter")
def promote_adapter(params: PromoteParams) -> PromotionResult:
    """Promote an adapter version to every vLLM replica, two-phase, all or nothing.

    Args:
        params: The adapter and version, the serving config and the smoke-test suites.
    """
    check_name(params.adapter, "adapter name")
    return promote_task(
        store_uri=params.store or get_settings().store,
        adapter=params.adapter,
        version=params.version,
        serving=params.serving,
        suites=params.suites,
        drain_s=params.drain_s,
        trigger=current_trigger(),
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    promote_adapter(
        PromoteParams(
            adapter=args[0] if args else "support-bot",
            version=args[1] if len(args) > 1 else "challenger",
        )
    )
