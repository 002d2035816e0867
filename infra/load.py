"""A bounded client load: threads calling a server in a loop while something changes under
them (a promotion, a rollback, a base roll, a router's weights), and every request's start,
latency and outcome. The one load the demo (through the OpenAI client, infra.openai_load), the
tests and the router benchmark use.

    with Load(lambda thread: lambda n: client.chat("support-bot", ask(n)), threads=2) as load:
        ...change the serving...
    load.summary()   # sent, answered, failed (by error), p50 and p99 latency

Bounded: `threads` clients, at most `max_requests` requests and `max_seconds` each. Loopback
servers only. Standard library only: it runs on vLLM's interpreter as well as the project's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# (request number, 1-based across threads) -> the reply; raising means the request failed
Send = Callable[[int], str]


@dataclass(frozen=True)
class Record:
    """One request: when it was sent (time.perf_counter), how long it took, and what came
    back (the reply) or why not (the error)."""

    number: int
    start: float
    seconds: float
    reply: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Load:
    """`threads` clients (`client(i)` makes thread i's `Send`, e.g. with its own connection)
    sending requests until the block ends, `max_requests` are sent or `max_seconds` pass.
    An exception of a `failure` type counts the request failed; any other ends that thread
    (a bug in the caller, not a server's answer)."""

    def __init__(
        self,
        client: Callable[[int], Send],
        threads: int,
        *,
        max_requests: int = 20_000,
        max_seconds: float = 1800.0,
        failure: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    ):
        self.client, self.max_requests, self.failure = client, max_requests, failure
        self.deadline = time.monotonic() + max_seconds
        self.sent = 0
        self.records: list[Record] = []
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def _run(self, i: int) -> None:
        send = self.client(i)
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
                number = self.sent
            t0 = time.perf_counter()
            try:
                reply, error = send(number), None
            except self.failure as exc:
                reply, error = None, f"{type(exc).__name__}: {str(exc)[:160]}"
            record = Record(number, t0, time.perf_counter() - t0, reply, error)
            with self.lock:
                self.records.append(record)

    @property
    def done(self) -> int:
        """Requests that came back, answered or failed."""
        return len(self.records)

    @property
    def failed(self) -> list[Record]:
        return [r for r in self.records if not r.ok]

    def keep_up(self, done: int, timeout: float = 120.0) -> None:
        """Go on until `done` requests have come back (those in flight through a change
        among them), or `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.done < done and time.monotonic() < deadline:
            time.sleep(0.2)

    def wait(self) -> None:
        """Until every thread has stopped (the bounds reached, or `stop` set)."""
        for t in self.threads:
            while t.is_alive():
                t.join(0.2)

    def summary(self) -> dict[str, Any]:
        """What the clients saw: requests sent, answered, failed (by error), latency."""
        ok = sorted(r.seconds for r in self.records if r.ok)
        errors: dict[str, int] = {}
        for r in self.failed:
            errors[r.error or "?"] = errors.get(r.error or "?", 0) + 1

        def pct(q: float) -> float | None:
            return round(1000 * ok[min(len(ok) - 1, int(q * len(ok)))], 1) if ok else None

        return {
            "threads": len(self.threads),
            "sent": self.sent,
            "answered": len(ok),
            "failed": sum(errors.values()),
            "errors": errors,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        }

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
