"""vLLM replica threads benchmark: replicas sharing one machine's cores, with torch's default
OpenMP threads (every core, per replica) against `threads_per_replica` (the cores divided
among them), measured in the same run.

    python -m benchmarks.vllm_threads                   # 2 replicas of the tiny model, 20 s
    python -m benchmarks.vllm_threads --replicas 1 --seconds 30

Per setting it starts the replicas (the CPU build, as the stack and the tests run them), keeps
2 client threads per replica calling short completions (16 tokens) for `--seconds`, and
meanwhile asks replica 0 three rounds of 3 concurrent 96-token completions (what a promotion's
smoke test asks). Prints time to ready, requests served, p50/p99 of the short ones, the mean and
max of the long ones, and each figure's ratio against the default threads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _measure(base: Path, replicas: int, threads: int | None, seconds: float, work: Path) -> dict:
    import httpx

    from benchmarks import free_port
    from infra.vllm_server import start, wait_ready

    label = f"{threads or 'default'}"
    servers = [
        start(base, free_port(), work / f"{label}-{i}.log", served_name="tiny", threads=threads)
        for i in range(replicas)
    ]
    try:
        t0 = time.monotonic()
        wait_ready(servers)
        ready = time.monotonic() - t0
        stop, short, long = threading.Event(), [], []  # type: ignore[var-annotated]

        def ask(url: str, tokens: int, out: list[float], text: str) -> None:
            with httpx.Client(base_url=url, timeout=600) as client:
                tick = time.monotonic()
                client.post(
                    "/v1/chat/completions",
                    json={
                        "model": "tiny",
                        "messages": [{"role": "user", "content": text}],
                        "max_tokens": tokens,
                        "temperature": 0,
                        "ignore_eos": True,
                    },
                ).raise_for_status()
                out.append(time.monotonic() - tick)

        def load(url: str) -> None:
            while not stop.is_set():
                ask(url, 16, short, "Where is my order? It has not arrived yet.")

        clients = [
            threading.Thread(target=load, args=(s.url,), daemon=True)
            for s in servers
            for _ in range(2)
        ]
        for t in clients:
            t.start()
        started = time.monotonic()
        for i in range(3):
            smoke = [
                threading.Thread(
                    target=ask, args=(servers[0].url, 96, long, f"Explain refund rule {i}.{j}.")
                )
                for j in range(3)
            ]
            for t in smoke:
                t.start()
            for t in smoke:
                t.join()
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        stop.set()
        for t in clients:
            t.join(timeout=120)
        elapsed = time.monotonic() - started
        short.sort()
        return {
            "threads": label,
            "ready_s": ready,
            "requests_per_s": len(short) / elapsed,
            "p50_s": statistics.median(short),
            "p99_s": short[max(0, int(len(short) * 0.99) - 1)],
            "long_mean_s": statistics.mean(long),
            "long_max_s": max(long),
        }
    finally:
        for server in servers:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="base model folder (default: the tiny one)")
    parser.add_argument("--replicas", type=int, default=2, help="replicas on this machine")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per setting")
    args = parser.parse_args(argv)

    from examples.tiny_base.build import cached_build
    from infra.vllm_server import cpu_cores, threads_per_replica

    base = args.base or cached_build(seed=1)
    work = Path(tempfile.mkdtemp(prefix="slmops-bench-threads-"))
    ours = threads_per_replica(args.replicas)
    print(f"{args.replicas} replica(s) on {cpu_cores()} core(s); logs in {work}", flush=True)
    rows: list[dict[str, Any]] = []
    for threads in (None, ours):
        print(f"measuring threads={threads or 'default'} ...", flush=True)
        rows.append(_measure(base, args.replicas, threads, args.seconds, work))
    baseline = rows[0]
    keys = ("ready_s", "requests_per_s", "p50_s", "p99_s", "long_mean_s", "long_max_s")
    print(f"{'threads':>8} " + " ".join(f"{k:>14}" for k in keys))
    for row in rows:
        print(f"{row['threads']:>8} " + " ".join(f"{row[k]:>14.3f}" for k in keys))
    print(
        f"{'ratio':>8} "
        + " ".join(f"{rows[1][k] / baseline[k]:>13.2f}x" for k in keys)
        + "   (threads_per_replica / default)"
    )


if __name__ == "__main__":
    main()
