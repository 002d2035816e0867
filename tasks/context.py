"""Who or what started the current flow run, for manifests and the audit log."""

from __future__ import annotations

from prefect.runtime import flow_run

from slmops.errors import SlmopsError, StoreError
from slmops.manifest import Trigger


def current_trigger() -> Trigger:
    """schedule, event (an automation), manual (UI/CLI run of a deployment) or api."""
    run_id = flow_run.get_id()
    if not run_id:
        return Trigger(type="api")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
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


def retry_unless_bad_input(task: object, task_run: object, state: object) -> bool:
    """Retry what may be transient (a store or source that blipped), never bad input,
    corrupt data or a lost race: retrying those would fail the same way or do harm."""
    try:
        state.result()  # type: ignore[attr-defined]
    except SlmopsError as exc:
        return type(exc) is StoreError  # plain StoreError: the store could not be reached
    except Exception:
        return True
    return False


# Task options for steps that touch a store or a source: two retries, none for bad input.
RETRIES = {"retries": 2, "retry_delay_seconds": 10, "retry_condition_fn": retry_unless_bad_input}
