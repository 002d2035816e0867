"""Who may act on an adapter's serving now. One promotion, rollback or sync of an adapter at a
time (`serving_claim`, across machines). Leases on served names: a gate asking a candidate on
the replicas (under its versioned name) holds one while it asks, so `serve sync`, which
unloads every version that is neither champion nor previous, leaves that name loaded. Leases
are shared (two gates may ask one champion at once), each a claim in the store
(`adapters/<adapter>/claims/gating-<hash>/<id>.json`) renewed while its gate runs and expired
when it stops: a gate killed mid-run leaves nothing that holds a name for long. A gate loads or
unloads a name for gates under a short exclusive claim (`loading`); the last gate done with a
name a gate loaded unloads it.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from slmops.errors import ClaimHeldError, ConfigError, PromotionError
from slmops.progress import Log
from slmops.store.base import ObjectStore
from slmops.store.claims import Claim, ClaimRecord, holding, read_claim, try_claim, wait_for_claim
from slmops.store.manifest import Manifest
from slmops.store.versions import ADAPTERS

GATING_TTL = 120.0  # renewed every 40 s while the gate runs
LOADING_TTL = 30.0  # a load or unload of one name for a gate takes seconds
LOADING_WAIT_S = 300.0


def _gating_prefix(adapter: str, name: str) -> str:
    return f"{ADAPTERS}/{adapter}/claims/gating-{name.rpartition('@')[2]}"


def gating_lease(store: ObjectStore, manifest: Manifest, name: str) -> Claim:
    """This gate's lease on a served name it asks. Leases are shared: any number of gates may
    ask one name at once (two candidates against the same champion), each under its own."""
    return try_claim(
        store,
        f"{_gating_prefix(manifest.name, name)}/{uuid.uuid4().hex[:16]}.json",
        f"gate of {manifest.name}@{manifest.version} on {name}",
        ttl=GATING_TTL,
    )


def gates_asking(
    store: ObjectStore, adapter: str, name: str, *, besides: Collection[str] = ()
) -> int:
    """How many gates hold a live lease on `name` (a served name of `adapter`), the leases
    stored at `besides` (a run's own) left out. A lease given up or expired is deleted where
    it is found, so the leases read stay those of the gates running now."""
    live = 0
    for info in store.list_objects(_gating_prefix(adapter, name) + "/"):
        record, _ = read_claim(store, info.key)
        if record is None or not record.live():
            store.delete(info.key)
        elif info.key not in besides:
            live += 1
    return live


def being_gated(store: ObjectStore, adapter: str, names: list[str]) -> set[str]:
    """Which of `names` (served names of `adapter`) a running gate holds a lease on."""
    return {name for name in names if gates_asking(store, adapter, name)}


def hand_over(store: ObjectStore, adapter: str, name: str) -> None:
    """A gate that loaded `name` is done while others still ask it: the last one done
    unloads it (`take_over`). Inside `loading`."""
    store.put_bytes(f"{_gating_prefix(adapter, name)}.unload", b"", overwrite=True)


def take_over(store: ObjectStore, adapter: str, name: str) -> bool:
    """Was `name` handed over to the last gate done (`hand_over`)? Takes the duty if so.
    Inside `loading`."""
    key = f"{_gating_prefix(adapter, name)}.unload"
    if not store.exists(key):
        return False
    store.delete(key)
    return True


@contextmanager
def loading(store: ObjectStore, adapter: str, name: str) -> Iterator[Claim]:
    """One gate at a time loads `name` onto the replicas or unloads it: a gate takes its
    lease and loads inside it, and one that is done unloads inside it only when no other
    gate's lease is live, so no gate finds a name gone between its check and its requests."""
    key = f"{_gating_prefix(adapter, name)}.loading.json"
    try:
        claim, _ = wait_for_claim(
            store,
            key,
            f"loading {name} for a gate",
            ttl=LOADING_TTL,
            done=lambda: None,
            poll=0.5,
            timeout=LOADING_WAIT_S,
        )
    except ClaimHeldError as exc:
        raise ConfigError(
            f"waited {LOADING_WAIT_S:.0f}s to load {name} for this gate: {exc}"
        ) from None
    assert claim is not None  # `done` never finishes the work for us
    with holding(claim) as held:
        yield held


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
    said: list[bool] = []

    def waiting(holder: ClaimRecord) -> None:
        if not said:
            log(
                f"waiting for another serving operation of {adapter} to finish: {holder.work} "
                f"is claimed by {holder.holder} until {holder.expires_at:%H:%M:%S} UTC"
            )
            said.append(True)

    try:
        claim, _ = wait_for_claim(
            store,
            key,
            f"{work} of {adapter}",
            ttl=CLAIM_TTL,
            done=lambda: None,
            poll=SERVING_POLL_S,
            timeout=wait_s,
            on_wait=waiting,
        )
    except ClaimHeldError as exc:
        raise PromotionError(
            f"another promotion, rollback or sync of {adapter} is running: {exc}; "
            f"waited {wait_s:.0f}s for it. Nothing was changed; try again when it has finished"
        ) from None
    assert claim is not None  # `done` never finishes the work for us
    with holding(claim) as held:
        yield held
