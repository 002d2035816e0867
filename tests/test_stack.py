"""The local stack end to end: real Prefect server, process worker, S3 server and a vLLM
replica on loopback.

Starts the stack, deploys prefect.yaml to it, runs deployments through the worker against the
stack's S3 store (a base-model release ends with the new adapter served by vLLM), and stops it
again, leaving processes it did not start alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.prefect_runs import prefect_api
from infra.processes import _pid_cmdline, _port_open
from infra.stack import Component, LocalStack, StackConfig
from infra.vllm_server import threads_per_replica
from slmops.base_models import WatchedModel, current_revision
from slmops.errors import SlmopsError
from slmops.evaluation.verdicts import find_verdict
from slmops.serving.client import VLLMClient, load_serving_config
from slmops.serving.router import HAProxyRuntime
from slmops.serving.staging import serving_name
from slmops.store.manifest import Manifest
from slmops.store.s3 import S3Store
from slmops.store.versions import VersionedArtifact
from tests.helpers import (
    EVALS,
    ROOT,
    TEST_RECIPE,
    free_port,
    share_session_adapter,
    subset_suites,
)

PREFECT = str(Path(sys.executable).parent / "prefect")

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    """What `make demo` keeps under .slmops/: the stack's state and the base model folder
    (r1 = the session's tiny model; the demo publishes r2 into it)."""
    home = tmp_path_factory.mktemp("home")
    # The stack's Prefect server keeps its state in PostgreSQL, which runs as the `postgres`
    # user when the tests run as root: it must be able to pass through to the state folder.
    for folder in (home, *home.parents):
        folder.chmod(folder.stat().st_mode | 0o001)
    shutil.copytree(tiny_base, home / "models" / "tiny-llama")
    return home


@pytest.fixture(scope="module")
def stack(home: Path) -> Iterator[LocalStack]:
    config = StackConfig(
        state_dir=home / "stack",
        prefect_port=free_port(),
        s3_port=free_port(),
        database="postgres",  # for concurrent runs (the default, sqlite: make demo)
        postgres_port=free_port(),
        vllm=1,
        vllm_port=free_port(),
        router_port=free_port(),
        model_dir=home / "models" / "tiny-llama",
        project_dir=ROOT,
    )
    start, log = time.time(), (home / "stack.log").open("a", buffering=1)

    def note(message: str) -> None:  # kept for a person to read afterwards, with times
        log.write(f"[{time.time() - start:7.1f}s] {message}\n")

    local = LocalStack(config, log=note)
    try:
        local.up()
        yield local
    finally:
        local.down()
        log.close()


def client_env(stack: LocalStack) -> dict[str, str]:
    return {**os.environ, **stack.config.client_env()}


def replica_pid(stack: LocalStack) -> int:
    """The pid of the vLLM replica serving.yaml names first."""
    url = load_serving_config(stack.config.serving_file).replicas[0].url
    return next(c.pid for _, c in stack.health().values() if c is not None and c.url == url)


def test_up_is_healthy_and_idempotent(stack: LocalStack) -> None:
    health = stack.health()
    assert {name: state for name, (state, _) in health.items()} == {
        "s3": "running",
        "postgres": "running",
        "prefect": "running",
        "worker": "running",
        "router": "running",
        "vllm-0": "running",
    }
    # the Prefect server keeps its state in PostgreSQL, not in a SQLite file
    prefect = health["prefect"][1]
    assert prefect is not None
    environ = Path(f"/proc/{prefect.pid}/environ").read_bytes().split(b"\0")
    assert any(
        v.startswith(b"PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://") for v in environ
    )
    assert not list((stack.state_dir / "prefect").glob("*.db"))
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
    # one replica set, the revision's, behind the router: the stable name's address
    assert replica.set_name == replica.revision[:12]
    assert list(stack.replica_sets()) == [replica.set_name]
    assert serving.router is not None and serving.router.url == stack.config.router_url
    assert HAProxyRuntime(serving.router.admin).shares() == {replica.set_name: 100.0}
    with VLLMClient(replica.model_copy(update={"url": serving.router.url})) as client:
        assert client.base_models() == ["tiny-llama"]
    # the replica's threads leave room for a roll's second set: no more threads than cores
    environ = Path(f"/proc/{replica_pid(stack)}/environ").read_bytes().split(b"\0")
    threads = threads_per_replica(2 * stack.config.vllm)
    assert f"OMP_NUM_THREADS={threads}".encode() in environ, threads
    assert stack.config.client_env()["SLMOPS_SERVING"] == str(stack.config.serving_file)
    pids = {name: comp.pid for name, (_, comp) in health.items() if comp}
    again = stack.up()
    assert {name: comp.pid for name, comp in again.items()} == pids


@pytest.fixture(scope="module")
def release_policy(home: Path) -> Path:
    """The example's gate policy without its guards (floors and comparisons) on declining off-topic
    questions and on citing a retrieved doc: what this module tests is the loop around a passing
    verdict (the roll, the claim, the promotion), and neither rate of the tiny model survives a
    warm start reliably: on the base before the list of sources, retrains differed by 0.1-0.25
    on 33-40 cases, as much as the 0.25-0.28 margins those suites resolve (r2 against r1,
    seeds 42 / 1 / 2: pass; refuses -0.15 and cites -0.12; cites -0.27); on today's base one
    demo's r2 differed on 1-7 cases per suite, too few runs to put the guards back
    (docs/findings/tiny-model.md, 'Citing is copying'). Every other floor and margin of the example
    policy holds; the example policy's verdicts on the session's adapter are tested in
    test_training, and a candidate that cites no retrieved doc fails by name in
    test_gate_hollow."""
    import yaml

    doc = yaml.safe_load((EVALS / "policy.yaml").read_text())
    for rules in ("floors", "non_inferiority"):
        doc[rules].pop("adversarial.refuses")
        doc[rules].pop("knowledge.cites_retrieved")
    path = home / "release-policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def prefect_file(home: Path, release_policy: Path) -> Path:
    """prefect.yaml as it is, but the training recipe: the suite's short one (the session's
    adapter is trained with it, so the demo's r1 release finds that adapter by its key), and
    the release's gate policy (release_policy)."""
    import yaml

    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    changed = 0
    for deployment in doc["deployments"]:
        if deployment["entrypoint"].startswith("flows/refine_tune.py"):
            for params in [
                deployment["parameters"]["params"],
                *(t["parameters"]["params"] for t in deployment.get("triggers", [])),
            ]:
                assert set(params["config"]) <= set(TEST_RECIPE), params["config"]
                params["config"] = dict(TEST_RECIPE)
                params["policy"] = str(release_policy)
                changed += 1
    assert changed == 3  # the release trigger, the release deployment's form, the weekly run
    path = home / "prefect.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def deployed(stack: LocalStack, prefect_file: Path) -> LocalStack:
    """prefect.yaml deployed to the stack's server, as a user would: `prefect deploy --all`."""
    deploy = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
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


def undocumented(schema: dict[str, Any]) -> list[str]:
    """Fields of a deployment's parameter schema (nested models included) that a person
    fills in from the UI's run form and that have no description."""
    defs = schema.get("definitions", {})
    missing: list[str] = []
    seen: set[str] = set()

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            own = [str(node["$ref"]).split("/")[-1]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    def walk(props: dict[str, Any], where: str) -> None:
        for name, prop in props.items():
            if not prop.get("description"):
                missing.append(f"{where}.{name}")
            for ref in refs(prop):
                if ref not in seen:
                    seen.add(ref)
                    walk(defs[ref].get("properties", {}), ref)

    walk(schema.get("properties", {}), "parameters")
    return missing


def test_every_parameter_of_the_run_forms_is_described(deployed: LocalStack) -> None:
    """What the Prefect UI's "Run" form shows, read back from the API, nested fields too."""
    deployments = api(deployed, "deployments/filter", {})
    assert isinstance(deployments, list) and len(deployments) >= 10
    found = api(deployed, "flows/filter", {})
    assert isinstance(found, list)
    flows = {f["id"]: f["name"] for f in found}
    missing = {
        f"{flows[d['flow_id']]}/{d['name']}": gaps
        for d in deployments
        if (gaps := undocumented(d["parameter_openapi_schema"]))
    }
    assert missing == {}
    # The check itself finds a field without one.
    assert undocumented(
        {
            "properties": {"params": {"$ref": "#/definitions/P", "description": "d"}},
            "definitions": {"P": {"properties": {"x": {"type": "string"}}}},
        }
    ) == ["P.x"]


@pytest.mark.timeout(3000)  # r2 trains 80 steps on the worker, the rest is the whole loop
def test_the_demo_runs_the_whole_loop(
    deployed: LocalStack, home: Path, trained: tuple[S3Store, Manifest, list[str]]
) -> None:
    """`make demo`'s driver against the stack: docs -> index v1; r1 -> adapter -> gate ->
    vLLM; r2 released -> retrained -> gated against the r1 champion -> replica rolled ->
    promoted; one doc edited -> index v2; assess. Then a second run reuses all of it."""
    store = stack_store(deployed)
    art = VersionedArtifact(store, "adapters", "support-bot")
    # r1's adapter is the session's (trained once per session), stored with its training-key
    # lookup as refine-tune stores it: the r1 release finds it instead of training again.
    source_store, r1_adapter, _ = trained
    r1_stored = share_session_adapter(source_store, r1_adapter, store, home / "r1-adapter")
    model_dir = home / "models" / "tiny-llama"
    r1 = current_revision(WatchedModel(name="tiny-llama", source=str(model_dir))).revision

    def demo(*args: str) -> str:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "examples.demo",
                "--home",
                str(home),
                "--prefect-file",
                str(home / "prefect.yaml"),
                *args,
            ],
            cwd=ROOT,
            env=client_env(deployed),
            capture_output=True,
            text=True,
            timeout=2700,
        )
        runs = len(list(home.glob("demo-*.log"))) + 1  # kept for a person to read afterwards
        (home / f"demo-{runs}.log").write_text(run.stdout + run.stderr)
        worker_log = Path(deployed.health()["worker"][1].log).read_text()  # type: ignore[union-attr]
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:] + worker_log[-3000:]
        return run.stdout

    # The scheduled watcher fires first (as its cron does right after a deploy): it announces
    # r1, and the release event starts refine-tune before the demo gets to step 2. The demo
    # must find that run by its revision and follow it, not wait for one of its own.
    scheduled = start_deployment(
        deployed,
        "watch-base-model/every-15-minutes",
        json.dumps({"params": {"models": [{"name": "tiny-llama", "source": str(model_dir)}]}}),
    )
    assert wait_for_flow_run(deployed, scheduled) == "COMPLETED"

    out = demo("--quick-assess", "6")

    # 1. the scheduled run's release was followed, not raced: one refine-tune run for r1
    # completed. The demo finds it by its revision, or, when that run has already gated and
    # promoted the session's adapter by the time the demo reaches step 2 (the index exists:
    # an earlier test of this module built it), finds its champion. (The scheduled run can
    # also fail first: its adapter is found trained at once and gated before the demo's step 1
    # built the index; the demo then runs it again with the same parameters, training nothing.)
    assert (
        f"refine-tune for {r1[:12]} exists already" in out
        or f"exists (base {r1[:12]}): reused" in out
    ), out
    r1_runs = [r for r in release_runs(deployed) if r["parameters"]["params"]["revision"] == r1]
    states = sorted(r["state_type"] for r in r1_runs)
    assert states in (["COMPLETED"], ["COMPLETED", "FAILED"]), r1_runs
    if "FAILED" in states:
        assert "running it again with the same parameters" in out, out

    # 2. three questions asked the base model before training, then answered through the
    # stable name, each with retrieved sources (and one more after r2 is promoted)
    assert "Before tuning: the base model (tiny-llama)" in out, out
    assert out.count("tiny-llama (") == 3 and out.count("support-bot (") == 4, out
    assert out.count("retrieved: ") == 7, out
    # 3. r2 is the champion: retrained on the worker (not the session's adapter), gated
    # against the r1 champion on r1's weights, promoted after the replica rolled onto r2.
    r2 = current_revision(WatchedModel(name="tiny-llama", source=str(model_dir))).revision
    assert r2 != r1
    champion = art.resolve("champion")
    base = next(i for i in champion.inputs if i.kind == "base-model")
    assert base.version == r2 and champion.trigger.type == "event"
    previous = art.get_alias("champion").history[-1].version  # type: ignore[union-attr]
    assert previous == r1_stored.version  # the session's adapter, found, not retrained
    # r2 started from the r1 champion's weights (the recipe's warm start): 80 steps, not 300
    assert ("adapter", previous) in {(i.kind, i.version) for i in champion.inputs}
    assert champion.metrics["steps"] == TEST_RECIPE["warm_start_steps"]
    assert f"warm start from the champion {previous}" in out, out
    verdict = find_verdict(store, "support-bot", champion.version, previous)
    assert verdict is not None and verdict.passed, verdict and verdict.reasons
    # r2's replica set started beside r1's, took the traffic through the router, and r1's was
    # retired: serving.yaml and the stack have r2's set alone, and it takes every request
    (replica,) = load_serving_config(deployed.config.serving_file).replicas
    assert replica.revision == r2 and replica.set_name == r2[:12]
    assert list(deployed.replica_sets()) == [r2[:12]]
    assert f"replica set {r1[:12]} retired" in out, out
    admin = load_serving_config(deployed.config.serving_file).router.admin  # type: ignore[union-attr]
    assert HAProxyRuntime(admin).shares() == {r2[:12]: 100.0}
    # ... under load from a real OpenAI client through the router, none of whose requests
    # failed (before sets and a router, the roll restarted the replica: 10,149 failed)
    record = json.loads((home / "demo" / "record.json").read_text())
    roll = record["roll"]
    assert roll["client"].startswith("openai ") and roll["failed"] == 0, roll
    assert roll["answered"] == roll["sent"] > 0, roll
    assert re.search(r"the stable name under load meanwhile .* \d+ answered, 0 failed", out), out
    # the set serving the champion's base cannot be retired, nor one the stack does not have
    with pytest.raises(SlmopsError, match="serves the base revision of support-bot's champion"):
        deployed.retire(r2[:12])
    with pytest.raises(SlmopsError, match=f"no replica set '{r1[:12]}'"):
        deployed.retire(r1[:12])
    with VLLMClient(replica) as client:
        served = client.adapters()
        assert served["support-bot"] == served[serving_name("support-bot", champion)]
        assert serving_name("support-bot", r1_stored) not in served  # r1's cannot run on r2
    latency = record["latency"]
    parts = ("training", "gate", "promotion", "orchestration", "other")
    assert latency["total"] == pytest.approx(sum(latency[p] for p in parts))
    assert latency["training"] > 0 and latency["gate"] > 0 and latency["promotion"] > 0
    assert "release -> serving:" in out
    # 4. the edited doc alone was re-embedded
    index = VersionedArtifact(store, "indexes", "support-docs")
    v2 = index.resolve("latest").metrics
    assert v2["docs_changed"] == 1 and v2["docs_unchanged"] == v2["documents"] - 1, v2
    assert 0 < v2["chunks_embedded"] < v2["chunks_reused"]
    # 5. the assessment is stored with its recommendation
    assessed = VersionedArtifact(store, "evals", "assess-support-bot").resolve("latest")
    assert "fine-tuning" in str(assessed.metrics["recommendation"])
    # 6. where to look
    assert f"Prefect UI: http://127.0.0.1:{deployed.config.prefect_port}" in out

    # Watching again finds nothing new: no event, no training run.
    second = run_deployment(
        deployed,
        "watch-base-model/every-15-minutes",
        json.dumps({"params": {"models": [{"name": "tiny-llama", "source": str(model_dir)}]}}),
    )
    assert "already seen" in second
    # Barrier: the watcher's process sends its events in order, so once the second run's own
    # Completed event is on the server, a release event it emitted would be there too.
    run_id = last_flow_run_id(deployed, "every-15-minutes")
    wait_for_event(deployed, "prefect.flow-run.Completed", f"prefect.flow-run.{run_id}")
    assert len(events(deployed, "slmops.base-model.released")) == 2  # r1 and r2, once each
    seen = json.loads(store.get_bytes("models/tiny-llama/revisions.json"))
    assert [r["revision"] for r in seen["revisions"]] == [r1, r2]
    # r1 (and its first try, when the scheduled run failed and the demo ran it again), r2
    assert flow_runs(deployed, "on-base-model-release") == 2 + states.count("FAILED")

    # A second run reuses everything: no new adapter or index version, nothing trained.
    versions = (set(art.versions()), set(index.versions()))
    again = demo("--no-assess")
    assert (set(art.versions()), set(index.versions())) == versions
    assert "reused" in again and "nothing changed" in again
    assert "unchanged: not deployed again" in again  # the deployments are all still there
    assert again.count("retrieved: ") == 6  # the base model, then the champion


def test_a_release_of_the_model_card_alone_keeps_the_replica_and_the_champion(
    stack: LocalStack, home: Path
) -> None:
    """A new revision with the same weights digest: `stack up` moves serving.yaml onto it and
    restarts nothing, and the champion (trained on the revision before) stays servable."""
    from examples.tiny_base.build import publish_release
    from slmops.base_models import weights_digest
    from slmops.serving.placement import base_mismatch

    model_dir = home / "models" / "tiny-llama"
    before = load_serving_config(stack.config.serving_file).replicas[0]
    pid = replica_pid(stack)
    publish_release(model_dir, 3, steps=0)  # the model card changes, the weights do not
    r3 = current_revision(WatchedModel(name="tiny-llama", source=str(model_dir))).revision
    assert r3 != before.revision
    stack.up()
    assert replica_pid(stack) == pid
    serving = load_serving_config(stack.config.serving_file)
    replica = serving.replicas[0]
    assert replica.revision == r3 and replica.weights == weights_digest(model_dir)
    assert replica.weights == before.weights
    assert "kept running" in (home / "stack.log").read_text()
    champion = VersionedArtifact(stack_store(stack), "adapters", "support-bot").get_alias(
        "champion"
    )
    with VLLMClient(replica) as client:
        assert client.base_models() == ["tiny-llama"]  # answering, not restarting
        if champion is not None:  # promoted by the demo test, when it ran first
            art = VersionedArtifact(stack_store(stack), "adapters", "support-bot")
            assert base_mismatch(serving, art.manifest(champion.version), "champion") is None
            assert "support-bot" in client.adapters()  # the stable name never went away


def test_a_release_with_new_weights_moves_no_replica_until_rolled(
    stack: LocalStack, home: Path, tmp_path: Path
) -> None:
    """New weights in the model folder: `stack up` keeps the replicas on the revision
    serving.yaml names (the champion's adapter would not load on the new one), however often
    it runs; only `roll` moves them. (A second `make demo` after a release whose gate failed
    took the stable name down before: it restarted the replica onto the new revision.)"""
    import shutil

    from examples.tiny_base.build import publish_release

    model_dir = home / "models" / "tiny-llama"
    before = load_serving_config(stack.config.serving_file).replicas[0]
    pid = replica_pid(stack)
    shutil.copytree(model_dir, tmp_path / "kept")
    try:
        publish_release(model_dir, 4, steps=2)  # new weights
        r4 = current_revision(WatchedModel(name="tiny-llama", source=str(model_dir))).revision
        stack.up()
        assert replica_pid(stack) == pid
        replica = load_serving_config(stack.config.serving_file).replicas[0]
        assert (replica.revision, replica.weights) == (before.revision, before.weights)
        assert (
            f"the model folder is at revision {r4[:12]}; the vLLM replicas keep serving "
            in (home / "stack.log").read_text()
        )
        with VLLMClient(replica) as client:
            assert client.base_models() == ["tiny-llama"]
    finally:  # the module's later tests expect the folder at the revision served
        shutil.rmtree(model_dir)
        shutil.copytree(tmp_path / "kept", model_dir)


@pytest.mark.timeout(1800)  # two runs, each gated against the champion on 2 cores
def test_two_deployments_training_one_key_at_once_train_it_once(
    deployed: LocalStack, tiny_base: Path, home: Path
) -> None:
    """The release event's deployment and the weekly one, started together on the same base
    revision, data and config: exactly one trains and publishes; both return its adapter."""
    # The gate on the format suite alone: an adapter of 12 steps never stops talking, and
    # the whole suites would take minutes to tell what 40 format cases tell.
    suites = subset_suites(home / "format-suite", ["format"])
    policy = home / "format-policy.yaml"
    policy.write_text("floors:\n  format.valid: 0.95\nnon_inferiority:\n  format.valid: 0.13\n")
    params = json.dumps(
        {
            "params": {
                "model": "tiny-llama",
                "source": str(tiny_base),
                "adapter": "support-bot",
                "dataset": "examples/support-bot/train.jsonl",
                "config": {"max_steps": 12, "save_steps": 6},  # a new training key
                "suites": str(suites),
                "policy": str(policy),
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
    challenger = art.get_alias("challenger")  # another test's adapter, or none when run alone
    assert challenger is None or challenger.version != version
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


def release_runs(stack: LocalStack) -> list[dict[str, Any]]:
    runs = api(
        stack,
        "flow_runs/filter",
        {"deployments": {"name": {"any_": ["on-base-model-release"]}}, "limit": 50},
    )
    assert isinstance(runs, list)
    return runs


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
    stored = {o.key: o.etag for o in store.list_objects("")}

    stack.down()
    stack.up()
    store = stack_store(stack)
    art = VersionedArtifact(store, "datasets", "kept")
    now = {o.key: o.etag for o in store.list_objects("")}
    # Every object is still there, unchanged. (Scheduled runs the restarted worker picks up,
    # e.g. serve-sync every 5 minutes, may add audit entries and renew claims meanwhile.)
    assert set(stored) <= set(now)
    changed = [k for k, e in stored.items() if now[k] != e and "/claims/" not in k]
    assert changed == []
    assert art.resolve("latest").version == version and art.verify(version).ok
    assert store.read_versioned("datasets/kept/aliases/latest.json")[1] == etag


def test_up_settles_the_runs_a_stopped_worker_left(stack: LocalStack) -> None:
    """What `up` does before starting a worker, on a pool of its own (the stack's worker
    keeps its pool): a run whose process is gone is Crashed and frees its deployment's
    concurrency slot; of the scheduled runs that fell due meanwhile the latest is kept."""
    from datetime import UTC, datetime, timedelta

    def iso(minutes_ago: float) -> str:
        return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()

    def state(run_id: str) -> tuple[str, str]:
        run = api(stack, f"flow_runs/{run_id}")
        assert isinstance(run, dict)
        return run["state_type"], run["state_name"]

    def slots(deployment: dict[str, Any]) -> int:
        limits = api(stack, "v2/concurrency_limits/filter", {"limit": 200})
        assert isinstance(limits, list)
        [limit] = [c for c in limits if c["name"] == f"deployment:{deployment['id']}"]
        return int(limit["active_slots"])

    api(stack, "work_pools/", {"name": "stranded", "type": "process"})
    flow = api(stack, "flows/", {"name": "stranded-flow"})
    assert isinstance(flow, dict)

    def deployment(name: str, limit: int | None) -> dict[str, Any]:
        body = {"name": name, "flow_id": flow["id"], "work_pool_name": "stranded"}
        made = api(stack, "deployments/", {**body, "concurrency_limit": limit})
        assert isinstance(made, dict)
        return made

    def run(dep: dict[str, Any], minutes_ago: float = 0, key: str | None = None) -> str:
        body: dict[str, Any] = {"idempotency_key": key} if key else {}
        if minutes_ago:
            scheduled = {"scheduled_time": iso(minutes_ago)}
            body["state"] = {"type": "SCHEDULED", "name": "Scheduled", "state_details": scheduled}
        made = api(stack, f"deployments/{dep['id']}/create_flow_run", body)
        assert isinstance(made, dict)
        return str(made["id"])

    def start(run_id: str, pid: int) -> None:
        for kind in ("PENDING", "RUNNING"):  # through orchestration: PENDING takes the slot
            body: dict[str, object] = {"state": {"type": kind, "name": kind.title()}}
            api(stack, f"flow_runs/{run_id}/set_state", body)
        prefect_api(
            stack.config.prefect_api_url,
            f"flow_runs/{run_id}",
            {"infrastructure_pid": str(pid)},
            method="PATCH",
        )

    sync, train = deployment("every-5-minutes", 1), deployment("manual", None)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stranded = run(sync)
    start(stranded, int(gone.stdout))
    assert state(stranded) == ("RUNNING", "Running") and slots(sync) == 1
    alive, reused = run(train), run(train)
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={**os.environ, "PREFECT__FLOW_RUN_ID": alive},
    )
    try:
        start(alive, process.pid)
        start(reused, process.pid)  # a pid now running another flow run is not this run's
        due = [run(sync, m, f"scheduled {sync['id']} schedule {m}") for m in (20, 15, 10)]
        by_hand = run(sync, 30)

        settled = stack.reconcile_runs(pool="stranded")

        assert state(stranded) == ("CRASHED", "Crashed") and state(reused)[0] == "CRASHED"
        assert state(alive) == ("RUNNING", "Running")
        assert slots(sync) == 0  # the next run of every-5-minutes can start
        assert [state(r) for r in due] == [("CANCELLED", "Skipped")] * 2 + [
            ("SCHEDULED", "Scheduled")
        ]
        assert state(by_hand) == ("SCHEDULED", "Scheduled")
        assert len(settled.crashed) == 2 and len(settled.skipped) == 2
        assert stack.reconcile_runs(pool="stranded") == type(settled)()  # settled once
    finally:
        process.kill()


def test_down_stops_only_what_up_started(stack: LocalStack) -> None:
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    try:
        ports = (stack.config.prefect_port, stack.config.s3_port)
        stopped = set(stack.down())
        assert {"router", "worker", "prefect", "s3"} < stopped
        assert {n for n in stopped if n.startswith("vllm-")} == {
            f"vllm-{p - stack.config.vllm_port}"
            for rs in stack.replica_sets().values()
            for p in rs.ports
        }
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


def test_the_openai_client_load_counts_every_request_that_fails(tmp_path: Path) -> None:
    """The load the demo's roll is judged by: pointed at a port nothing listens on, every
    request it sent is counted failed, by kind (so its "0 failed" during the roll means
    something)."""
    from infra.openai_load import LoadFromOpenAIClient

    with LoadFromOpenAIClient(
        f"http://127.0.0.1:{free_port()}", "support-bot", tmp_path / "l.json"
    ) as load:
        time.sleep(2)
    summary = load.summary
    assert summary["client"].startswith("openai ")
    assert summary["sent"] > 0 and summary["answered"] == 0
    assert summary["failed"] == summary["sent"], summary
    assert any("Connection" in kind for kind in summary["errors"]), summary
