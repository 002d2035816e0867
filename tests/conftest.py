"""Shared fixtures: an isolated environment, a real S3 server on loopback, both store backends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# Isolate every test session from the developer's own settings and Prefect profile.
_SESSION_DIR = Path(os.environ.get("SLMOPS_TEST_TMP") or f"/tmp/slmops-tests-{os.getpid()}")
for _var in [v for v in os.environ if v.startswith(("SLMOPS_", "PREFECT_", "AWS_"))]:
    os.environ.pop(_var)
os.environ.update(
    {
        "PREFECT_HOME": str(_SESSION_DIR / "prefect-home"),
        "PREFECT_LOCAL_STORAGE_PATH": str(_SESSION_DIR / "prefect-results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DO_NOT_TRACK": "1",
        "AWS_ACCESS_KEY_ID": "slmops-test",
        "AWS_SECRET_ACCESS_KEY": "slmops-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SLMOPS_STORE": str(_SESSION_DIR / "default-store"),
        "SLMOPS_CACHE_DIR": str(_SESSION_DIR / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
)

from slmops.config import get_settings  # noqa: E402
from slmops.store.base import ObjectStore  # noqa: E402
from slmops.store.local import LocalStore  # noqa: E402
from slmops.store.s3 import S3Store  # noqa: E402
from tests.helpers import free_port, make_bucket, wait_for_port  # noqa: E402

if TYPE_CHECKING:
    from slmops.store.manifest import Manifest


# What makes a test slow is what it needs: the session's trained adapter (minutes of
# training), the vLLM servers (a minute to start). Marked here, so no test can forget.
SLOW_FIXTURES = {"trained", "vllm_replicas"}


def _needs_base(item: pytest.Item) -> bool:
    return "tiny_base" in getattr(item, "fixturenames", ())


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs = set(getattr(item, "fixturenames", ()))
        if needs & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if "vllm_replicas" in needs:
            item.add_marker(pytest.mark.vllm)
        if "s3_endpoint" in needs:
            item.add_marker(pytest.mark.s3)
    # The modules with a test that needs the tiny base run last, each whole (its module
    # fixtures set up once): on a machine that has not built the base yet, it builds in the
    # background while the others run (pytest_collection_finish).
    late = {_module(item) for item in items if _needs_base(item)}
    items[:] = [i for i in items if _module(i) not in late] + [
        i for i in items if _module(i) in late
    ]


# The background build of the tiny base: its process, its log, and why it failed.
_BASE_BUILD: dict[str, Any] = {}


def _reporter(config: pytest.Config) -> Any:
    return config.pluginmanager.get_plugin("terminalreporter")


def _say(config: pytest.Config, line: str) -> None:
    reporter = _reporter(config)
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(line)


def pytest_collection_finish(session: pytest.Session) -> None:
    """When a selected test needs the tiny base and this machine has not built it (minutes
    the first time, then cached by content hash), start its build in a background process at
    low priority: the tests that do not need it run meanwhile, and the first that does waits
    for it before its timeout starts (pytest_runtest_protocol)."""
    if session.config.option.collectonly:
        return
    if not any(_needs_base(item) for item in session.items):
        return
    from examples.tiny_base.build import cache_path, cached_build, is_built, shipped_key

    cached = cache_path(seed=1)
    if not is_built(cached) and shipped_key() == cached.name:
        cached_build(seed=1)  # the build shipped with the example: copied, a second
    if is_built(cached):
        _say(session.config, f"tiny base model: {cached}")
        return
    log = cached.with_name(cached.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-m", "examples.tiny_base.build", "--seed", "1"],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _BASE_BUILD.update(proc=proc, log=log, started=time.monotonic())
    late = {_module(item) for item in session.items if _needs_base(item)}
    first = sum(_module(item) not in late for item in session.items)
    _say(
        session.config,
        f"tiny base model: not built on this machine yet; building it in the background "
        f"(about 11 minutes of 2 cores, once; log: {log}) while the {first} tests of the "
        f"modules that do not need it run first",
    )


def _last_line(log: Path, marker: str) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if marker in line]
    return lines[-1].strip() if lines else ""


def _wait_for_base(config: pytest.Config) -> None:
    proc: subprocess.Popen[bytes] = _BASE_BUILD.pop("proc")
    log: Path = _BASE_BUILD["log"]
    while True:
        try:
            rc = proc.wait(timeout=60)
            break
        except subprocess.TimeoutExpired:
            step = _last_line(log, "step ") or "tokenizer and conversations"
            waited = time.monotonic() - _BASE_BUILD["started"]
            _say(config, f"waiting for the tiny base model's build ({waited:.0f}s in): {step}")
    took = time.monotonic() - _BASE_BUILD["started"]
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        _BASE_BUILD["failed"] = f"the tiny base model's build failed (exit {rc}; {log}):\n{tail}"
        _say(config, f"tiny base model: build FAILED after {took:.0f}s (see {log})")
    else:
        _say(config, f"tiny base model: built in {took:.0f}s in the background")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, Any, None]:
    """The first test that needs the tiny base waits here for its background build, outside
    the test's timeout (pytest-timeout's own wrapper runs inside this one)."""
    if "proc" in _BASE_BUILD and _needs_base(item):
        _wait_for_base(item.config)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed test shows the end of the logs of the vLLM replicas it used (the session's, and
    any in its tmp_path): a replica that stalls or crashes says why there, and CI keeps only
    what pytest prints."""
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    if not report.failed:
        return
    for server in funcargs.get("vllm_replicas") or ():
        report.sections.append((f"end of {server.log}", server.tail(40)))
    tmp = funcargs.get("tmp_path")
    if isinstance(tmp, Path):  # the test's own servers (a replica, a router) log there
        for log in sorted(tmp.glob("*.log"))[:4]:
            lines = log.read_text(errors="replace").splitlines()[-40:]
            report.sections.append((f"end of {log}", "\n".join(lines)))


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) in its own process on loopback."""
    port = free_port()
    log = open(_SESSION_DIR.joinpath("s3-server.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same behavioural suite runs on both backends: a local directory and S3."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(
        make_bucket(endpoint),
        "team/prod",
        endpoint_url=endpoint,
        region="us-east-1",
        multipart_threshold=5 * 2**20,
        part_size=5 * 2**20,
    )


@pytest.fixture
def store_uri_env(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point SLMOPS_STORE (and the S3 endpoint) at `store`, as a user's settings would."""
    monkeypatch.setenv("SLMOPS_STORE", store.uri)
    if isinstance(store, S3Store) and store.endpoint_url:
        monkeypatch.setenv("SLMOPS_S3_ENDPOINT_URL", store.endpoint_url)
    monkeypatch.setenv("SLMOPS_S3_MULTIPART_MB", "5")
    get_settings.cache_clear()
    return store.uri


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server for the whole session (started once: 15-30 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


_SESSION_DIR.mkdir(parents=True, exist_ok=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import shutil

    proc = _BASE_BUILD.pop("proc", None)
    if proc is not None and proc.poll() is None:  # the session ended before a test needed it
        proc.terminate()
        proc.wait(timeout=30)
        _say(session.config, "tiny base model: its background build stopped with the session")
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama base model, copied once per test session from the machine's cache (the
    background build fills it the first time: pytest_collection_finish)."""
    from examples.tiny_base.build import build_tiny_model

    if "failed" in _BASE_BUILD:
        pytest.fail(_BASE_BUILD["failed"], pytrace=False)

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", seed=1)


@pytest.fixture(scope="session")
def vllm_replicas(
    tiny_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[object]]:
    """Two real vLLM servers (CPU build) serving the tiny base model with runtime LoRA
    loading, started once per session (about 70 s for both): replica 0 accepts LoRA rank up
    to 32, replica 1 up to 16 (so one replica can refuse what the other loads)."""
    from infra.vllm_server import start, threads_per_replica, wait_ready

    logs = tmp_path_factory.mktemp("vllm")
    servers = [
        start(
            tiny_base,
            free_port(),
            logs / f"replica-{i}.log",
            served_name="tiny-llama",
            max_lora_rank=rank,
            threads=threads_per_replica(2),
        )
        for i, rank in enumerate((32, 16))
    ]
    try:
        wait_ready(servers, on_wait=lambda note: print(note, flush=True))
        yield list(servers)
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def trained(
    prefect_harness: None,
    tiny_base: Path,
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[S3Store, Manifest, list[str]]]:
    """refine-tune run once per session, as a deployment would, against the S3 store: the
    adapter (the suite's recipe, tests.helpers.TEST_RECIPE) the training, gate, promotion,
    assess and stack tests look at."""
    from flows.refine_tune import RefineTuneParams, refine_tune
    from slmops.pipelines.ingest import run_ingest
    from slmops.training.trainer import TrainConfig
    from tests.helpers import EXAMPLE, TEST_RECIPE, task_runs

    store = S3Store(make_bucket(s3_endpoint), "prod", endpoint_url=s3_endpoint)
    mp = pytest.MonkeyPatch()
    mp.setenv("SLMOPS_S3_ENDPOINT_URL", s3_endpoint)
    from slmops.config import get_settings

    get_settings.cache_clear()
    # The gate after training judges answers with retrieved context: the index it uses.
    run_ingest(
        str(EXAMPLE / "docs"),
        store,
        "support-docs",
        workdir=tmp_path_factory.mktemp("ingest"),
        evaluate=False,
    )
    state = refine_tune(
        RefineTuneParams(
            model="tiny-llama",
            source=str(tiny_base),
            store=store.uri,
            config=TrainConfig(**TEST_RECIPE),
        ),
        return_state=True,
    )
    manifest = state.result()
    yield store, manifest, task_runs(state.state_details.flow_run_id)
    mp.undo()
