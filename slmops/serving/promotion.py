"""Promotion of an adapter version to every vLLM replica, all or none.

Names. Each adapter version is served under an immutable, content-addressed name
(`support-bot@<sha of its weights>`), never reloaded with other weights. Clients call the
stable name (`support-bot`), which promotion moves with vLLM's in-place load: the name keeps
answering while its weights change, so no request fails.

Promotion, two phases, all replicas or none:
  preflight (nothing touched): the gate's clearance against the current champion; the
    weights copied from the store to the shared adapter folder with every hash checked; rank
    within every replica's max; no modules_to_save / lm_head; every replica reachable and
    serving the adapter's base model at the revision it was trained on.
  1. on every replica: load the versioned name, see it listed, answer golden prompts from the
     format suite within the suite's rules. Any failure: unload what was loaded, nothing else
     changes.
  2. flip the `champion` alias (conditional write), move the stable name on every replica,
     keep the previous champion loaded (rollback is instant), and after a drain period unload
     versions older than that.
One promotion, rollback or sync per adapter at a time: each holds a claim in the store.

    from slmops.pipelines.promotion import promote   # the gate's verdict as the clearance
    result = promote(store, "support-bot", "challenger", config,
                     suites="examples/support-bot/evals")

Staging (slmops.serving.staging), the replicas (placement), the smoke test (smoke), the
router's canary (canary) and rollback/sync (reconcile) are modules of their own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from slmops.errors import (
    ConfigError,
    ConflictError,
    PromotionError,
    SlmopsError,
    StoreError,
)
from slmops.progress import Log
from slmops.serving.canary import shift_traffic
from slmops.serving.client import (
    ServingConfig,
    ServingError,
    VLLMClient,
)
from slmops.serving.leases import serving_claim
from slmops.serving.placement import Clients, check_replicas, connect, target_set
from slmops.serving.smoke import smoke_test
from slmops.serving.staging import Staged, lora_rank, serving_name, stage
from slmops.store.audit import AuditLog
from slmops.store.base import ObjectStore
from slmops.store.manifest import Trigger
from slmops.store.versions import ADAPTERS, CHAMPION, VersionedArtifact


class PromotionResult(BaseModel):
    """What a promotion or rollback did, for the audit log, the run's report and the CLI."""

    adapter: str
    version: str
    name: str = Field(description="The versioned serving name, e.g. support-bot@1a2b3c4d5e.")
    previous: str | None = Field(None, description="The champion version it replaced.")
    replicas: list[str]
    unloaded: list[str] = Field(default_factory=list, description="Old names drained away.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per step.")
    smoke: dict[str, int] = Field(default_factory=dict, description="Prompts passed per replica.")
    traffic: dict[str, float] = Field(
        default_factory=dict,
        description="Behind a router: each replica set's share of requests afterwards (%).",
    )


def audit(store: ObjectStore, event: str, adapter: str, trigger: Trigger | None, **kw: Any) -> None:
    AuditLog(store).record(event, f"slmops.adapter.{adapter}", trigger=trigger, **kw)


def _failed(
    store: ObjectStore,
    adapter: str,
    staged: Staged,
    trigger: Trigger | None,
    phase: str,
    exc: BaseException,
    message: str,
    **kw: Any,
) -> PromotionError:
    """Audit a promotion that failed in `phase` (after undoing what it had done) and return
    the error to raise, saying what was undone."""
    audit(
        store,
        "promotion.failed",
        adapter,
        trigger,
        version=staged.version,
        name=staged.name,
        phase=phase,
        reason=str(exc),
        **kw,
    )
    return PromotionError(message)


@dataclass(frozen=True)
class Clearance:
    """What the gate said of a version against the current champion: promotion needs it
    passed. `answers`: the gate's answers of this version that pass the smoke test's rules,
    by case id (the smoke test's golden prompts); None when the verdict kept none."""

    passed: bool
    reasons: list[str]
    answers: dict[str, str] | None = None


# (version, champion version or None) -> the gate's clearance, or None: no verdict
ClearanceLookup = Callable[[str, str | None], Clearance | None]


def preflight(
    store: ObjectStore,
    adapter: str,
    version: str,
    config: ServingConfig,
    clearance: ClearanceLookup,
) -> tuple[Staged, str | None, Clients]:
    """Every check that needs no change on a server, cheapest first. Returns the staged
    adapter, the current champion version, and a client per replica."""
    art = VersionedArtifact(store, ADAPTERS, adapter)
    resolved = art.version_of(version)
    what = f"{adapter}@{resolved}"
    manifest = art.manifest(resolved)
    serving_name(adapter, manifest)  # both served files are in the manifest
    rank = lora_rank(json.loads(art.read_file(resolved, "adapter_config.json")), what)
    check_replicas(config, manifest, rank, what)
    alias = art.get_alias(CHAMPION)
    champion = alias.version if alias else None
    if champion == resolved:
        raise PromotionError(f"{what} is the champion already; `slmops serve sync` re-applies it")
    cleared = clearance(resolved, champion)
    against = f"champion {champion}" if champion else "floors only (there is no champion yet)"
    if cleared is None:
        raise PromotionError(
            f"{what} has no gate verdict against {against}: run `slmops gate {what}` first "
            "(promotion needs a passing one)"
        )
    if not cleared.passed:
        raise PromotionError(
            f"{what} failed the gate against {against}: " + "; ".join(cleared.reasons)
        )
    staged = stage(store, adapter, resolved, config.adapter_dir)
    staged.gated = cleared.answers
    clients = connect(config, manifest)
    return staged, champion, clients


def promote(
    store: ObjectStore,
    adapter: str,
    version: str,
    config: ServingConfig,
    *,
    suites: str | Path,
    clearance: ClearanceLookup,
    trigger: Trigger | None = None,
    log: Log = lambda _: None,
) -> PromotionResult:
    """Promote `adapter@version` (a version or alias, e.g. challenger) to every replica, if
    `clearance` says the gate passed it against the current champion (the pipeline's
    `slmops.pipelines.promotion.promote` asks the stored verdicts)."""
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    with ExitStack() as stack:
        try:
            stack.enter_context(serving_claim(store, adapter, "promotion", log))
            config = config.current()
            staged, champion, clients = preflight(store, adapter, version, config, clearance)
        except (PromotionError, StoreError, ConfigError) as exc:
            audit(
                store,
                "promotion.failed",
                adapter,
                trigger,
                version=version,
                phase="preflight",
                reason=str(exc),
            )
            raise
        for client in clients:
            stack.callback(client.close)
        timings["preflight"] = time.perf_counter() - tick
        log(f"preflight passed for {staged.name} ({timings['preflight']:.2f}s)")
        loaded = _phase1(store, adapter, staged, clients, suites, trigger, timings, log)
        previous_name = None
        if champion:
            previous_name = serving_name(
                adapter, VersionedArtifact(store, ADAPTERS, adapter).manifest(champion)
            )
        _phase2(
            store, adapter, staged, champion, previous_name, clients, loaded, trigger, timings, log
        )
        traffic: dict[str, float] = {}
        if config.router is not None:
            target = target_set(config, staged.manifest)
            assert target is not None  # preflight checked it
            tick = time.perf_counter()
            try:
                traffic = shift_traffic(config.router, target, log, urls=[c.url for c in clients])
            except (SlmopsError, OSError) as exc:
                raise _undone(
                    store,
                    adapter,
                    staged,
                    champion,
                    previous_name,
                    list(clients),
                    loaded,
                    trigger,
                    "3-traffic",
                    exc,
                    f"stopped while replica set {target} took the traffic",
                ) from exc
            timings["traffic"] = time.perf_counter() - tick
        unloaded = _drain(adapter, {staged.name, previous_name}, clients, config.drain_s, log)
        if unloaded:
            timings["drain"] = config.drain_s
        result = PromotionResult(
            adapter=adapter,
            version=staged.version,
            name=staged.name,
            previous=champion,
            replicas=[c.url for c in clients],
            unloaded=unloaded,
            timings={k: round(v, 3) for k, v in timings.items()},
            smoke=dict(loaded.smoke),
            traffic=traffic,
        )
        audit(
            store,
            "promotion.succeeded",
            adapter,
            trigger,
            **result.model_dump(mode="json", exclude={"adapter"}),
        )
        return result
    raise AssertionError("unreachable")


@dataclass
class _Loaded:
    replicas: list[VLLMClient] = field(default_factory=list)  # where phase 1 loaded the name
    smoke: dict[str, int] = field(default_factory=dict)


def _phase1(
    store: ObjectStore,
    adapter: str,
    staged: Staged,
    clients: Clients,
    suites: str | Path,
    trigger: Trigger | None,
    timings: dict[str, float],
    log: Log,
) -> _Loaded:
    loaded = _Loaded()
    step = "load"
    try:
        tick = time.perf_counter()
        for client in clients:
            if staged.name not in client.adapters():
                client.load(staged.name, staged.path)
                loaded.replicas.append(client)
        timings["load"] = time.perf_counter() - tick
        step, tick = "list", time.perf_counter()
        for client in clients:
            root = client.adapters().get(staged.name)
            if root is None:
                raise PromotionError(f"{client.url} accepted {staged.name} but does not list it")
            if Path(root).resolve() != staged.path:
                raise PromotionError(
                    f"{client.url} serves {staged.name} from {root}, not {staged.path}: a name "
                    "must never mean other weights; unload it there and retry"
                )
        timings["list"] = time.perf_counter() - tick
        step, tick = "smoke", time.perf_counter()
        for client in clients:
            loaded.smoke[client.url] = smoke_test(client, staged, suites, clients.config)
        timings["smoke"] = time.perf_counter() - tick
        log(f"phase 1: {staged.name} loaded, listed and answering on {len(loaded.smoke)} replicas")
        return loaded
    except (SlmopsError, OSError) as exc:
        undone = unload_quietly(loaded.replicas, staged.name)
        raise _failed(
            store,
            adapter,
            staged,
            trigger,
            f"1-{step}",
            exc,
            f"promotion of {adapter}@{staged.version} stopped at {step}: {exc}. Unloaded "
            f"{staged.name} from {len(undone)} replica(s); nothing else changed",
            unloaded_from=undone,
        ) from exc


def unload_quietly(clients: list[VLLMClient], name: str) -> list[str]:
    done = []
    for client in clients:
        try:
            client.unload(name)
            done.append(client.url)
        except ServingError:
            pass  # unreachable now: `serve sync` removes names the store does not know
    return done


def move_stable(clients: list[VLLMClient], adapter: str, path: Path) -> list[VLLMClient]:
    """Point the stable name at `path` on each replica; returns those moved."""
    moved = []
    for client in clients:
        served = client.adapters()
        client.load(adapter, path, inplace=adapter in served)
        root = client.adapters().get(adapter)
        if root is None or Path(root).resolve() != path:
            raise PromotionError(f"{client.url} did not move {adapter} to {path} (serves {root})")
        moved.append(client)
    return moved


def _phase2(
    store: ObjectStore,
    adapter: str,
    staged: Staged,
    champion: str | None,
    previous_name: str | None,
    clients: Clients,
    loaded: _Loaded,
    trigger: Trigger | None,
    timings: dict[str, float],
    log: Log,
) -> None:
    art = VersionedArtifact(store, ADAPTERS, adapter)
    tick = time.perf_counter()
    try:
        art.set_alias(
            CHAMPION,
            staged.version,
            expect=champion,
            reason="promoted to every replica",
            trigger=trigger,
        )
    except ConflictError as exc:
        undone = unload_quietly(loaded.replicas, staged.name)
        raise _failed(
            store,
            adapter,
            staged,
            trigger,
            "2-flip",
            exc,
            f"the champion alias of {adapter} moved during the promotion ({exc}); unloaded "
            f"{staged.name}, nothing else changed",
            unloaded_from=undone,
        ) from exc
    moved: list[VLLMClient] = []
    try:
        moved = move_stable(list(clients), adapter, staged.path)
    except (SlmopsError, OSError) as exc:
        raise _undone(
            store,
            adapter,
            staged,
            champion,
            previous_name,
            moved,
            loaded,
            trigger,
            "2-move",
            exc,
            "failed while moving the stable name",
        ) from exc
    timings["flip"] = time.perf_counter() - tick
    log(f"phase 2: champion -> {staged.version}; {adapter} serves {staged.name} everywhere")


def _undone(
    store: ObjectStore,
    adapter: str,
    staged: Staged,
    champion: str | None,
    previous_name: str | None,
    moved: list[VLLMClient],
    loaded: _Loaded,
    trigger: Trigger | None,
    phase: str,
    exc: BaseException,
    what: str,
) -> PromotionError:
    """Undo a promotion that failed after the alias flipped (`_restore`), audit it, and
    return the error saying what happened and what was put back."""
    art = VersionedArtifact(store, ADAPTERS, adapter)
    back = _restore(store, art, adapter, staged, champion, previous_name, moved, loaded, trigger)
    return _failed(
        store,
        adapter,
        staged,
        trigger,
        phase,
        exc,
        f"promotion of {adapter}@{staged.version} {what}: {exc}. {back}",
        restored=back,
    )


def _restore(
    store: ObjectStore,
    art: VersionedArtifact,
    adapter: str,
    staged: Staged,
    champion: str | None,
    previous_name: str | None,
    moved: list[VLLMClient],
    loaded: _Loaded,
    trigger: Trigger | None,
) -> str:
    """Undo a half-done phase 2: alias back, stable name back where it was moved."""
    try:
        art.rollback(CHAMPION, reason="promotion failed in phase 2", trigger=trigger)
        if champion is None:  # the first promotion: nothing to go back to on the replicas
            for client in moved:
                client.unload(adapter)
        elif moved:
            root = moved[0].adapters().get(previous_name or "")
            if root is not None:
                move_stable(moved, adapter, Path(root).resolve())
            else:  # a new replica set (another base revision): the old champion never ran here
                for client in moved:
                    client.unload(adapter)
        unload_quietly(loaded.replicas, staged.name)
    except (SlmopsError, OSError, KeyError) as exc:
        return (
            f"Restoring failed too ({exc}): run `slmops serve sync {adapter}` once the replicas "
            "are reachable; it makes them serve what the champion alias says"
        )
    return f"The champion alias and {len(moved)} replica(s) were put back"


def _drain(
    adapter: str, keep: set[str | None], clients: Clients, drain_s: float, log: Log
) -> list[str]:
    """Unload `<adapter>@*` names other than `keep` after `drain_s` seconds."""
    stale = {
        c.url: [n for n in c.adapters() if n.startswith(f"{adapter}@") and n not in keep]
        for c in clients
    }
    if not any(stale.values()):
        return []
    if drain_s:
        names = sorted({n for v in stale.values() for n in v})
        log(f"draining {drain_s:.0f}s before unloading {', '.join(names)}")
        time.sleep(drain_s)
    done = []
    for client in clients:
        for name in stale[client.url]:
            try:
                client.unload(name)
                done.append(f"{client.url} {name}")
            except ServingError as exc:
                log(f"could not unload {name} from {client.url} ({exc}); serve sync retries")
    return done
