"""The one retry rule for tasks: only what may succeed if tried again."""

from __future__ import annotations

from typing import Any

from slmops.errors import is_transient


def retry_if_transient(task: object, task_run: object, state: object) -> bool:
    """Prefect's retry condition: retry only what may succeed if tried again (a connection
    failure, a timeout, a 5xx), never bad input, damaged data, a lost race or a bug."""
    try:
        state.result()  # type: ignore[attr-defined]
    except Exception as exc:
        return is_transient(exc)
    return False


# Every task that touches a store, a source or a server: two retries, transient errors only.
RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": 10,
    "retry_condition_fn": retry_if_transient,
}
