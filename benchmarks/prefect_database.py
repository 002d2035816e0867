"""Prefect server database benchmark: the same concurrent load against a Prefect server on
SQLite and on PostgreSQL, each started fresh in the same run.

    python -m benchmarks.prefect_database                    # 32 clients, 160 flow runs
    python -m benchmarks.prefect_database --clients 64 --runs 400 --databases postgres

The load: `--clients` concurrent API clients (Prefect's own async client, its retries off so
every refused request counts) drive `--runs` flow runs through the orchestration API as a flow
run drives itself (created, Running, `--tasks` task runs each Pending -> Running -> Completed,
a batch of logs, Completed), while `--readers` clients list flow runs and task runs the whole
time (what the UI and the workers do). Prints, per database: requests, failed requests (HTTP
503 and others, "database is locked" counted apart, from the answers and the server's log),
flow runs completed, p50/p99 latency of the writes and the run's wall time, with Postgres'
ratios against SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import free_port


@dataclass
class Tally:
    requests: int = 0
    failed: int = 0
    locked: int = 0
    completed: int = 0
    finished: int = 0  # flow runs driven to their end, refused or not
    errors: dict[str, int] = field(default_factory=dict)
    write_s: list[float] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        self.failed += 1
        text = str(exc)
        if "database is locked" in text:
            self.locked += 1
        status = getattr(getattr(exc, "response", None), "status_code", None)
        key = f"HTTP {status}" if status else type(exc).__name__
        self.errors[key] = self.errors.get(key, 0) + 1


class Server:
    """A Prefect server on loopback on `database`, fresh (its own home, database and port)."""

    def __init__(self, database: str, work: Path):
        self.database, self.work = database, work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = work / f"prefect-{database}.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Server:
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.work / f"home-{self.database}"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            # Prefect answers SQLite's "database is locked" with a bare 503 and logs it only
            # when asked to: the log is where the benchmark counts it.
            "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
        }
        if self.database == "postgres":
            from infra import postgres

            root = self.work / "postgres"
            port = free_port()
            self.procs.append(postgres.start(root, port, self.work / "postgres.log"))
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = postgres.url(root, port)
        prefect = str(Path(sys.executable).parent / "prefect")
        with open(self.log, "ab") as out:
            cmd = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
            server = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
        self.procs.insert(0, server)
        self._wait()
        return self

    def _wait(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[0].poll() is not None:
                raise RuntimeError(f"the Prefect server exited; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the Prefect server was not ready in {timeout:.0f}s; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:  # the server first, then its database
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def locked_in_log(self) -> int:
        return self.log.read_text(errors="replace").count("database is locked")


async def _load(url: str, clients: int, runs: int, tasks: int, readers: int) -> Tally:
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )
    from prefect.states import Completed, Pending, Running

    @flow(name="db-load")
    def load_flow() -> None: ...

    @task(name="db-load-task")
    def load_task() -> None: ...

    tally, queue, done = Tally(), asyncio.Queue[int](), asyncio.Event()
    for i in range(runs):
        queue.put_nowait(i)

    failed = object()

    async def call(coro: Any) -> Any:
        """The call's result, or `failed` (counted)."""
        tally.requests += 1
        tick = time.monotonic()
        try:
            result = await coro
        except Exception as exc:  # every refusal counts, whatever its kind
            tally.error(exc)
            return failed
        tally.write_s.append(time.monotonic() - tick)
        return result

    async def runner() -> None:
        async with get_client() as client:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await one_run(client)
                tally.finished += 1

    async def one_run(client: Any) -> None:
        run = await call(client.create_flow_run(load_flow, state=Pending()))
        if run is failed:
            return
        ok = await call(client.set_flow_run_state(run.id, Running())) is not failed
        for t in range(tasks):
            tr = await call(client.create_task_run(load_task, run.id, dynamic_key=str(t)))
            if tr is failed:
                ok = False
                continue
            for state in (Running, Completed):
                ok &= await call(client.set_task_run_state(tr.id, state())) is not failed
        logs = [
            LogCreate(
                name="db-load",
                level=20,
                message=f"line {n}",
                timestamp=run.created,
                flow_run_id=run.id,
            )
            for n in range(5)
        ]
        ok &= await call(client.create_logs(logs)) is not failed
        ok &= await call(client.set_flow_run_state(run.id, Completed())) is not failed
        tally.completed += ok

    async def reader() -> None:
        async with get_client() as client:
            while not done.is_set():
                tally.requests += 1
                try:
                    await client.read_flow_runs(limit=50)
                    await client.read_task_runs(limit=50)
                    tally.requests += 1
                except Exception as exc:
                    tally.error(exc)

    async def progress(every: float = 15.0) -> None:
        tick = time.monotonic()
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), every)
            except TimeoutError:
                print(
                    f"  {tally.finished}/{runs} flow runs driven, {tally.requests:,} requests, "
                    f"{tally.failed:,} refused ({time.monotonic() - tick:.0f}s)",
                    flush=True,
                )

    with temporary_settings({PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}):
        read = [asyncio.create_task(reader()) for _ in range(readers)]
        shown = asyncio.create_task(progress())
        await asyncio.gather(*(runner() for _ in range(clients)))
        done.set()
        await asyncio.gather(*read, shown)
    return tally


def measure(database: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with Server(database, work) as server:
        tick = time.monotonic()
        tally = asyncio.run(_load(server.url, args.clients, args.runs, args.tasks, args.readers))
        wall = time.monotonic() - tick
        locked_log = server.locked_in_log()
    writes = sorted(tally.write_s)
    return {
        "database": database,
        "requests": tally.requests,
        "failed": tally.failed,
        "locked": max(tally.locked, locked_log),
        "errors": tally.errors,
        "completed": tally.completed,
        "runs": args.runs,
        "p50_s": statistics.median(writes) if writes else float("nan"),
        "p99_s": writes[max(0, int(len(writes) * 0.99) - 1)] if writes else float("nan"),
        "wall_s": wall,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32, help="concurrent flow-run clients")
    p.add_argument("--runs", type=int, default=160, help="flow runs in all")
    p.add_argument("--tasks", type=int, default=5, help="task runs per flow run")
    p.add_argument("--readers", type=int, default=8, help="clients listing runs meanwhile")
    p.add_argument(
        "--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres"
    )
    return p


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="slmops-bench-prefect-db-"))
    os.chmod(work, 0o755)  # PostgreSQL runs as its own user when we are root: it must get in
    print(
        f"{args.clients} clients x {args.runs} flow runs ({args.tasks} tasks each), "
        f"{args.readers} readers; logs in {work}",
        flush=True,
    )
    rows = []
    for database in args.databases.split(","):
        print(f"measuring {database} ...", flush=True)
        rows.append(measure(database.strip(), args, work))
    keys = ("requests", "failed", "locked", "completed", "p50_s", "p99_s", "wall_s")
    print(f"{'database':>9} " + " ".join(f"{k:>10}" for k in keys) + "  errors")
    for row in rows:
        cells = " ".join(
            f"{row[k]:>10.3f}" if isinstance(row[k], float) else f"{row[k]:>10}" for k in keys
        )
        print(f"{row['database']:>9} {cells}  {row['errors'] or '-'}")
    if len(rows) == 2:
        a, b = rows
        print(
            f"{b['database']} / {a['database']}: p50 {b['p50_s'] / a['p50_s']:.2f}x, p99 "
            f"{b['p99_s'] / a['p99_s']:.2f}x, wall {b['wall_s'] / a['wall_s']:.2f}x"
        )
    return rows


if __name__ == "__main__":
    main()
