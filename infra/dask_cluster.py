"""A real Dask cluster on loopback: a scheduler and workers, each a process of its own (each
worker under a nanny that restarts it if it dies), as `dask scheduler` and `dask worker` run
them on several machines. ingest-docs embeds on it when given its address (`cluster`).

    python -m infra.dask_cluster --workers 2      # start one by hand; Ctrl-C stops it

Workers run one task at a time with `threads` torch threads each (the machine's cores divided
among them, at least 1), so two workers on two cores do not fight over them. They need this
checkout importable and the store's settings (SLMOPS_*, AWS_*) and PREFECT_API_URL in their
environment: the shard tasks report to the Prefect server and read and write the store.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from slmops.errors import SlmopsError

ROOT = Path(__file__).resolve().parent.parent


class ClusterError(SlmopsError):
    """The Dask scheduler or its workers did not come up."""


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


@dataclass
class Cluster:
    address: str
    state_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.state_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_workers(self, count: int, timeout: float = 120) -> None:
        """Wait until `count` workers have joined the scheduler."""
        from distributed import Client

        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=timeout) as client:
            while True:
                joined = len(client.scheduler_info(n_workers=-1)["workers"])
                if joined >= count:
                    return
                dead = [n for n, p in self.processes.items() if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    first = dead[0] if dead else "worker-0"
                    raise ClusterError(
                        f"{joined} of {count} Dask workers joined {self.address} in "
                        f"{timeout:.0f}s (exited: {', '.join(dead) or 'none'}). End of "
                        f"{first}'s log ({self.state_dir / first}.log):\n{self.tail(first)}"
                    )
                time.sleep(0.25)

    def stop(self, timeout: float = 20) -> None:
        for proc in reversed(self.processes.values()):  # workers first, the scheduler last
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start(
    state_dir: Path,
    workers: int = 2,
    *,
    port: int,
    threads: int | None = None,
    env: Mapping[str, str] | None = None,
    preload: str | None = None,
    wait: float = 120,
) -> Cluster:
    """Start a scheduler on 127.0.0.1:`port` and `workers` workers; returns once all joined.
    `env` is added to the workers' environment (the store's settings, PREFECT_API_URL);
    `preload` is a module every worker imports at start (dask's --preload)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or threads_per_worker(workers)
    base = {**os.environ, **(env or {})}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    # A nanny sets OMP_NUM_THREADS=1 (and MKL's, OpenBLAS') in its worker, whatever the
    # environment says (dask's distributed.nanny.pre-spawn-environ): one torch thread per worker
    # unless the config says otherwise. Written where DASK_CONFIG points the processes.
    config_dir = state_dir / "dask-config"
    config_dir.mkdir(exist_ok=True)
    per_worker = "\n".join(
        f"      {var}: {threads}"
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    )
    (config_dir / "slmops.yaml").write_text(
        f"distributed:\n  nanny:\n    pre-spawn-environ:\n{per_worker}\n"
    )
    base["DASK_CONFIG"] = str(config_dir)
    address = f"tcp://127.0.0.1:{port}"
    cluster = Cluster(address, state_dir)

    def spawn(name: str, args: list[str], extra: Mapping[str, str]) -> None:
        with open(state_dir / f"{name}.log", "ab") as log:
            cluster.processes[name] = subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=ROOT,
                env={**base, **extra},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    spawn(
        "scheduler",
        [
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
            "--no-show",
        ],
        {},
    )
    try:
        for i in range(workers):
            spawn(
                f"worker-{i}",
                ["distributed.cli.dask_worker", address, "--host", "127.0.0.1"]
                + ["--nthreads", "1", "--nworkers", "1", "--name", f"worker-{i}"]
                + ["--no-dashboard", "--local-directory", str(state_dir / f"worker-{i}")]
                + (["--preload", preload] if preload else []),
                {},
            )
        cluster.wait_workers(workers, timeout=wait)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=8786)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--state-dir", type=Path, default=Path(".slmops/dask"))
    args = parser.parse_args(argv)
    cluster = start(args.state_dir, args.workers, port=args.port, threads=args.threads)
    print(f"Dask cluster at {cluster.address} with {args.workers} workers (logs: {args.state_dir})")
    try:
        while all(p.poll() is None for p in cluster.processes.values()):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
