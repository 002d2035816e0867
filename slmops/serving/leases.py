"""Leases on served names: a gate asking a candidate on the replicas (under its versioned
name) holds one while it asks, so `serve sync`, which unloads every version that is neither
champion nor previous, leaves that name loaded. A lease is a claim in the store
(`adapters/<adapter>/claims/gating-<hash>.json`), renewed while the gate runs and expired
when it stops: a gate killed mid-run leaves nothing that holds a name for long.
"""

from __future__ import annotations

from slmops.errors import ClaimHeldError, ConfigError
from slmops.store.base import ObjectStore
from slmops.store.claims import Claim, read_claim, try_claim
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
