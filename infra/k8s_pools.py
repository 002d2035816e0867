"""Kubernetes work pools for slmops on a cluster: base job templates for GPU training and for
CPU work (ingest, gate, assess, promotion), built on prefect-kubernetes' own default template so
every variable its worker knows keeps working.

    python -m infra.k8s_pools --write          # (re)writes infra/k8s/work-pools/*.json
    prefect work-pool create slmops-gpu-training --type kubernetes \\
        --base-job-template infra/k8s/work-pools/slmops-gpu-training.json

What each adds to the default (a variable takes effect only where the template references it;
`tests/test_k8s_pools.py` checks that every deployment's job variables are referenced):
- both: the store's credentials and settings from a Kubernetes Secret (`store_secret`, every key
  an environment variable: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, SLMOPS_STORE, ...) and CPU
  and memory requests sized for the work;
- GPU training: `gpu_count` GPUs (`nvidia.com/gpu` limits), a node selector for the GPU class
  (`gpu_node_selector`, e.g. the NVIDIA GPU feature discovery's `nvidia.com/gpu.product`),
  the tolerations GPU nodes' taints need, and a memory-backed /dev/shm (`shm_size`: data loader
  workers and NCCL need more than the container default of 64 MB).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POOLS_DIR = ROOT / "infra" / "k8s" / "work-pools"
GPU_POOL, CPU_POOL = "slmops-gpu-training", "slmops-cpu"


def _default() -> dict[str, Any]:
    from prefect_kubernetes.worker import KubernetesWorker

    return copy.deepcopy(KubernetesWorker.get_default_base_job_template())


def _variable(kind: str, default: Any, title: str, description: str, **extra: Any) -> dict:
    return {"type": kind, "default": default, "title": title, "description": description, **extra}


def _container(template: dict[str, Any]) -> dict[str, Any]:
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def _common(template: dict[str, Any], cpu: str, memory: str) -> dict[str, Any]:
    props = template["variables"]["properties"]
    props["store_secret"] = _variable(
        "string",
        "slmops-store",
        "Store secret",
        "A Kubernetes Secret in the job's namespace whose keys become environment variables: "
        "the store's credentials and settings (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "SLMOPS_STORE, SLMOPS_S3_ENDPOINT_URL, ...).",
    )
    props["cpu_request"]["default"] = cpu
    props["memory_request"]["default"] = memory
    _container(template)["envFrom"] = [{"secretRef": {"name": "{{ store_secret }}"}}]
    return template


def gpu_training() -> dict[str, Any]:
    """Refine-tune's training on one or more GPUs of one class."""
    template = _common(_default(), cpu="8", memory="48Gi")
    props = template["variables"]["properties"]
    props["gpu_count"] = _variable(
        "integer", 1, "GPUs", "nvidia.com/gpu devices per training job.", minimum=1
    )
    props["gpu_node_selector"] = {
        **_variable(
            "object",
            {"nvidia.com/gpu.present": "true"},
            "GPU node selector",
            "Labels a node must carry: the GPU class, e.g. "
            '{"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"} (NVIDIA GPU feature '
            "discovery's labels), one pool or deployment per class.",
        ),
        "additionalProperties": {"type": "string"},
    }
    props["gpu_tolerations"] = {
        **_variable(
            "array",
            [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "GPU tolerations",
            "Tolerations for the taints GPU nodes carry (the NVIDIA device plugin's default).",
        ),
        "items": {"type": "object"},
    }
    props["shm_size"] = _variable(
        "string", "16Gi", "Shared memory", "Size of the memory-backed /dev/shm."
    )
    container = _container(template)
    container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_count }}"
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["nodeSelector"] = "{{ gpu_node_selector }}"
    pod["tolerations"] = "{{ gpu_tolerations }}"
    pod["volumes"] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "{{ shm_size }}"}}
    ]
    template["variables"]["description"] = (
        "slmops GPU training: the Kubernetes worker's variables, the store's secret, GPUs of "
        "one class (count, node selector, tolerations) and /dev/shm."
    )
    return template


def cpu_work() -> dict[str, Any]:
    """Ingest, gate, assess, promotion and the watchers: no GPU."""
    template = _common(_default(), cpu="2", memory="8Gi")
    template["variables"]["description"] = (
        "slmops CPU work (ingest, gate, assess, promotion): the Kubernetes worker's variables "
        "and the store's secret."
    )
    return template


TEMPLATES = {GPU_POOL: gpu_training, CPU_POOL: cpu_work}


def write(folder: Path = POOLS_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in TEMPLATES.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def referenced(template: dict[str, Any]) -> set[str]:
    """The variables the job configuration references ({{ name }} placeholders)."""
    import re

    return set(re.findall(r"{{\s*([\w]+)\s*}}", json.dumps(template["job_configuration"])))


async def render(
    template: dict[str, Any], job_variables: dict[str, Any], name: str = "refine-tune"
) -> dict[str, Any]:
    """The Job manifest the Kubernetes worker would create for a flow run of a deployment
    with these job variables (its own configuration class, so what a cluster would get)."""
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config = await KubernetesWorkerJobConfiguration.from_template_and_values(
        template, job_variables
    )
    config.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name=name))
    return config.job_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write them to {POOLS_DIR}")
    args = parser.parse_args()
    if args.write:
        for path in write():
            print(f"wrote {path.relative_to(ROOT)}")
    else:
        print(json.dumps({name: build() for name, build in TEMPLATES.items()}, indent=2))


if __name__ == "__main__":
    main()
