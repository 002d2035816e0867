"""A real HAProxy in front of the vLLM replica sets, for the local stack, tests and benchmarks.

    from infra.haproxy import start
    router = start(state_dir, port=8000)          # HAProxy, its backend empty
    router.runtime.add_set("r1", ["http://127.0.0.1:8100"])
    router.runtime.set_shares({"r1": 100})
    # clients call http://127.0.0.1:8000/v1/... ; router.stop()

HAProxy comes from the system's packages (Debian/Ubuntu: `apt-get install haproxy`; `make
router` does it). Sets and weights are changed at run time through the admin socket
(slmops.serving.router): nothing is reloaded. The config file holds the sets given at start,
so a restarted router starts with them.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slmops.errors import SlmopsError
from slmops.serving.router import HAProxyRuntime, config_text

INSTALL_HINT = (
    "HAProxy is not installed: `make router` installs it (Debian/Ubuntu: sudo apt-get install "
    "-y haproxy; macOS: brew install haproxy)"
)


class RouterStartError(SlmopsError):
    """HAProxy is missing or did not start."""


def binary() -> str:
    path = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None
    )
    if path is None:
        raise RouterStartError(INSTALL_HINT)
    return path


@dataclass
class Router:
    process: subprocess.Popen[bytes]
    port: int
    config: Path
    log: Path
    runtime: HAProxyRuntime

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    state_dir: Path,
    port: int,
    sets: Mapping[str, Sequence[str]] | None = None,
    shares: Mapping[str, float] | None = None,
    timeout: float = 15,
) -> Router:
    """Start HAProxy (in the foreground, its own process group) and wait for its admin
    socket."""
    # HAProxy binds with SO_REUSEPORT: a second one on a busy port would silently share it
    # with whatever holds it (an old router would answer half the requests).
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RouterStartError(
                f"port {port} is in use: stop what listens there (an old router?) or choose "
                "another port"
            )
    cfg, sock = write_config(state_dir, port, sets, shares)
    log = state_dir / "router.log"
    with open(log, "ab") as fh:
        process = subprocess.Popen(
            command(cfg),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    router = Router(process, port, cfg, log, HAProxyRuntime(f"unix:{sock}"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RouterStartError(
                f"HAProxy exited at start ({process.returncode}); {log} ends with:\n"
                + log.read_text(errors="replace")[-1500:]
            )
        if sock.exists():
            try:
                router.runtime.servers()
                return router
            except SlmopsError:
                pass
        time.sleep(0.1)
    router.stop()
    raise RouterStartError(f"HAProxy did not open its admin socket {sock} in {timeout:.0f}s")


def write_config(
    state_dir: Path,
    port: int,
    sets: Mapping[str, Sequence[str]] | None = None,
    shares: Mapping[str, float] | None = None,
) -> tuple[Path, Path]:
    """Write `state_dir`/haproxy.cfg (checked with `haproxy -c`) for a router on `port` whose
    admin socket is `state_dir`/router.sock; return both paths."""
    state_dir.mkdir(parents=True, exist_ok=True)
    sock, cfg = state_dir / "router.sock", state_dir / "haproxy.cfg"
    if len(str(sock)) > 100:  # a unix socket's path holds at most 107 bytes
        raise RouterStartError(
            f"the router's admin socket path {sock} is too long for a unix socket (at most "
            "100 characters): use a shorter state folder"
        )
    cfg.write_text(config_text(port, sock, sets, shares))
    check = subprocess.run([binary(), "-c", "-f", str(cfg)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RouterStartError(f"{cfg} is not a valid HAProxy config: {check.stdout[-800:]}")
    sock.unlink(missing_ok=True)
    return cfg, sock


def command(cfg: Path) -> list[str]:
    # -db: foreground, logs to stderr; -W would add a master process (reloads), not needed:
    # nothing here reloads.
    return [binary(), "-db", "-f", str(cfg)]
