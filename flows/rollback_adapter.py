"""rollback-adapter: the previous champion back on every vLLM replica, in one step.

The champion alias goes back to the version before it, and the stable name moves back on
every replica. The previous champion's versioned name stays loaded after each promotion, so
this is one in-place load per replica; if a restart lost it, it is loaded again first.

Run it:  python -m flows.rollback_adapter support-bot
    or:  slmops rollback support-bot
"""

from __future__ import annotations

import sys

from prefect import flow

from slmops.config import get_settings
from slmops.serving.promotion import PromotionResult
from slmops.store.versions import check_name
from tasks.promotion import AdapterOnReplicas
from tasks.promotion import rollback_adapter as rollback_task
from tasks.trigger import current_trigger


@flow(name="rollback-adapter")
def rollback_adapter(params: AdapterOnReplicas) -> PromotionResult:
    """Put the previous champion back on every replica.

    Args:
        params: The adapter and the serving config.
    """
    check_name(params.adapter, "adapter name")
    return rollback_task(
        store_uri=params.store or get_settings().store,
        adapter=params.adapter,
        serving=params.serving,
        trigger=current_trigger(),
    )


if __name__ == "__main__":
    rollback_adapter(AdapterOnReplicas(adapter=sys.argv[1] if len(sys.argv) > 1 else "support-bot"))
