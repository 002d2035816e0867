"""The local stack's processes: the console scripts it starts, whether a recorded pid is still
the process it started, a port or an HTTP endpoint answering, and a process group stopped
(escalating to SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.stack import Component

HOST = "127.0.0.1"


def _bin(name: str) -> str:
    """A console script installed beside this interpreter (the venv's own), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _served_folder(cmdline: list[str]) -> Path | None:
    """The model folder a vLLM replica's command line serves (`--model DIR`), if it exists."""
    if "--model" not in cmdline[:-1]:
        return None
    folder = Path(cmdline[cmdline.index("--model") + 1])
    return folder if (folder / "config.json").is_file() else None


def _pid_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def _is_ours(comp: Component) -> bool:
    """Is the recorded pid still the process we started (not a reused pid)?"""
    return _pid_cmdline(comp.pid) == comp.cmdline


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _http_ok(url: str, *, method: str = "GET", body: bytes | None = None) -> bytes | None:
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return bytes(resp.read()) if resp.status < 300 else None
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def _stop_group(comp: Component, sig: signal.Signals, timeout: float) -> bool:
    """Signal the process group the component leads; escalate to SIGKILL after `timeout`.
    True if the leader stopped by itself."""
    try:
        os.killpg(comp.pid, sig)
    except ProcessLookupError:
        return True
    deadline, stopped = time.time() + timeout, False
    while time.time() < deadline:
        if not _is_ours(comp) or _is_zombie(comp.pid):
            stopped = True
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(comp.pid, signal.SIGKILL)
    # Children of the group (e.g. the server's uvicorn) may outlive the leader briefly.
    try:
        os.killpg(comp.pid, 0)
    except ProcessLookupError:
        return stopped
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(comp.pid, signal.SIGKILL)
    return stopped


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False
