"""Helpers the test modules share (fixtures live in conftest.py; no test module imports
another): ports and servers, buckets, damaging stored bytes, reading Prefect runs and
artifacts, the CLI runner, the example's paths and the suite's training recipe."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slmops.store.base import ObjectStore
    from slmops.store.manifest import Manifest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "support-bot"
EVALS = EXAMPLE / "evals"

# The training recipe of every adapter the suite trains to a passing quality: the session's
# adapter (conftest `trained`) and the stack's release deployment (test_stack deploys a copy
# of prefect.yaml with it), so the demo's r1 release finds the session's adapter by its
# training key instead of training again. The example's own recipe (prefect.yaml): on the
# pretrained tiny base, 300 steps of 4 rows pass every floor of the example policy.
TEST_RECIPE: dict[str, Any] = {
    "max_steps": 300,
    "batch_size": 4,
    "warm_start_steps": 80,
    "learning_rate": 0.003,
    "rank": 16,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start in {timeout}s")


def make_bucket(endpoint: str) -> str:
    import boto3

    bucket = f"slmops-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return bucket


def corrupt(store: ObjectStore, key: str, data: bytes) -> None:
    """Change stored bytes behind the store's back (bit rot, a bad copy, tampering)."""
    import boto3

    from slmops.store.local import LocalStore
    from slmops.store.s3 import S3Store

    if isinstance(store, LocalStore):
        store.root.joinpath(*key.split("/")).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        raw = boto3.client("s3", endpoint_url=store.endpoint_url)
        full = f"{store.prefix}/{key}"
        meta = raw.head_object(Bucket=store.bucket, Key=full)["Metadata"]
        raw.put_object(Bucket=store.bucket, Key=full, Body=data, Metadata=meta)


async def latest_artifact(key: str) -> str:
    """The newest Prefect artifact with `key`: its data and description."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            limit=1,
            sort="CREATED_DESC",  # type: ignore[arg-type]
        )
    return str(found[0].data) + " " + str(found[0].description)


async def read_task_runs(flow_run_id: object) -> list[Any]:
    """The task runs (Prefect TaskRun objects) of a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return list(
            await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        )


def task_runs(flow_run_id: object) -> list[str]:
    """Names of the task runs a flow run made (e.g. train-adapter-0)."""
    return sorted(str(getattr(r, "name", "")) for r in asyncio.run(read_task_runs(flow_run_id)))


def invoke(*args: str) -> tuple[int, str]:
    """The `slmops` CLI in this process, as a user runs it: (exit code, output)."""
    from typer.testing import CliRunner

    from slmops.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def subset_suites(dest: Path, suites: list[str], per_suite: int = 40) -> Path:
    """A copy of the example's eval suites with only `suites`, each cut to its first
    `per_suite` cases (the adversarial suite has 215): for tests about what happens around
    a gate, where its statistics are not the subject and a full gate would cost minutes."""
    import yaml

    dest.mkdir(parents=True)
    doc = yaml.safe_load((EVALS / "suites.yaml").read_text())
    doc["suites"] = {k: v for k, v in doc["suites"].items() if k in suites}
    for spec in doc["suites"].values():
        lines = (EVALS / spec["cases"]).read_text().splitlines(keepends=True)
        (dest / spec["cases"]).write_text("".join(lines[:per_suite]))
    (dest / doc["schema"]).write_text((EVALS / doc["schema"]).read_text())
    (dest / "suites.yaml").write_text(yaml.safe_dump(doc))
    return dest


def share_session_adapter(
    source: ObjectStore, adapter: Manifest, dest: ObjectStore, work: Path
) -> Manifest:
    """The session's adapter (conftest `trained`) stored in `dest` as refine-tune stores it,
    with its training-key lookup, so refine-tune with the same inputs finds it instead of
    training; and with the answers its gate stored (`answers/`), so a gate on the same cases
    reuses them as it would in the store it was trained in."""
    from slmops.store.versions import ADAPTERS, VersionedArtifact
    from slmops.training.adapters import TRAINING_KEY

    VersionedArtifact(source, ADAPTERS, adapter.name).download(adapter.version, work)
    stored = VersionedArtifact(dest, ADAPTERS, adapter.name).publish(
        adapter, work, lookup={TRAINING_KEY: str(adapter.config["training_key"])}
    )
    for info in source.list_objects("answers/"):
        if not dest.exists(info.key):
            dest.put_bytes(info.key, source.get_bytes(info.key))
    return stored


def validate_k8s(docs: list[dict[str, object]]) -> tuple[int, str]:
    """Run the validators generated from the Kubernetes and Gateway API schemas (make
    k8s-schema) over `docs`: exit code and one line per manifest."""
    import json
    import shutil
    import subprocess

    schema = ROOT / "infra" / "k8s-schema"
    node = shutil.which("node")
    assert node and (schema / "node_modules").is_dir(), "run `make k8s-schema` (node, npm ci)"
    run = subprocess.run(
        [node, str(schema / "validate.mjs")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return run.returncode, run.stdout + run.stderr
