"""Claims: at most one run at a time does a piece of work, across machines, through the store.

A claim is a small object (e.g. `adapters/<name>/claims/<training key>.json`) created with a
conditional write, so of two runs that try at once exactly one gets it. It is a lease: the
holder renews it while it works (a heartbeat thread), and a claim whose holder stopped renewing
(a crashed or killed run) expires, after which a successor takes it over, again by a
conditional write. Releasing marks it expired instead of deleting it, so the next taker always
replaces a known version of the object.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from slmops.errors import ClaimHeldError, ConflictError, ObjectNotFoundError, StoreError
from slmops.store.base import ObjectStore


class ClaimRecord(BaseModel):
    """What a claim object holds."""

    work: str
    holder: str
    acquired_at: datetime
    expires_at: datetime
    released: bool = False

    def live(self, now: datetime | None = None) -> bool:
        return not self.released and self.expires_at > (now or datetime.now(UTC))


def default_holder() -> str:
    """Who is asking: host, process and a random suffix (two claims in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Claim:
    """A held claim. Renew it more often than `ttl`; release it when the work is done."""

    def __init__(self, store: ObjectStore, key: str, record: ClaimRecord, etag: str, ttl: float):
        self.store, self.key, self.record, self.etag, self.ttl = store, key, record, etag, ttl
        self.taken_over: ClaimRecord | None = None  # the expired claim this one replaced
        self.lost: ClaimHeldError | None = None  # set by the heartbeat if another run took over

    def check(self) -> None:
        """Raise ClaimHeldError if the claim was lost; call it before publishing anything."""
        if self.lost is not None:
            raise self.lost

    def renew(self) -> None:
        """Extend the lease; ClaimHeldError if another run took it over meanwhile."""
        record = self.record.model_copy(
            update={"expires_at": datetime.now(UTC) + timedelta(seconds=self.ttl)}
        )
        try:
            self.etag = self.store.compare_and_swap(self.key, _dump(record), self.etag)
        except ConflictError:
            raise ClaimHeldError(
                f"lost the claim {self.key!r} in {self.store.uri}: it expired (no renewal for "
                f"{self.ttl:.0f}s) and another run took it over; this run's work is abandoned"
            ) from None
        self.record = record

    def release(self) -> None:
        """Give the claim up (marked released, so a successor takes it at once)."""
        record = self.record.model_copy(update={"released": True})
        with contextlib.suppress(ConflictError):  # already taken over: nothing to give up
            self.etag = self.store.compare_and_swap(self.key, _dump(record), self.etag)
        self.record = record


def _dump(record: ClaimRecord) -> bytes:
    return (record.model_dump_json(indent=1) + "\n").encode()


def read_claim(store: ObjectStore, key: str) -> tuple[ClaimRecord | None, str | None]:
    try:
        data, etag = store.read_versioned(key)
    except ObjectNotFoundError:
        return None, None
    try:
        return ClaimRecord.model_validate(json.loads(data)), etag
    except ValueError as exc:
        raise StoreError(
            f"claim object {key!r} in {store.uri} is corrupt ({exc}); delete it once no run "
            "is working on it"
        ) from exc


def try_claim(
    store: ObjectStore, key: str, work: str, *, ttl: float, holder: str | None = None
) -> Claim:
    """Take the claim at `key`, or raise ClaimHeldError naming the live holder."""
    now = datetime.now(UTC)
    record = ClaimRecord(
        work=work,
        holder=holder or default_holder(),
        acquired_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )
    current, etag = read_claim(store, key)
    if current is not None and current.live(now):
        raise ClaimHeldError(
            f"{work} is claimed by {current.holder} until {current.expires_at:%H:%M:%S} UTC "
            f"({key!r} in {store.uri})"
        )
    try:
        new_etag = store.compare_and_swap(key, _dump(record), etag)
    except ConflictError:
        winner, _ = read_claim(store, key)
        raise ClaimHeldError(
            f"{work} was claimed by {winner.holder if winner else 'another run'} at the same "
            f"moment ({key!r} in {store.uri})"
        ) from None
    claim = Claim(store, key, record, new_etag, ttl)
    claim.taken_over = current if current is not None and not current.released else None
    return claim


@contextlib.contextmanager
def holding(claim: Claim, *, every: float | None = None) -> Iterator[Claim]:
    """Renew `claim` in a background thread while the block runs; release it afterwards.

    If a renewal finds the claim lost, the block is not interrupted (it may be mid-write), but
    `claim.lost` is set: call `claim.check()` before publishing anything."""
    stop = threading.Event()
    interval = every or max(claim.ttl / 3, 0.05)

    def heartbeat() -> None:
        while not stop.wait(interval):
            try:
                claim.renew()
            except ClaimHeldError as exc:
                claim.lost = exc
                return
            except StoreError:  # a blip: the next beat tries again, well within the ttl
                continue

    thread = threading.Thread(target=heartbeat, name=f"claim-{claim.key}", daemon=True)
    thread.start()
    try:
        yield claim
    finally:
        stop.set()
        thread.join()
        if claim.lost is None:
            claim.release()


def wait_for_claim(
    store: ObjectStore,
    key: str,
    work: str,
    *,
    ttl: float,
    done: Callable[[], object],
    poll: float = 5.0,
    timeout: float | None = None,
    on_wait: Callable[[ClaimRecord], None] | None = None,
) -> tuple[Claim | None, object]:
    """Take the claim, or wait while another run holds it.

    Returns (claim, None) once this run holds it, or (None, result) as soon as `done()`
    returns something (the other run finished the work). `done` is checked first and again
    after every wait, so work finished by a run that has just released is never redone.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        finished = done()
        if finished is not None:
            return None, finished
        try:
            claim = try_claim(store, key, work, ttl=ttl)
        except ClaimHeldError:
            current, _ = read_claim(store, key)
            if deadline is not None and time.monotonic() > deadline:
                raise
            if on_wait and current is not None:
                on_wait(current)
            time.sleep(poll)
            continue
        # Claimed: the holder before us may have finished between our check and our claim.
        finished = done()
        if finished is not None:
            claim.release()
            return None, finished
        return claim, None
