"""A bounded load on the stable name from the real OpenAI Python client, for as long as a
change to the serving takes (a base-model roll, a promotion), then what it saw.

    .venv-vllm/bin/python -m infra.openai_load --base-url http://127.0.0.1:8098/v1 \\
        --model support-bot --out load.json
    # ... change the serving ...; then SIGTERM (or SIGINT): it stops, writes load.json

The `openai` package comes with vLLM (its virtualenv has it), so this runs on vLLM's
interpreter; `LoadFromOpenAIClient` starts it from the project's own. The client retries
nothing (`max_retries=0`): every request that does not come back with an answer counts as
failed. Bounded: `--threads` clients, at most `--max-requests` requests and `--max-seconds`,
loopback only.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

QUESTIONS = [
    "How do I forward my support mailbox to Tidewell?",
    "What does error TW-131 mean?",
    "Can a Deckhand reply to customers?",
]


def run(
    base_url: str,
    model: str,
    *,
    threads: int,
    max_requests: int,
    max_seconds: float,
    max_tokens: int,
    stop: threading.Event,
    running: Path | None = None,
) -> dict[str, Any]:
    try:
        import openai  # type: ignore[import-not-found]  # vLLM's interpreter has it
    except ImportError as exc:
        raise SystemExit(
            "the openai package is missing: run this with vLLM's interpreter "
            "(.venv-vllm/bin/python, `make vllm`) or pip install openai"
        ) from exc

    from infra.load import Load

    def client(i: int) -> Callable[[int], str]:
        openai_client = openai.OpenAI(
            base_url=base_url, api_key="unused", max_retries=0, timeout=120
        )

        def send(n: int) -> str:
            reply = openai_client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}],
                max_tokens=max_tokens,
                temperature=0,
            )
            if not reply.choices:
                raise ValueError("no choices in the answer")
            return str(reply.choices[0].message.content)

        return send

    started = time.time()
    # every way a request fails counts, by its kind
    load = Load(client, threads, max_requests=max_requests, max_seconds=max_seconds)
    with load:
        if running is not None:
            running.touch()
        while not stop.is_set() and any(t.is_alive() for t in load.threads):
            time.sleep(0.2)
        load.stop.set()
        load.wait()  # the requests in flight come back (or time out) and count
    return {
        "base_url": base_url,
        "model": model,
        "client": f"openai {openai.__version__}",
        "seconds": round(time.time() - started, 1),
        **load.summary(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8098/v1")
    parser.add_argument("--model", required=True, help="the served name to call")
    parser.add_argument("--out", type=Path, required=True, help="the summary (JSON)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    summary = run(
        args.base_url,
        args.model,
        threads=args.threads,
        max_requests=args.max_requests,
        max_seconds=args.max_seconds,
        max_tokens=args.max_tokens,
        stop=stop,
        running=args.out.with_suffix(".running"),
    )
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(args.out)
    args.out.with_suffix(".running").unlink(missing_ok=True)


class LoadFromOpenAIClient:
    """`with LoadFromOpenAIClient(url, model, out) as load: ...` runs this module on vLLM's
    interpreter for the duration of the block; `load.summary` is what it saw."""

    def __init__(self, router_url: str, model: str, out: Path, threads: int = 2):
        self.args = [
            "--base-url",
            f"{router_url.rstrip('/')}/v1",
            "--model",
            model,
            "--out",
            str(out),
            "--threads",
            str(threads),
        ]
        self.out, self.summary = out, {}  # type: ignore[var-annotated]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LoadFromOpenAIClient:
        from infra.vllm_server import ROOT, vllm_python

        running = self.out.with_suffix(".running")
        self.out.unlink(missing_ok=True)
        running.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [str(vllm_python()), "-m", "infra.openai_load", *self.args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60  # the clients run before the block starts
        while not running.exists() and self.process.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(150)  # requests in flight finish (or time out) first
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.out.exists():
            self.summary = json.loads(self.out.read_text())


if __name__ == "__main__":
    main()
