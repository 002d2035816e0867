"""watch-base-model: check each watched base model for a new revision and announce it.

Emits `slmops.base-model.released` (resource `slmops.model.<name>`, payload: model, revision,
source) exactly once per (model, revision); the refine-tune deployment's trigger listens for it.

Run it:  prefect deployment run 'watch-base-model/every-15-minutes'
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from slmops.base_models import Revision, WatchedModel
from slmops.config import get_settings
from tasks.base_models import announce_if_new, current_revision


class WatchParams(BaseModel):
    models: list[WatchedModel] = Field(description="Base models to follow.")
    store: str | None = Field(
        None, description="Store URI for the watcher's record. Empty: SLMOPS_STORE."
    )


@flow(name="watch-base-model")
def watch_base_model(params: WatchParams) -> list[Revision]:
    """Announce each watched model's revision if it was not seen before; returns the new ones.

    Args:
        params: The base models to follow, and the store holding what was seen.
    """
    logger = get_run_logger()
    store_uri = params.store or get_settings().store
    released = []
    for model in params.models:
        rev = current_revision(model=model)
        if announce_if_new(store_uri=store_uri, rev=rev):
            logger.info("new revision of %s: %s (from %s)", rev.model, rev.revision, rev.source)
            released.append(rev)
        else:
            logger.info("%s: revision %s already seen", rev.model, rev.revision[:12])
    return released
