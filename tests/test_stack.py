"""The local stack end to end: real Prefect server, process worker, S3 server and a vLLM
replica on loopback.

Starts the stack, deploys prefect.yaml to it, runs deployments through the worker against the
stack's S3 store (a base-model release ends with the new adapter served by vLLM), and stops it
again, leaving processes it did not start alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.stack import (
    Component,
    LocalStack,
    StackConfig,
    _pid_cmdline,
    _port_open,
    prefect_api,
)
from slmops.evaluation import find_verdict, load_suites
from slmops.manifest import Manifest
from slmops.models import WatchedModel, current_revision
from slmops.promotion import serving_name
from slmops.serving import VLLMClient, load_serving_config
from slmops.store.s3 import S3Store
from slmops.versions import VersionedArtifact
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Iterator[LocalStack]:
    config = StackConfig(
        state_dir=tmp_path_factory.mktemp("stack"),
        prefect_port=free_port(),
        s3_port=free_port(),
        vllm=1,
        vllm_port=free_port(),
        model_dir=tiny_base,
        project_dir=ROOT,
    )
    local = LocalStack(config, log=lambda m: None)
    try:
        local.up()
        yield local
    finally:
        local.down()


def client_env(stack: LocalStack) -> dict[str, str]:
    return {**os.environ, **stack.config.client_env()}


def test_up_is_healthy_and_idempotent(stack: LocalStack) -> None:
    health = stack.health()
    assert {name: state for name, (state, _) in health.items()} == {
        "s3": "running",
        "prefect": "running",
        "worker": "running",
        "vllm-0": "running",
    }
    serving = load_serving_config(stack.config.serving_file)
    (replica,) = serving.replicas
    assert replica.url == f"http://127.0.0.1:{stack.config.vllm_port}"
    assert replica.model == "tiny-llama"
    assert (
        replica.revision
        == current_revision(
            WatchedModel(name="tiny-llama", source=str(stack.config.model_dir))
        ).revision
    )
    assert stack.config.client_env()["SLMOPS_SERVING"] == str(stack.config.serving_file)
    pids = {name: comp.pid for name, (_, comp) in health.items() if comp}
    again = stack.up()
    assert {name: comp.pid for name, comp in again.items()} == pids


@pytest.fixture(scope="module")
def deployed(stack: LocalStack) -> LocalStack:
    """prefect.yaml deployed to the stack's server, as a user would: `prefect deploy --all`."""
    deploy = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env=client_env(stack),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    return stack


def run_deployment(stack: LocalStack, name: str, params: str | None = None) -> str:
    """Run a deployment on the worker, wait for it to finish; returns the worker's log."""
    extra = ["--params", params] if params else []
    run = subprocess.run(
        [PREFECT, "deployment", "run", name, *extra, "--watch", "--watch-timeout", "300"],
        cwd=ROOT,
        env=client_env(stack),
        capture_output=True,
        text=True,
        timeout=360,
    )
    worker_log = Path(stack.health()["worker"][1].log).read_text()  # type: ignore[union-attr]
    assert run.returncode == 0, run.stdout + run.stderr + worker_log[-4000:]
    assert "Completed" in run.stdout
    return worker_log


def stack_store(stack: LocalStack) -> S3Store:
    return S3Store(stack.config.bucket, endpoint_url=stack.config.s3_url, region="us-east-1")


def test_deployment_runs_on_the_worker_against_the_stack_store(deployed: LocalStack) -> None:
    art = VersionedArtifact(stack_store(deployed), "adapters", "verify-me")
    version = art.publish(
        Manifest(kind="adapter", name="verify-me"), {"adapter_model.safetensors": b"w"}
    ).version
    art.set_alias("champion", version)
    worker_log = run_deployment(deployed, "verify-store/daily")
    assert "1 versions checked in s3://slmops, 0 with problems" in worker_log


def test_ingest_deployment_builds_an_index_in_the_stack_store(deployed: LocalStack) -> None:
    run_deployment(deployed, "ingest-docs/hourly")
    manifest = VersionedArtifact(stack_store(deployed), "indexes", "support-docs").resolve("latest")
    assert manifest.metrics["documents"] >= 56
    assert manifest.metrics["retrieval.curated.hit_rate@5"] >= 0.9
    assert manifest.trigger.type == "manual" and manifest.trigger.flow_run_id


@pytest.mark.timeout(1800)  # trains 300 steps on the worker: 3-8 minutes on 2 cores
def test_a_base_model_release_triggers_refine_tune_through_an_event(
    deployed: LocalStack, tiny_base: Path
) -> None:
    """watcher -> slmops.base-model.released -> automation -> refine-tune on the worker."""
    import json
    import time

    params = json.dumps({"params": {"models": [{"name": "tiny-llama", "source": str(tiny_base)}]}})
    revision = current_revision(WatchedModel(name="tiny-llama", source=str(tiny_base))).revision
    run_deployment(deployed, "watch-base-model/every-15-minutes", params)
    store = stack_store(deployed)
    art = VersionedArtifact(store, "adapters", "support-bot")
    deadline = time.time() + 900
    while art.get_alias("latest") is None and time.time() < deadline:
        time.sleep(3)
    worker_log = Path(deployed.health()["worker"][1].log).read_text()  # type: ignore[union-attr]
    assert art.get_alias("latest") is not None, worker_log[-5000:]
    manifest = art.resolve("latest")
    base = next(i for i in manifest.inputs if i.kind == "base-model")
    assert base.version == revision and base.name == "tiny-llama"
    assert manifest.trigger.type == "event" and manifest.trigger.id
    assert manifest.metrics["json_valid"] >= 0.9
    # refine-tune -> eval-gate: the first adapter has no champion, so floors only; it passes.
    while find_verdict(store, "support-bot", manifest.version, None) is None:
        assert time.time() < deadline + 300, worker_log[-5000:]
        time.sleep(3)
    verdict = find_verdict(store, "support-bot", manifest.version, None)
    assert verdict is not None and verdict.passed, verdict and verdict.reasons
    assert art.resolve("challenger").version == manifest.version
    # -> promote-adapter (the policy says auto_promote; the worker has SLMOPS_SERVING): the
    # adapter is the champion and the replica answers through the stable name.
    while art.get_alias("champion") is None:
        assert time.time() < deadline + 400, worker_log[-5000:]
        time.sleep(3)
    assert art.resolve("champion").version == manifest.version
    replica = load_serving_config(deployed.config.serving_file).replicas[0]
    with VLLMClient(replica) as client:
        served = client.adapters()
        name = serving_name("support-bot", manifest)
        assert served["support-bot"] == served[name]
        # A golden prompt of the format suite, as the promotion's smoke test asked it.
        case = load_suites(ROOT / "examples/support-bot/evals").suite_cases("format")[0]
        answer = client.chat("support-bot", case.messages)
    assert json.loads(answer)["answer"], answer

    # Watching again finds nothing new: no event, no second training run.
    second = run_deployment(deployed, "watch-base-model/every-15-minutes", params)
    assert "already seen" in second
    # Barrier: the watcher's process sends its events in order, so once the second run's own
    # Completed event is on the server, a release event it emitted would be there too.
    run_id = last_flow_run_id(deployed, "every-15-minutes")
    wait_for_event(deployed, "prefect.flow-run.Completed", f"prefect.flow-run.{run_id}")
    assert len(events(deployed, "slmops.base-model.released")) == 1
    seen = json.loads(store.get_bytes("models/tiny-llama/revisions.json"))
    assert [r["revision"] for r in seen["revisions"]] == [revision]
    assert flow_runs(deployed, "on-base-model-release") == 1


@pytest.mark.timeout(1800)  # two runs, each gated against the champion on 2 cores
def test_two_deployments_training_one_key_at_once_train_it_once(
    deployed: LocalStack, tiny_base: Path
) -> None:
    """The release event's deployment and the weekly one, started together on the same base
    revision, data and config: exactly one trains and publishes; both return its adapter."""
    import json

    params = json.dumps(
        {
            "params": {
                "model": "tiny-llama",
                "source": str(tiny_base),
                "adapter": "support-bot",
                "dataset": "examples/support-bot/train.jsonl",
                "config": {"max_steps": 12, "save_steps": 6},  # a new training key
            }
        }
    )
    art = VersionedArtifact(stack_store(deployed), "adapters", "support-bot")
    before = set(art.versions())
    champion = art.get_alias("champion")  # the released adapter, if promoted by the test above
    runs = [
        start_deployment(deployed, "refine-tune/on-base-model-release", params),
        start_deployment(deployed, "refine-tune/weekly", params),
    ]
    states = [wait_for_flow_run(deployed, run_id) for run_id in runs]
    worker_log = Path(deployed.health()["worker"][1].log).read_text()  # type: ignore[union-attr]
    assert states == ["COMPLETED", "COMPLETED"], worker_log[-5000:]
    new = set(art.versions()) - before
    assert len(new) == 1, new  # one adapter version, not two
    [version] = new
    manifest = art.manifest(version)
    assert manifest.metrics["steps"] == 12
    assert "already trained for these inputs" in worker_log
    # 12 steps teach nothing: the gate fails it (against the champion, if there is one), and
    # neither the challenger nor the champion moves to it.
    against = champion.version if champion else None
    failed = find_verdict(stack_store(deployed), "support-bot", version, against)
    assert failed is not None and not failed.passed
    assert any(r.startswith("format.valid:") for r in failed.reasons), failed.reasons
    assert art.resolve("challenger").version != version
    assert art.resolve("latest").version == version  # latest: the newest trained, gated or not
    now = art.get_alias("champion")
    assert (now.version if now else None) == against
    claim = json.loads(
        stack_store(deployed).get_bytes(
            f"adapters/support-bot/claims/{manifest.config['training_key']}.json"
        )
    )
    assert claim["released"] is True


def api(stack: LocalStack, path: str, body: dict[str, object] | None = None) -> object:
    return prefect_api(stack.config.prefect_api_url, path, body)


def start_deployment(stack: LocalStack, name: str, params: str) -> str:
    """Create a run of a deployment (the worker picks it up); returns the flow run id."""
    flow_name, deployment = name.split("/")
    found = api(stack, f"deployments/name/{flow_name}/{deployment}")
    assert isinstance(found, dict)
    import json

    run = api(
        stack, f"deployments/{found['id']}/create_flow_run", {"parameters": json.loads(params)}
    )
    assert isinstance(run, dict)
    return str(run["id"])


def wait_for_flow_run(stack: LocalStack, run_id: str, timeout: float = 1200) -> str:
    deadline = time.time() + timeout
    state = "PENDING"
    while time.time() < deadline:
        run = api(stack, f"flow_runs/{run_id}")
        assert isinstance(run, dict)
        state = run["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return str(state)
        time.sleep(2)
    return f"still {state} after {timeout:.0f}s"


def last_flow_run_id(stack: LocalStack, deployment: str) -> str:
    runs = api(
        stack,
        "flow_runs/filter",
        {
            "deployments": {"name": {"any_": [deployment]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            "sort": "EXPECTED_START_TIME_DESC",
            "limit": 1,
        },
    )
    assert isinstance(runs, list) and runs
    return str(runs[0]["id"])


def events(stack: LocalStack, name: str, resource: str | None = None) -> list[dict[str, object]]:
    """Events of one name the server has received (the last day's)."""
    from datetime import UTC, datetime, timedelta

    event_filter: dict[str, object] = {
        "event": {"name": [name]},
        "occurred": {"since": (datetime.now(UTC) - timedelta(days=1)).isoformat()},
    }
    if resource:
        event_filter["resource"] = {"id": [resource]}
    page = api(stack, "events/filter", {"filter": event_filter, "limit": 50})
    assert isinstance(page, dict)
    return list(page["events"])


def wait_for_event(stack: LocalStack, name: str, resource: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not events(stack, name, resource):
        assert time.time() < deadline, f"no {name} event for {resource} in {timeout:.0f}s"
        time.sleep(1)


def flow_runs(stack: LocalStack, deployment: str) -> int:
    """How many runs a deployment has had (scheduled future runs are not counted)."""
    runs = api(
        stack,
        "flow_runs/filter",
        {
            "deployments": {"name": {"any_": [deployment]}},
            "flow_runs": {"state": {"type": {"not_any_": ["SCHEDULED"]}}},
        },
    )
    assert isinstance(runs, list)
    return len(runs)


def test_nothing_is_lost_across_down_and_up(stack: LocalStack) -> None:
    store = stack_store(stack)
    art = VersionedArtifact(store, "datasets", "kept")
    version = art.publish(Manifest(kind="dataset", name="kept"), {"train.jsonl": b"{}\n"}).version
    art.set_alias("latest", version)
    _, etag = store.read_versioned("datasets/kept/aliases/latest.json")
    stored = sum(1 for _ in store.list_objects(""))

    stack.down()
    stack.up()
    store = stack_store(stack)
    art = VersionedArtifact(store, "datasets", "kept")
    assert sum(1 for _ in store.list_objects("")) == stored
    assert art.resolve("latest").version == version and art.verify(version).ok
    assert store.read_versioned("datasets/kept/aliases/latest.json")[1] == etag


def test_down_stops_only_what_up_started(stack: LocalStack) -> None:
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    try:
        ports = (stack.config.prefect_port, stack.config.s3_port)
        assert set(stack.down()) == {"vllm-0", "worker", "prefect", "s3"}
        deadline = time.time() + 15
        while any(_port_open(p) for p in ports) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_port_open(p) for p in ports)
        assert {s for s, _ in stack.health().values()} == {"stopped"}

        # The state file names the bystander's pid, as if a stale entry's pid had been reused
        # by another program: its command line differs, so down must leave it alone.
        stale = Component("s3", bystander.pid, ["moto-server", "--gone"], "/dev/null")
        stack._save({"s3": stale})
        assert stack.down() == []
        assert bystander.poll() is None, "down stopped a process it did not start"
        # Recorded with its real command line, the same process is ours, and down stops it.
        ours = Component("s3", bystander.pid, _pid_cmdline(bystander.pid) or [], "/dev/null")
        stack._save({"s3": ours})
        assert stack.down() == ["s3"]
        bystander.wait(timeout=30)
        assert stack.down() == []  # nothing left: idempotent
    finally:
        bystander.kill()
