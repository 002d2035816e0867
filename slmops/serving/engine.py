"""A vLLM server process on loopback: the replica the local stack runs, and the engine the gate
starts for itself when no replicas are configured (`--generator vllm` without a serving config).

vLLM often lives in a virtualenv of its own (its pins differ from the project's): the
interpreter is SLMOPS_VLLM_PYTHON, else `.venv-vllm/bin/python` under the working directory
(`make vllm`), else this interpreter when it has vLLM. On a machine with a GPU the server runs
there in bf16; on CPU (vLLM's CPU build) in fp32, with the CPU build's settings:
- VLLM_TARGET_DEVICE=cpu, so the platform is never mis-detected (AVX512 code on an AVX2
  machine dies with "Illegal instruction");
- VLLM_CPU_OMP_THREADS_BIND=nobind: several replicas on one machine must not pin the same cores.

    with OwnEngine(base_dir, served_name="tiny-llama", revision=rev) as replica:
        ...  # replica.url serves the base, LoRA loading enabled
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from slmops.errors import SlmopsError


class VLLMServerError(SlmopsError):
    """A vLLM server could not be started; the message says why and what to do."""


def engine_python(default: Path | None = None) -> Path:
    """The interpreter that runs vLLM: SLMOPS_VLLM_PYTHON, else `default` (or
    .venv-vllm/bin/python here), else this one if it has vLLM."""
    chosen = os.environ.get("SLMOPS_VLLM_PYTHON")
    if chosen:
        python = Path(chosen)
    else:
        python = default or Path(".venv-vllm/bin/python")
        if not python.exists() and importlib.util.find_spec("vllm") is not None:
            python = Path(sys.executable)
    if not python.exists():
        raise VLLMServerError(
            f"no vLLM interpreter at {python}: run `make vllm` (vLLM's CPU build in .venv-vllm/, "
            "about 3.4 GB), install vllm here, or set SLMOPS_VLLM_PYTHON to a python that has it"
        )
    return python.absolute()


def engine_version(python: Path) -> str:
    """The vLLM version `python` would serve with (its package metadata), without starting it."""
    probe = (
        "from importlib.metadata import version, PackageNotFoundError\n"
        "for name in ('vllm', 'vllm-cpu'):\n"
        "    try:\n"
        "        print(version(name)); break\n"
        "    except PackageNotFoundError:\n"
        "        pass\n"
    )
    out = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    found = out.stdout.strip()
    if out.returncode != 0 or not found:
        raise VLLMServerError(f"{python} has no vLLM installed: {out.stderr.strip()[-300:]}")
    return found


def gpu_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def served_dtype(gpu: bool) -> str:
    """bf16 on a GPU (as models are served), fp32 on CPU (the CPU build's exact path)."""
    return "bfloat16" if gpu else "float32"


def command(
    python: Path,
    model_dir: Path,
    port: int,
    *,
    served_name: str,
    max_lora_rank: int = 16,
    max_loras: int = 4,
    max_model_len: int = 512,
    gpu: bool = False,
) -> list[str]:
    cmd = [
        str(python),
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
        str(max_model_len),
        "--dtype",
        served_dtype(gpu),
        "--enable-prefix-caching",  # the stale-cache hazard of in-place reloads needs it on
    ]
    if not gpu:
        # One worker runs inside the engine process instead of a third process of its own:
        # one import of vLLM and torch less, ready in about 34 s instead of 54 on 2 cores.
        # (vLLM's CPU platform allows it only with VLLM_ENABLE_V1_MULTIPROCESSING=0, which the
        # OpenAI server ignores otherwise: its engine still runs in a process of its own.)
        cmd += ["--distributed-executor-backend", "uni"]
    return cmd


def environment(threads: int | None = None, *, gpu: bool = False) -> dict[str, str]:
    """The server's environment; `threads`: its OpenMP/torch threads (None: torch's default,
    every core, which is right only for a server alone on the machine)."""
    env = {
        **os.environ,
        **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
    }
    if not gpu:
        env.update(
            {
                "VLLM_TARGET_DEVICE": "cpu",
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # see "uni" in command()
            }
        )
    return env


@dataclass
class VLLMServer:
    """One running server: its process, URL and log."""

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
        """Stop the server: SIGTERM (it stops its engine process itself), SIGKILL after
        `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start(
    model_dir: Path,
    port: int,
    log: Path,
    *,
    served_name: str,
    python: Path,
    max_lora_rank: int = 16,
    detach: bool = False,
    threads: int | None = None,
    max_model_len: int = 512,
    gpu: bool = False,
) -> VLLMServer:
    """Start one server in the background (not waiting for it to be ready)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = command(
        python,
        model_dir,
        port,
        served_name=served_name,
        max_lora_rank=max_lora_rank,
        max_model_len=max_model_len,
        gpu=gpu,
    )
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment(threads, gpu=gpu),
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
                f"({time.monotonic() - started:.0f}s; usually 55-85s each on 2 CPU cores)"
            )
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def model_window(model_dir: Path, cap: int = 4096) -> int:
    """The context window to serve: the model's own, at most `cap` (the KV cache of a CPU
    server is 1 GiB)."""
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return 512
    text = config.get("text_config", config)
    return int(min(text.get("max_position_embeddings") or 512, cap))


class OwnEngine:
    """A vLLM server started for one run (the gate's, where no replicas are configured), on a
    free loopback port, stopped when the run ends."""

    def __init__(
        self,
        model_dir: Path,
        *,
        served_name: str,
        max_lora_rank: int = 64,
        say: Callable[[str], None] = lambda _: None,
    ):
        self.model_dir, self.served_name = model_dir, served_name
        self.max_lora_rank, self.say = max_lora_rank, say
        self.gpu = gpu_present()
        self.dtype = served_dtype(self.gpu)
        self.server: VLLMServer | None = None
        self.log = Path(tempfile.mkdtemp(prefix="slmops-engine-")) / "vllm.log"

    def start(self) -> VLLMServer:
        python = engine_python()
        where = "GPU, bf16" if self.gpu else "CPU, fp32"
        self.say(f"starting a vLLM engine for {self.served_name} ({where}); log: {self.log}")
        server = start(
            self.model_dir,
            free_port(),
            self.log,
            served_name=self.served_name,
            python=python,
            max_lora_rank=self.max_lora_rank,
            max_model_len=model_window(self.model_dir),
            gpu=self.gpu,
        )
        self.server = server
        wait_ready([server], on_wait=self.say)
        return server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
