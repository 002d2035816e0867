"""Kubernetes work pools (infra/k8s/): the base job templates registered on a real Prefect
server, each deployment of infra/k8s/prefect.yaml rendered into the Job the Kubernetes worker
would create and checked against the Kubernetes schema (no cluster needed for that), and the
GPU slot refine-tune holds while it trains (a global concurrency limit on the real server)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import k8s_pools
from tests.helpers import ROOT, validate_k8s

CLUSTER_FILE = ROOT / "infra" / "k8s" / "prefect.yaml"


def cluster_deployments() -> list[dict[str, Any]]:
    return yaml.safe_load(CLUSTER_FILE.read_text())["deployments"]


def test_the_committed_templates_are_what_the_module_builds() -> None:
    for name, build in k8s_pools.TEMPLATES.items():
        committed = json.loads((k8s_pools.POOLS_DIR / f"{name}.json").read_text())
        assert committed == json.loads(json.dumps(build())), (
            f"{name}.json is stale: run python -m infra.k8s_pools --write"
        )


def test_every_job_variable_of_a_cluster_deployment_is_one_its_pool_uses() -> None:
    """A job variable takes effect only where the pool's template references it: one the
    template does not declare, or declares and never uses, is a silent no-op on a cluster."""
    for dep in cluster_deployments():
        pool = dep["work_pool"]
        template = k8s_pools.TEMPLATES[pool["name"]]()
        declared = set(template["variables"]["properties"])
        used = k8s_pools.referenced(template)
        for key in pool.get("job_variables", {}):
            assert key in declared and key in used, (dep["name"], pool["name"], key)
    # the check itself catches one that is not used
    assert "gpu_count" not in k8s_pools.referenced(k8s_pools.cpu_work())


def test_cluster_deployments_name_real_flows_with_parameters_they_accept() -> None:
    from prefect.flows import load_flow_from_entrypoint

    for dep in cluster_deployments():
        flow: Any = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
        flow.validate_parameters(dep["parameters"])
        for trigger in dep.get("triggers", []):  # templated values are strings until then
            flow.validate_parameters(trigger["parameters"])


def test_the_pools_register_on_a_prefect_server_and_their_jobs_pass_the_kubernetes_schema(
    prefect_harness: None,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async def register() -> dict[str, dict[str, Any]]:
        async with get_client() as client:
            for name, build in k8s_pools.TEMPLATES.items():
                await client.create_work_pool(
                    WorkPoolCreate(name=name, type="kubernetes", base_job_template=build()),
                    overwrite=True,
                )
            return {
                name: (await client.read_work_pool(name)).base_job_template
                for name in k8s_pools.TEMPLATES
            }

    stored = asyncio.run(register())
    assert stored == {name: build() for name, build in k8s_pools.TEMPLATES.items()}

    jobs = []
    for dep in cluster_deployments():
        pool = dep["work_pool"]
        job = asyncio.run(
            k8s_pools.render(stored[pool["name"]], pool.get("job_variables", {}), dep["name"])
        )
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "registry.example.com/slmops:latest"
        assert container["envFrom"] == [{"secretRef": {"name": "slmops-store"}}]
        if pool["name"] == k8s_pools.GPU_POOL:
            pod = job["spec"]["template"]["spec"]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
            assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
            assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        else:
            assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
        jobs.append(job)
    code, out = validate_k8s(jobs)
    assert code == 0 and out.count("valid Job") == len(jobs), out
    # the validators catch a broken Job (a GPU count that is not a quantity)
    broken = json.loads(json.dumps(jobs[2]))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = [
        1
    ]
    code, out = validate_k8s([broken])
    assert code == 1 and "INVALID Job" in out, out


def _limit(name: str) -> Any:
    from prefect.client.orchestration import get_client

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_global_concurrency_limit_by_name(name)

    return asyncio.run(read())


@pytest.mark.timeout(600)
def test_refine_tune_waits_for_a_gpu_slot_and_holds_it_while_it_trains(
    prefect_harness: None, tiny_base: Path, tmp_path: Path
) -> None:
    """The class has one slot and something else holds it: refine-tune waits, trains once the
    slot is free, holds it while it trains and gives it back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency

    from flows.refine_tune import RefineTuneParams, refine_tune
    from slmops.store.local import LocalStore
    from slmops.store.versions import ADAPTERS, VersionedArtifact
    from slmops.training.trainer import TrainConfig

    async def create() -> None:
        async with get_client() as client:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name="gpu-test", limit=1)
            )

    asyncio.run(create())
    store = LocalStore(tmp_path / "store")
    params = RefineTuneParams(
        model="tiny-llama",
        source=str(tiny_base),
        store=str(tmp_path / "store"),
        dataset=str(ROOT / "examples" / "support-bot" / "train.jsonl"),
        config=TrainConfig(max_steps=3, save_steps=3, gpu_slot="gpu-test"),
        gate=False,
    )
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["manifest"] = refine_tune(params)
        except BaseException as exc:  # reported by the assertion below
            result["error"] = exc

    seen: list[int] = []
    with concurrency("gpu-test", occupy=1, strict=True):  # another run's training holds it
        flow = threading.Thread(target=run, daemon=True)
        flow.start()
        time.sleep(15)  # long enough for the run to reach training, which must wait
        assert flow.is_alive() and not VersionedArtifact(store, ADAPTERS, "support-bot").versions()
    while flow.is_alive():
        seen.append(_limit("gpu-test").active_slots)
        time.sleep(0.05)
    assert "error" not in result, result.get("error")
    assert result["manifest"].metrics["steps"] == 3
    assert 1 in seen  # it held the slot while it trained ...
    assert _limit("gpu-test").active_slots == 0  # ... and gave it back


def test_a_gpu_slot_with_no_limit_on_the_server_fails_before_training(
    prefect_harness: None, tiny_base: Path, tmp_path: Path
) -> None:
    from flows.refine_tune import RefineTuneParams, refine_tune
    from slmops.training.trainer import TrainConfig

    params = RefineTuneParams(
        model="tiny-llama",
        source=str(tiny_base),
        store=str(tmp_path / "store"),
        dataset=str(ROOT / "examples" / "support-bot" / "train.jsonl"),
        config=TrainConfig(max_steps=3, gpu_slot="gpu-nonesuch"),
        gate=False,
    )
    with pytest.raises(Exception, match="gpu-nonesuch"):
        refine_tune(params)
