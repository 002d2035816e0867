"""The local stack end to end: real Prefect server, process worker and S3 server on loopback.

Starts the stack, deploys prefect.yaml to it, runs a deployment through the worker against the
stack's S3 store, and stops it again, leaving processes it did not start alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.stack import LocalStack, StackConfig, _port_open
from slmops.manifest import Manifest
from slmops.models import WatchedModel, current_revision
from slmops.store.s3 import S3Store
from slmops.versions import VersionedArtifact
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig(
        state_dir=tmp_path_factory.mktemp("stack"),
        prefect_port=free_port(),
        s3_port=free_port(),
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
    }
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
    art = VersionedArtifact(stack_store(deployed), "adapters", "support-bot")
    version = art.publish(
        Manifest(kind="adapter", name="support-bot"), {"adapter_model.safetensors": b"w"}
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
    deadline = time.time() + 420
    while art.get_alias("latest") is None and time.time() < deadline:
        time.sleep(3)
    worker_log = Path(deployed.health()["worker"][1].log).read_text()  # type: ignore[union-attr]
    assert art.get_alias("latest") is not None, worker_log[-5000:]
    manifest = art.resolve("latest")
    base = next(i for i in manifest.inputs if i.kind == "base-model")
    assert base.version == revision and base.name == "tiny-llama"
    assert manifest.trigger.type == "event" and manifest.trigger.id
    assert manifest.metrics["json_valid"] >= 0.9

    # Watching again finds nothing new: no event, no second training run.
    run_deployment(deployed, "watch-base-model/every-15-minutes", params)
    time.sleep(15)  # longer than emit -> flow start (8-12 s) if an event had gone out
    seen = json.loads(store.get_bytes("models/tiny-llama/revisions.json"))
    assert [r["revision"] for r in seen["revisions"]] == [revision]
    assert flow_runs(deployed, "on-base-model-release") == 1


def flow_runs(stack: LocalStack, deployment: str) -> int:
    """How many runs a deployment has had (scheduled future runs are not counted)."""
    import json
    import urllib.request

    body = json.dumps(
        {
            "deployments": {"name": {"any_": [deployment]}},
            "flow_runs": {"state": {"type": {"not_any_": ["SCHEDULED"]}}},
        }
    ).encode()
    req = urllib.request.Request(
        f"{stack.config.prefect_api_url}/flow_runs/filter",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return len(json.loads(resp.read()))


def test_down_stops_only_what_up_started(stack: LocalStack) -> None:
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    try:
        ports = (stack.config.prefect_port, stack.config.s3_port)
        assert set(stack.down()) == {"worker", "prefect", "s3"}
        deadline = time.time() + 15
        while any(_port_open(p) for p in ports) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_port_open(p) for p in ports)
        assert {s for s, _ in stack.health().values()} == {"stopped"}
        assert bystander.poll() is None, "down stopped a process it did not start"
        assert stack.down() == []  # nothing left: idempotent
    finally:
        bystander.kill()
