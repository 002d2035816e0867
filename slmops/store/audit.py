"""The audit log: one immutable object per event (promotion, rollback, gate decision...)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from slmops.store.base import ObjectStore
from slmops.store.manifest import Trigger, redact

AUDIT_PREFIX = "audit"


class AuditEvent(BaseModel):
    event: str = Field(description="What happened, e.g. alias.set, alias.rollback, gate.decided.")
    resource: str = Field(description="What it happened to, e.g. slmops.adapter.support-bot.")
    at: datetime
    id: str
    trigger: Trigger = Field(default_factory=Trigger)
    details: dict[str, Any] = Field(default_factory=dict)


class AuditLog:
    """Append-only: events are written under `audit/<yyyy>/<mm>/` and never rewritten."""

    def __init__(self, store: ObjectStore):
        self.store = store

    def record(
        self, event: str, resource: str, *, trigger: Trigger | None = None, **details: Any
    ) -> AuditEvent:
        at = datetime.now(UTC)
        entry = AuditEvent(
            event=event,
            resource=resource,
            at=at,
            id=uuid.uuid4().hex[:12],
            trigger=trigger or Trigger(),
            details=redact(details),
        )
        # The timestamp leads the name, so listing order is time order.
        key = f"{AUDIT_PREFIX}/{at:%Y/%m}/{at:%Y%m%dT%H%M%S.%fZ}-{event}-{entry.id}.json"
        self.store.put_json(key, entry.model_dump(mode="json"))
        return entry

    def events(
        self, *, resource: str | None = None, event: str | None = None
    ) -> Iterator[AuditEvent]:
        """Events in time order, optionally only those for one resource or of one kind."""
        for info in self.store.list_objects(AUDIT_PREFIX + "/"):
            if event and f"-{event}-" not in info.key:
                continue
            entry = AuditEvent.model_validate(self.store.get_json(info.key))
            if resource is None or entry.resource == resource:
                yield entry
