"""Who or what started the flow run (a schedule, an automation on an event, a person in the UI
or CLI, the API): recorded in manifests and the audit log."""

from __future__ import annotations

from uuid import UUID

from prefect.runtime import flow_run

from slmops.store.manifest import Trigger


def current_trigger() -> Trigger:
    """schedule, event (an automation), manual (UI/CLI run of a deployment) or api."""
    run_id = flow_run.get_id()
    if not run_id:
        return Trigger(type="api")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(str(run_id)))
    created_by = run.created_by
    if run.auto_scheduled:
        return Trigger(type="schedule", id=str(run.deployment_id), flow_run_id=str(run_id))
    if created_by is not None and str(created_by.type).upper() == "AUTOMATION":
        return Trigger(
            type="event",
            id=str(created_by.id),
            by=created_by.display_value,
            flow_run_id=str(run_id),
        )
    if run.deployment_id is not None:
        return Trigger(
            type="manual",
            id=str(run.deployment_id),
            by=created_by.display_value if created_by else None,
            flow_run_id=str(run_id),
        )
    return Trigger(type="api", flow_run_id=str(run_id))
