"""Claims on work (a training key) through the store: exactly one of racing runs gets it, a
crashed holder's claim is taken over after its lease, and the waiting run gets the result."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from slmops.errors import ClaimHeldError
from slmops.store.base import ObjectStore
from slmops.store.claims import holding, read_claim, try_claim
from slmops.store.manifest import Manifest
from slmops.store.versions import ADAPTERS, VersionedArtifact
from slmops.training import adapters

KEY = "claims/train-abc.json"


def _sleep_past(store: ObjectStore) -> None:
    record, _ = read_claim(store, KEY)
    assert record is not None
    time.sleep(max(0.0, (record.expires_at - datetime.now(UTC)).total_seconds()) + 0.1)


def test_of_racing_runs_exactly_one_gets_the_claim(store: ObjectStore) -> None:
    barrier = threading.Barrier(8)
    won: list[str] = []
    lost: list[str] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            try_claim(store, KEY, "training abc", ttl=60, holder=f"run-{i}")
            won.append(f"run-{i}")
        except ClaimHeldError:
            lost.append(f"run-{i}")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    record, _ = read_claim(store, KEY)
    assert record is not None and record.holder == won[0]


def test_a_live_claim_is_refused_with_its_holder(store: ObjectStore) -> None:
    try_claim(store, KEY, "training abc", ttl=60, holder="weekly-run")
    with pytest.raises(ClaimHeldError, match="claimed by weekly-run until"):
        try_claim(store, KEY, "training abc", ttl=60, holder="event-run")


def test_a_crashed_holders_claim_is_taken_over_after_its_lease(store: ObjectStore) -> None:
    # The lease is long enough that a slow store's round trip cannot outlast it before the
    # refused attempt; the wait then runs to its recorded end.
    crashed = try_claim(store, KEY, "training abc", ttl=3, holder="crashed-run")
    with pytest.raises(ClaimHeldError):
        try_claim(store, KEY, "training abc", ttl=60, holder="successor")
    _sleep_past(store)  # the crashed run never renews
    successor = try_claim(store, KEY, "training abc", ttl=60, holder="successor")
    assert successor.taken_over is not None and successor.taken_over.holder == "crashed-run"
    # The old holder, if it was only paused, finds out before it publishes anything.
    with pytest.raises(ClaimHeldError, match="another run took it over"):
        crashed.renew()


def test_holding_renews_the_lease_and_releases_it(store: ObjectStore) -> None:
    claim = try_claim(store, KEY, "training abc", ttl=2, holder="worker")
    with holding(claim, every=0.25):
        time.sleep(4)  # twice the lease: only renewals keep it
        with pytest.raises(ClaimHeldError):
            try_claim(store, KEY, "training abc", ttl=60, holder="other")
        claim.check()
    record, _ = read_claim(store, KEY)
    assert record is not None and record.released
    assert try_claim(store, KEY, "training abc", ttl=60, holder="next").taken_over is None


def test_a_waiting_run_returns_the_adapter_the_holder_published(store: ObjectStore) -> None:
    holder, found = adapters.claim_training(store, "bot", "k1", ttl=60)
    assert holder is not None and found is None
    result: dict[str, object] = {}

    def second_run() -> None:
        result["claim"], result["found"] = adapters.claim_training(
            store, "bot", "k1", ttl=60, poll=0.05, timeout=30
        )

    waiter = threading.Thread(target=second_run)
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # it waits while the first run trains
    art = VersionedArtifact(store, ADAPTERS, "bot")
    published = art.publish(
        Manifest(kind="adapter", name="bot"), {"w": b"1"}, lookup={adapters.TRAINING_KEY: "k1"}
    )
    holder.release()
    waiter.join(timeout=30)
    assert result["claim"] is None
    assert isinstance(result["found"], Manifest) and result["found"].version == published.version
    assert art.versions() == [published.version]


def test_publishing_after_losing_the_claim_is_refused(store: ObjectStore) -> None:
    claim = try_claim(store, KEY, "training abc", ttl=0.3, holder="slow-run")
    time.sleep(0.4)
    try_claim(store, KEY, "training abc", ttl=60, holder="successor")
    with holding(claim, every=0.05):
        time.sleep(0.3)
    with pytest.raises(ClaimHeldError):
        claim.check()
