"""The local stack: a Prefect server, a process work pool + worker, an S3 server and, when
asked (`--vllm N`), N vLLM replicas serving the tiny base model with runtime LoRA loading, all
on loopback.

The S3 server (`infra/s3_server.py`, moto's S3 with its buckets mirrored to
`<state_dir>/s3-data/`) keeps every object across `down` and `up`, and across a crash.

`up` starts what is not already running (idempotent), records each process it started in
`<state_dir>/stack.json` with its command line, and writes logs under `<state_dir>/logs/`.
`down` stops only processes recorded there, and only if their command line still matches
(a pid reused by another program is left alone). The worker is stopped before its server.
With vLLM replicas, `up` also runs a router (HAProxy) in front of them, the stable name's
address, and writes `<state_dir>/serving.yaml` (the replica sets, the base revision each
serves, the router, the shared adapter folder); `stack env` points SLMOPS_SERVING at it.
Replicas are grouped in sets, one per base revision: after a base-model release `up --roll`
starts the new revision's set beside the serving one, a promotion moves the traffic to it by
router weights, and `retire` stops the old set once it takes none (blue/green).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.prefect_runs import RunsSettled, settle_runs
from infra.processes import (
    HOST,
    _bin,
    _http_ok,
    _is_ours,
    _pid_cmdline,
    _port_open,
    _stop_group,
)
from slmops.errors import SlmopsError

if TYPE_CHECKING:
    from infra.replica_sets import ReplicaSets

WORK_POOL = "slmops-local"
S3_BUCKET = "slmops"
# The local S3 server accepts any credentials; these are placeholders, not secrets.
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "slmops-local",
    "AWS_SECRET_ACCESS_KEY": "slmops-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}
QUIET_PREFECT_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


class StackError(SlmopsError):
    """A component of the local stack failed to start or stop."""


def require_stack_extra() -> None:
    """The S3 server comes from the `stack` extra (moto's server); say so if it is missing."""
    import importlib.util

    missing = [m for m in ("moto", "flask", "werkzeug") if importlib.util.find_spec(m) is None]
    if missing:
        raise StackError(
            f"the local stack needs {', '.join(missing)}, from the 'stack' extra: "
            "pip install 'slmops[stack]' (make setup installs it)"
        )


@dataclass
class Component:
    name: str
    pid: int
    cmdline: list[str]
    log: str
    url: str | None = None
    started_at: float = field(default_factory=time.time)
    set: str = ""  # a vLLM replica's replica set


@dataclass
class ReplicaSet:
    """vLLM replicas serving one base revision (a copy of its folder), on their own ports."""

    name: str
    revision: str  # what serving.yaml says they serve (a model-card release moves it on)
    weights: str  # the weights digest of `snapshot`
    snapshot: str  # the folder the replicas were started on
    ports: list[int]


@dataclass
class StackConfig:
    state_dir: Path
    prefect_port: int = 4200
    # The Prefect server's database: "sqlite" (a file in the state folder) or "postgres" (a
    # real PostgreSQL server on postgres_port, its data in the state folder; `make postgres`).
    database: str = "sqlite"
    postgres_port: int = 5442
    s3_port: int = 9000
    pool: str = WORK_POOL
    bucket: str = S3_BUCKET
    vllm: int = 0  # vLLM replicas to run
    # OpenMP threads per replica; 0 = the cores shared by twice the replicas (a roll runs a
    # second set beside the serving one), at least 1: more threads than cores stall them all.
    vllm_threads: int = 0
    vllm_port: int = 8100  # the first replica's port; the next ones (and sets) count up
    router_port: int = 8098  # the router in front of the replicas: the stable name's address
    model_dir: Path = Path(".slmops/models/tiny-llama")  # what the replicas serve
    served_model: str = "tiny-llama"
    # Another base-model source instead of the folder (e.g. gguf-package://...: the replicas
    # serve its converted folder); empty = model_dir, the tiny model built when missing.
    model_source: str = ""
    # The checkout: the S3 server runs as `python -m infra.s3_server` from it (infra/ is a
    # folder of the checkout, not an installed package), and model_dir is relative to it.
    project_dir: Path = field(default_factory=lambda: Path(__file__).resolve().parent.parent)

    @classmethod
    def load(cls, state_dir: Path) -> StackConfig:
        """The config a stack in `state_dir` was started with, or the defaults."""
        config = cls(state_dir=state_dir)
        state = state_dir / "stack.json"
        if state.exists():
            try:
                saved = json.loads(state.read_text()).get("config", {})
            except (OSError, ValueError):
                saved = {}
            for key in _SAVED:
                if key in saved:
                    setattr(config, key, saved[key])
            if "model_dir" in saved:
                config.model_dir = Path(saved["model_dir"])
        return config

    @property
    def source(self) -> str:
        """The base-model source the replicas serve (the watcher and refine-tune take it)."""
        return self.model_source or str((self.project_dir / self.model_dir).absolute())

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def router_url(self) -> str:
        return f"http://{HOST}:{self.router_port}"

    @property
    def router_dir(self) -> Path:
        return self.state_dir.absolute() / "router"

    @property
    def router_admin(self) -> str:
        """The router's admin socket (infra.haproxy.write_config puts it in router_dir)."""
        return f"unix:{self.router_dir / 'router.sock'}"

    @property
    def serving_file(self) -> Path:
        return self.state_dir.absolute() / "serving.yaml"

    def client_env(self) -> dict[str, str]:
        """What a shell (or the worker) needs to use this stack: `eval $(slmops stack env)`."""
        env = {
            "PREFECT_API_URL": self.prefect_api_url,
            "SLMOPS_STORE": f"s3://{self.bucket}",
            "SLMOPS_S3_ENDPOINT_URL": self.s3_url,
            **LOCAL_AWS_ENV,
            **QUIET_PREFECT_ENV,
        }
        if self.vllm:
            env["SLMOPS_SERVING"] = str(self.serving_file)
        return env


_SAVED = (
    "prefect_port",
    "database",
    "postgres_port",
    "s3_port",
    "pool",
    "bucket",
    "vllm",
    "vllm_threads",
    "vllm_port",
    "router_port",
    "served_model",
    "model_source",
)


class LocalStack:
    """Start, inspect and stop the stack that `StackConfig` describes."""

    def __init__(self, config: StackConfig, log: Callable[[str], None] = print):
        self.config = config
        self.state_dir = config.state_dir.absolute()
        self.state_file = self.state_dir / "stack.json"
        self.s3_data = self.state_dir / "s3-data"
        self.postgres_dir = self.state_dir / "postgres"
        self.log = log

    # -- state ------------------------------------------------------------------------------
    def _raw(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {}
        try:
            raw = json.loads(self.state_file.read_text())
        except (OSError, ValueError) as exc:
            raise StackError(
                f"stack state {self.state_file} is unreadable ({exc}); stop the "
                "processes it lists by hand and delete it"
            ) from exc
        return raw if isinstance(raw, dict) else {}

    def _load(self) -> dict[str, Component]:
        return {name: Component(**c) for name, c in self._raw().get("components", {}).items()}

    def replica_sets(self) -> dict[str, ReplicaSet]:
        """The vLLM replica sets `up` keeps running, in the order they were started."""
        return {name: ReplicaSet(**rs) for name, rs in self._raw().get("sets", {}).items()}

    def _save(self, comps: dict[str, Component], sets: dict[str, ReplicaSet] | None = None) -> None:
        """Record the components (and the replica sets; None: as recorded)."""
        if sets is None:
            sets = self.replica_sets()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "config": {
                        **{key: getattr(self.config, key) for key in _SAVED},
                        "model_dir": str(self.config.model_dir),
                    },
                    "components": {n: asdict(c) for n, c in comps.items()},
                    "sets": {n: asdict(rs) for n, rs in sets.items()},
                },
                indent=2,
            )
        )
        os.replace(tmp, self.state_file)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.config.client_env())
        env["PREFECT_HOME"] = str(self.state_dir / "prefect")
        return env

    def _spawn(self, name: str, cmd: list[str], url: str | None, env: dict[str, str]) -> Component:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        with open(log_path, "ab") as log_fh:
            proc = subprocess.Popen(
                cmd,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.config.project_dir,
                start_new_session=True,
            )
        # Record the command line as the kernel reports it, to recognise the process later.
        deadline = time.time() + 5
        cmdline = _pid_cmdline(proc.pid)
        while not cmdline and time.time() < deadline:
            time.sleep(0.05)
            cmdline = _pid_cmdline(proc.pid)
        return Component(name, proc.pid, cmdline or cmd, str(log_path), url)

    def _wait(
        self,
        comp: Component,
        ready: Callable[[], bool],
        timeout: float,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        deadline, last_note = time.time() + timeout, time.time()
        while time.time() < deadline:
            if ready():
                return
            if on_wait and time.time() - last_note >= 15:
                last_note = time.time()
                on_wait()
            if not _is_ours(comp):
                tail = Path(comp.log).read_text(errors="replace")[-2000:]
                raise StackError(
                    f"{comp.name} exited during start-up; its log ({comp.log}) ends with:\n{tail}"
                )
            time.sleep(0.5)
        raise StackError(f"{comp.name} did not become ready in {timeout:.0f}s; see {comp.log}")

    # -- health -----------------------------------------------------------------------------
    def _s3_ready(self) -> bool:
        return _port_open(self.config.s3_port) and _http_ok(self.config.s3_url + "/") is not None

    def _postgres_ready(self) -> bool:
        from infra import postgres

        return _port_open(self.config.postgres_port) and postgres.ready(
            self.postgres_dir, self.config.postgres_port
        )

    def _prefect_ready(self) -> bool:
        return _http_ok(self.config.prefect_api_url + "/health") is not None

    def _worker_ready(self) -> bool:
        body = _http_ok(
            f"{self.config.prefect_api_url}/work_pools/{self.config.pool}/workers/filter",
            method="POST",
            body=b"{}",
        )
        return bool(body and json.loads(body))

    def health(self) -> dict[str, tuple[str, Component | None]]:
        """Each component's state: running, unhealthy, stopped (or not started by us)."""
        comps = self._load()
        checks = {
            "s3": self._s3_ready,
            **({"postgres": self._postgres_ready} if self.config.database == "postgres" else {}),
            "prefect": self._prefect_ready,
            "worker": self._worker_ready,
        }
        if self.config.vllm:
            checks["router"] = self.replicas.router_ready
        sets = self.replica_sets()
        ports = [p for rs in sets.values() for p in rs.ports] or [
            self.config.vllm_port + i for i in range(self.config.vllm)
        ]
        for port in ports:
            url = f"http://{HOST}:{port}/health"
            checks[self.replicas.replica_name(port)] = lambda url=url: _http_ok(url) is not None  # type: ignore[misc]
        result: dict[str, tuple[str, Component | None]] = {}
        for name, check in checks.items():
            comp = comps.get(name)
            if comp is None or not _is_ours(comp):
                result[name] = ("stopped", None)
            else:
                result[name] = ("running" if check() else "unhealthy", comp)
        return result

    # -- up / down --------------------------------------------------------------------------
    def up(self, timeout: float = 180, *, roll: bool = False) -> dict[str, Component]:
        """Start whatever is not running; leave running components alone. The vLLM replicas
        keep serving the base revision production's adapters were trained on after the model
        folder moved on to a new release; `roll` starts a replica set on the folder's revision
        beside them (once its adapter passed the gate), which takes no traffic until a
        promotion moves it there."""
        require_stack_extra()
        comps = {n: c for n, c in self._load().items() if _is_ours(c)}
        env = self._env()
        cfg = self.config

        if "s3" not in comps:
            self._refuse_busy_port(cfg.s3_port, "S3 server", "--s3-port")
            self.log(f"starting S3 server on {cfg.s3_url}")
            comp = self._spawn(
                "s3",
                [
                    sys.executable,
                    "-m",
                    "infra.s3_server",
                    "--host",
                    HOST,
                    "--port",
                    str(cfg.s3_port),
                    "--data",
                    str(self.s3_data),
                ],
                cfg.s3_url,
                env,
            )
            comps["s3"] = comp
            self._save(comps)
            self._wait(comp, self._s3_ready, 60)
        self._ensure_bucket()

        # Prefect answers SQLite's "database is locked" with a bare 503 and logs it only when
        # asked to: the stack's log should say why a client was refused.
        server_env = {**env, "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true"}
        # A run queued behind a deployment's concurrency limit (a manual serve-sync while the
        # scheduled one runs) is retried after this many seconds, 30 by default: on one machine
        # that was most of a queued run's wait, the other run long finished.
        server_env["PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS"] = "5"
        if cfg.database == "postgres":
            server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = self._start_postgres(comps)
        elif cfg.database != "sqlite":
            raise StackError(f"database {cfg.database!r}: use sqlite or postgres")
        if "prefect" not in comps:
            self._refuse_busy_port(cfg.prefect_port, "Prefect server", "--prefect-port")
            self.log(
                f"starting Prefect server on {cfg.prefect_api_url} (UI at "
                f"http://{HOST}:{cfg.prefect_port})"
            )
            comp = self._spawn(
                "prefect",
                [
                    _bin("prefect"),
                    "server",
                    "start",
                    "--host",
                    HOST,
                    "--port",
                    str(cfg.prefect_port),
                ],
                f"http://{HOST}:{cfg.prefect_port}",
                server_env,
            )
            comps["prefect"] = comp
            self._save(comps)
        # The replicas do not need Prefect: they start while it does (both spend most of a
        # minute importing, one core each); the router starts at once, its health checks
        # find the replicas when they are ready.
        vllm = self.replicas.start(comps, roll) if cfg.vllm else None
        if vllm is not None:
            self.replicas.start_router(comps, vllm[1], vllm[2], env)
        if not self._prefect_ready():
            self._wait(comps["prefect"], self._prefect_ready, timeout)

        if "worker" not in comps:
            self._ensure_pool(env)
            self.reconcile_runs()
            self.log(f"starting a process worker on pool {cfg.pool!r}")
            worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
            comp = self._spawn(
                "worker",
                [_bin("prefect"), "worker", "start", "--pool", cfg.pool, "--type", "process"],
                None,
                worker_env,
            )
            comps["worker"] = comp
            self._save(comps)
            self._wait(comp, self._worker_ready, timeout)
        if vllm is not None:
            self.replicas.await_ready(*vllm)
        return comps

    def _start_postgres(self, comps: dict[str, Component]) -> str:
        """The PostgreSQL server the Prefect server keeps its state in (initialised once in
        the state folder, started if not running, the database made if missing); its URL."""
        from infra import postgres

        cfg = self.config
        if postgres.initialise(self.postgres_dir):
            self.log(f"initialised a PostgreSQL cluster in {postgres.data_dir(self.postgres_dir)}")
        if "postgres" not in comps:
            self._refuse_busy_port(cfg.postgres_port, "PostgreSQL server", "--postgres-port")
            self.log(f"starting PostgreSQL on {HOST}:{cfg.postgres_port}")
            comp = self._spawn(
                "postgres",
                postgres.command(self.postgres_dir, cfg.postgres_port),
                f"postgresql://{HOST}:{cfg.postgres_port}/{postgres.DATABASE}",
                dict(os.environ),
            )
            comps["postgres"] = comp
            self._save(comps)
            self._wait(comp, self._postgres_ready, 60)
        postgres.ensure_database(self.postgres_dir, cfg.postgres_port)
        return postgres.url(self.postgres_dir, cfg.postgres_port)

    @property
    def replicas(self) -> ReplicaSets:
        """The vLLM replica sets and their router (infra.replica_sets)."""
        from infra.replica_sets import ReplicaSets

        return ReplicaSets(self)

    def retire(self, name: str, *, drain_s: float = 0.0) -> list[str]:
        """Take replica set `name` out of the router and stop it (ReplicaSets.retire)."""
        return self.replicas.retire(name, drain_s=drain_s)

    def _refuse_busy_port(self, port: int, what: str, option: str) -> None:
        if _port_open(port):
            raise StackError(
                f"cannot start the {what}: port {port} on {HOST} is already in use "
                f"by a process this stack did not start. Stop it or pass {option}"
            )

    def _store(self) -> Any:
        """The stack's own S3 store (champions, claims), as an `S3Store`."""
        from slmops.store.s3 import S3Store

        return S3Store(self.config.bucket, client=self._s3_client())

    def _s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.config.s3_url,
            region_name=LOCAL_AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        client = self._s3_client()
        try:
            client.create_bucket(Bucket=self.config.bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise

    def reconcile_runs(self, pool: str | None = None, now: float | None = None) -> RunsSettled:
        """Settle what the last worker left on the pool, before a new worker takes it
        (`infra.prefect_runs.settle_runs`)."""
        return settle_runs(self.config.prefect_api_url, pool or self.config.pool, self.log, now)

    def _ensure_pool(self, env: dict[str, str]) -> None:
        url = f"{self.config.prefect_api_url}/work_pools/{self.config.pool}"
        if _http_ok(url) is not None:
            return
        proc = subprocess.run(
            [_bin("prefect"), "work-pool", "create", self.config.pool, "--type", "process"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0 and _http_ok(url) is None:
            raise StackError(
                f"could not create work pool {self.config.pool!r}:\n{proc.stdout}\n{proc.stderr}"
            )

    def down(self, timeout: float = 30) -> list[str]:
        """Stop what `up` started, worker first; return the names stopped."""
        comps = self._load()
        stopped = []
        replicas = [(n, signal.SIGTERM) for n in sorted(comps) if n.startswith("vllm-")]
        for name, sig in (
            *replicas,
            ("router", signal.SIGUSR1),  # HAProxy's soft stop
            ("worker", signal.SIGINT),
            ("prefect", signal.SIGTERM),
            ("postgres", signal.SIGINT),  # PostgreSQL's fast shutdown
            ("s3", signal.SIGTERM),
        ):
            comp = comps.get(name)
            if comp is None:
                continue
            if _is_ours(comp):
                self.log(f"stopping {name} (pid {comp.pid})")
                # On SIGINT the worker stops taking runs and waits for the ones it started;
                # those are killed with it after a short grace (a training run resumes from
                # its stored checkpoint; Prefect marks the others crashed).
                grace = min(timeout, WORKER_GRACE_S) if name == "worker" else timeout
                if not _stop_group(comp, sig, grace):
                    self.log(f"{name} did not stop in {grace:.0f}s: killed")
                stopped.append(name)
            del comps[name]
            self._save(comps)
        return stopped


# How long `down` lets the worker finish the flow runs it started before it is killed.
WORKER_GRACE_S = 10.0
