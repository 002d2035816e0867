"""The local Prefect server's flow runs, through its REST API: one call with the waiting a busy
server needs (`prefect_api`), and the runs a stopped worker left behind settled before a new
worker takes the pool (`settle_runs`)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def prefect_api(
    api_url: str,
    path: str,
    body: dict[str, object] | None = None,
    attempts: int = 6,
    method: str | None = None,
) -> object:
    """One call to a Prefect server's REST API (POST with a body, else GET; or `method`);
    the JSON answer (None for an empty one, e.g. a PATCH's 204).

    A busy server (SQLite locked under load: 503s, 30 s stalls) is waited for: reads are
    retried on any transient failure, writes only on a 503 (refused before doing anything),
    so a retried call never creates a second flow run."""
    read_only = (body is None and method is None) or path.endswith("filter")
    for attempt in range(1, attempts + 1):
        req = urllib.request.Request(
            f"{api_url.rstrip('/')}/{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
            method=method or ("POST" if body is not None else "GET"),
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            if attempt == attempts or exc.code not in ((502, 503, 504) if read_only else (503,)):
                raise
        except (TimeoutError, urllib.error.URLError, ConnectionError):
            if attempt == attempts or not read_only:
                raise
        time.sleep(5)
    raise AssertionError("unreachable")


# A scheduled run this late (seconds) when a worker starts fell due while none ran.
LATE_GRACE_S = 60


@dataclass
class RunsSettled:
    """What `LocalStack.reconcile_runs` did: runs marked Crashed, scheduled runs skipped."""

    crashed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _run_process_alive(pid: object, run_id: str) -> bool:
    """Is the flow run's process (the worker records its pid) still running it? A pid that
    now belongs to another process (its environment names no such run) is not."""
    try:
        number = int(str(pid))
    except ValueError:
        return False  # no pid: the worker died while submitting it
    try:
        environ = Path(f"/proc/{number}/environ").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # not Linux, or not ours to read: alive is all we can tell
        try:
            os.kill(number, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ.split(b"\0")


def _set_run_state(api: str, run_id: str, kind: str, name: str, message: str) -> None:
    prefect_api(
        api,
        f"flow_runs/{run_id}/set_state",
        {"state": {"type": kind, "name": name, "message": message}, "force": True},
    )


def settle_runs(
    api: str, pool: str, log: Callable[[str], None], now: float | None = None
) -> RunsSettled:
    """Settle what the last worker left on the pool, before a new worker takes it.

    A run Pending or Running whose process is gone (the machine restarted, the worker was
    killed) is marked Crashed: it would show as running for good, and it held its
    deployment's concurrency slot, so every later run of the deployment waited behind it.
    Of the runs a schedule made that fell due while no worker ran, only the latest of each
    deployment is kept and the others are cancelled: serve-sync every 5 minutes, down for
    an hour, would run 12 times in a row, each waiting for the last, before a manual run
    queued behind them got its turn. Runs started by hand are kept, however late."""
    in_pool = {"work_pools": {"name": {"any_": [pool]}}, "limit": 200}
    active = prefect_api(
        api,
        "flow_runs/filter",
        {
            **in_pool,
            "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}},
        },
    )
    settled = RunsSettled()
    for run in active if isinstance(active, list) else []:
        if _run_process_alive(run.get("infrastructure_pid"), run["id"]):
            continue
        state = run.get("state_name") or run.get("state_type", "").title()
        _set_run_state(
            api,
            run["id"],
            "CRASHED",
            "Crashed",
            f"its process is gone ({state} when the stack's worker stopped); marked by "
            "`slmops stack up`",
        )
        settled.crashed.append(run["name"])
    due_before = (time.time() if now is None else now) - LATE_GRACE_S
    late = prefect_api(
        api,
        "flow_runs/filter",
        {
            **in_pool,
            "flow_runs": {
                "state": {"type": {"any_": ["SCHEDULED"]}},
                "expected_start_time": {"before_": _iso(due_before)},
            },
            "sort": "EXPECTED_START_TIME_DESC",
        },
    )
    latest: set[str] = set()  # deployments whose latest late run is kept
    for run in late if isinstance(late, list) else []:
        key = str(run.get("idempotency_key") or "")
        deployment = run.get("deployment_id")
        if not (run.get("auto_scheduled") or key.startswith("scheduled ")) or not deployment:
            continue  # started by hand (or by an automation): it runs, however late
        if deployment not in latest:
            latest.add(deployment)
            continue
        _set_run_state(
            api,
            run["id"],
            "CANCELLED",
            "Skipped",
            "fell due while the stack was down; a later run of the same schedule runs "
            "instead (`slmops stack up`)",
        )
        settled.skipped.append(run["name"])
    if settled.crashed:
        log(
            f"marked {len(settled.crashed)} run(s) Crashed, their processes gone: "
            + ", ".join(settled.crashed)
        )
    if settled.skipped:
        log(
            f"skipped {len(settled.skipped)} scheduled run(s) that fell due while the stack "
            "was down (the latest of each deployment runs)"
        )
    return settled
