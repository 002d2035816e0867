"""Who may act on an adapter's serving now. One promotion, rollback or sync of an adapter at a
time (`serving_claim`, across machines). Leases on served names: a gate asking a candidate on
the replicas (under its versioned name) holds one while it asks, so `serve sync`, which
unloads every version that is neither champion nor previous, leaves that name loaded. A lease
is a claim in the store (`adapters/<adapter>/claims/gating-<hash>.json`), renewed while the
gate runs and expired when it stops: a gate killed mid-run leaves nothing that holds a name
for long.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from slmops.errors import ClaimHeldError, ConfigError, PromotionError
from slmops.progress import Log
from slmops.store.base import ObjectStore
from slmops.store.claims import Claim, holding, read_claim, try_claim
from slmops.store.manifest import Manifest
from slmops.store.versions import ADAPTERS

GATING_TTL = 120.0  # renewed every 40 s while the gate runs


def _gating_key(adapter: str, name: str) -> str:
    return f"{ADAPTERS}/{adapter}/claims/gating-{name.rpartition('@')[2]}.json"


def gating_lease(store: ObjectStore, manifest: Manifest, name: str) -> Claim:
    """The lease a gate holds on a served name it asks (one gate per name at a time)."""
    try:
        return try_claim(
            store,
            _gating_key(manifest.name, name),
            f"gate of {manifest.name}@{manifest.version} on {name}",
            ttl=GATING_TTL,
        )
    except ClaimHeldError as exc:
        raise ConfigError(
            f"another gate is asking the replicas {name} right now ({exc}); run this one when "
            "it has finished (its answers are then reused)"
        ) from None


def being_gated(store: ObjectStore, adapter: str, names: list[str]) -> set[str]:
    """Which of `names` (served names of `adapter`) a running gate holds a lease on."""
    held = set()
    for name in names:
        record, _ = read_claim(store, _gating_key(adapter, name))
        if record is not None and record.live():
            held.add(name)
    return held


CLAIM_TTL = 600.0
# How long a promotion, rollback or sync waits for another one of the same adapter (each
# takes seconds, plus the drain before unloading), and how often it looks.
SERVING_WAIT_S = 300.0
SERVING_POLL_S = 2.0


@contextmanager
def serving_claim(
    store: ObjectStore,
    adapter: str,
    work: str,
    log: Log = lambda _: None,
    wait_s: float | None = None,
) -> Iterator[Claim]:
    """One promotion, rollback or sync of an adapter at a time, across machines. One that
    finds another running waits for it (a scheduled sync and a manual promotion can start in
    the same second), up to `wait_s` (SERVING_WAIT_S), and then fails having changed nothing.
    The local stack holds it too while it restarts replicas on another base revision: an
    operation re-reads the serving config's replicas once it holds it."""
    key = f"{ADAPTERS}/{adapter}/claims/serving.json"
    wait_s = SERVING_WAIT_S if wait_s is None else wait_s
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            claim = try_claim(store, key, f"{work} of {adapter}", ttl=CLAIM_TTL)
            break
        except ClaimHeldError as exc:
            if time.monotonic() >= deadline:
                raise PromotionError(
                    f"another promotion, rollback or sync of {adapter} is running: {exc}; "
                    f"waited {wait_s:.0f}s for it. Nothing was changed; try again when it "
                    "has finished"
                ) from None
            if not said:
                log(f"waiting for another serving operation of {adapter} to finish: {exc}")
                said = True
            time.sleep(SERVING_POLL_S)
    with holding(claim) as held:
        yield held
