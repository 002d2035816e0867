"""Progress of long work as lines a log can hold: one at each tenth of the way per stage, so
a run's log shows how far it is without a line per item."""

from __future__ import annotations

import time
from collections.abc import Callable

Log = Callable[[str], None]  # where a step's progress lines go


class Tenths:
    """Says when work crosses into a new tenth (10%, 20%, ...), once per tenth and stage; with
    `every_s`, also when that long has passed since the stage's last line (slow work on a
    busy machine is never silent for longer)."""

    def __init__(self, *, from_zero: bool = False, every_s: float | None = None) -> None:
        self._start = -1 if from_zero else 0  # from_zero: a line at 0% as well
        self._shown: dict[str, int] = {}
        self._every_s = every_s
        self._said: dict[str, float] = {}

    def crossed(self, done: int, of: int | None, stage: str = "") -> bool:
        """True the first time `done` of `of` reaches a tenth not reported for `stage`, or
        (with `every_s`) when the stage's last line is that old."""
        if not of:
            return False
        now = time.monotonic()
        tenth = 10 * done // of
        last = self._said.setdefault(stage, now)
        due = self._every_s is not None and now - last >= self._every_s and done < of
        if tenth > self._shown.get(stage, self._start) or due:
            self._shown[stage] = max(tenth, self._shown.get(stage, self._start))
            self._said[stage] = now
            return True
        return False
