"""Progress of long work as lines a log can hold: one at each tenth of the way per stage, so
a run's log shows how far it is without a line per item."""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]  # where a step's progress lines go


class Tenths:
    """Says when work crosses into a new tenth (10%, 20%, ...), once per tenth and stage."""

    def __init__(self, *, from_zero: bool = False) -> None:
        self._start = -1 if from_zero else 0  # from_zero: a line at 0% as well
        self._shown: dict[str, int] = {}

    def crossed(self, done: int, of: int | None, stage: str = "") -> bool:
        """True the first time `done` of `of` reaches a tenth not reported for `stage`."""
        if not of:
            return False
        tenth = 10 * done // of
        if tenth > self._shown.get(stage, self._start):
            self._shown[stage] = tenth
            return True
        return False
