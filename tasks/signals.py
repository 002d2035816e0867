"""What a task shows the world besides its result: events (automations and the UI's event feed
react to them) and a progress artifact on the run's page."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.events import emit_event


def announce(
    event: str, resource_id: str, name: str, payload: dict[str, Any], *, id: UUID | None = None
) -> None:
    """Emit `event` about one resource (`slmops.adapter.<name>`, `slmops.model.<name>`)."""
    emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id, "prefect.resource.name": name},
        payload=payload,
        id=id,
    )


def announce_adapter(event: str, adapter: str, payload: dict[str, Any]) -> None:
    announce(event, f"slmops.adapter.{adapter}", adapter, payload)


class ProgressBar:
    """A progress artifact on the run's page, moved at most every `step` percent (each update
    is a server event) and at 100%."""

    def __init__(self, key: str, description: str, step: float = 5.0):
        artifact = create_progress_artifact(progress=0.0, key=key, description=description)
        assert isinstance(artifact, UUID)  # a sync call in a sync task
        self.artifact, self.step, self.shown = artifact, step, 0.0

    def update(self, percent: float) -> None:
        if percent - self.shown >= self.step or (percent >= 100.0 > self.shown):
            self.shown = percent
            update_progress_artifact(self.artifact, progress=min(percent, 100.0))
