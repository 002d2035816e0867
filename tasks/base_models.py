"""Base-model steps as Prefect tasks: resolving revisions, announcing releases."""

from __future__ import annotations

from prefect import task

from slmops import base_models as models
from slmops.base_models import RELEASE_EVENT, Revision, WatchedModel
from slmops.store import open_store
from tasks.retries import RETRIES
from tasks.signals import announce


@task(name="current-revision", task_run_name="revision of {model.name}", **RETRIES)
def current_revision(model: WatchedModel) -> Revision:
    return models.current_revision(model)


@task(name="announce-release", task_run_name="announce {rev.model}@{rev.revision:.12}", **RETRIES)
def announce_if_new(store_uri: str, rev: Revision) -> bool:
    """Emit `slmops.base-model.released` for a revision not seen before; record it as seen.

    The event goes out before the revision is recorded, so a crash in between re-announces
    rather than loses the release; the event id is derived from (model, revision), and
    refine-tune is idempotent, so a repeat trains nothing twice.
    """
    store = open_store(store_uri)
    seen, etag = models.seen_revisions(store, rev.model)
    if seen.has(rev.revision):
        return False
    announce(
        RELEASE_EVENT,
        models.resource_id(rev.model),
        rev.model,
        {"model": rev.model, "revision": rev.revision, "source": rev.source},
        id=models.event_id(rev.model, rev.revision),
    )
    models.record_revision(store, rev, etag, seen)
    return True
