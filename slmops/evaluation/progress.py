"""Progress lines for long evaluations: at least one every 30 s, with how far the work is and
the time left, whatever the entry point (CLI, refine-tune, a flow run's log).

A batch of an 8B model on CPU can take minutes between two progress callbacks, so a
background thread repeats the latest state when nothing else was said for `every` seconds:
a silent screen never means a hung gate.

    with Heartbeat(print, "gate") as beat:
        run(on_progress=beat)          # beat(stage, done, of)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Heartbeat:
    """A `(stage, done, of)` progress callback that says a line at each stage's start, each
    quarter, its end, and whenever `every` seconds passed without a line; it forwards every
    call to `inner`."""

    def __init__(
        self,
        say: Callable[[str], None],
        what: str = "gate",
        *,
        every: float = 30.0,
        inner: Callable[[str, int, int], None] | None = None,
    ):
        self.say, self.what, self.every, self.inner = say, what, every, inner
        self.stage: str | None = None
        self.done = self.of = 0
        self.stage_start = self.last_said = time.monotonic()
        self.quarter = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="progress")

    def __enter__(self) -> Heartbeat:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def line(self) -> str:
        now = time.monotonic()
        spent = now - self.stage_start
        text = f"{self.what}: {self.stage}: {self.done:,}/{self.of:,} answered, {duration(spent)}"
        if 0 < self.done < self.of:
            text += f", about {duration(spent / self.done * (self.of - self.done))} left"
        elif self.done == 0 and self.of and spent >= 5:
            text += " (loading the model, answering the first batch)"
        return text

    def __call__(self, stage: str, done: int, of: int) -> None:
        with self._lock:
            now = time.monotonic()
            if stage != self.stage:
                self.stage, self.stage_start, self.quarter = stage, now, -1
            self.done, self.of = done, of
            quarter = 4 * done // of if of else 4
            if quarter != self.quarter or now - self.last_said >= self.every:
                self.quarter, self.last_said = quarter, now
                self.say(self.line())
        if self.inner is not None:
            self.inner(stage, done, of)

    def _beat(self) -> None:
        while not self._stop.wait(min(self.every, 5.0)):
            with self._lock:
                if self.stage is None or time.monotonic() - self.last_said < self.every:
                    continue
                self.last_said = time.monotonic()
                line = self.line()
            self.say(line)
