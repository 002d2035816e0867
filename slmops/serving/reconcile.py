"""The replicas put back to what the store says: rollback (the previous champion, alias then
replicas), sync (every replica set serving what `desired` says: the champion under its
versioned and the stable name, the previous champion for an instant rollback, no other
version) and the retirement of a replica set that takes no traffic."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pydantic import BaseModel, Field

from slmops.errors import (
    ConfigError,
    PromotionError,
    SlmopsError,
)
from slmops.progress import Log
from slmops.serving.canary import shift_traffic
from slmops.serving.client import (
    RouterSettings,
    ServingConfig,
    ServingError,
    VLLMClient,
)
from slmops.serving.leases import being_gated, serving_claim
from slmops.serving.placement import (
    check_replicas,
    connect,
    desired,
    replica_groups,
    target_set,
)
from slmops.serving.promotion import PromotionResult, audit, move_stable
from slmops.serving.staging import stage
from slmops.store.base import ObjectStore
from slmops.store.manifest import Trigger
from slmops.store.versions import ADAPTERS, CHAMPION, VersionedArtifact


class Drift(BaseModel):
    replica: str
    problem: str
    fixed: bool
    error: str | None = None


class SyncReport(BaseModel):
    adapter: str
    champion: str | None
    drift: list[Drift] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d.fixed for d in self.drift)


def rollback(
    store: ObjectStore,
    adapter: str,
    config: ServingConfig,
    *,
    trigger: Trigger | None = None,
    log: Log = lambda _: None,
) -> PromotionResult:
    """The previous champion back on every replica: alias, then the stable name (its
    versioned name is normally still loaded, so this is one in-place load per replica)."""
    art = VersionedArtifact(store, ADAPTERS, adapter)
    tick = time.perf_counter()
    with serving_claim(store, adapter, "rollback", log):
        config = config.current()
        current = art.get_alias(CHAMPION)
        if current is None or not current.history:
            raise PromotionError(
                f"{adapter} has "
                + (
                    "no champion"
                    if current is None
                    else f"only ever had champion {current.version}"
                )
                + ": there is nothing to roll back to"
            )
        target = current.history[-1].version
        traffic: dict[str, float] = {}
        staged = stage(store, adapter, target, config.adapter_dir)
        check_replicas(config, staged.manifest, staged.rank, f"{adapter}@{target}")
        clients = connect(config, staged.manifest)
        try:
            for client in clients:  # the versioned name back first, if a restart lost it
                if staged.name not in client.adapters():
                    client.load(staged.name, staged.path)
            art.rollback(CHAMPION, reason="rollback", trigger=trigger)
            try:
                move_stable(list(clients), adapter, staged.path)
                if config.router is not None:  # back onto its base revision's set, at once
                    traffic = shift_traffic(
                        config.router,
                        str(target_set(config, staged.manifest)),
                        log,
                        instant=True,
                        urls=[c.url for c in clients],
                    )
            except (SlmopsError, OSError) as exc:
                raise PromotionError(
                    f"champion of {adapter} is {target} again, but a replica or the router did "
                    f"not follow: {exc}. Run `slmops serve sync {adapter}` once it is reachable"
                ) from exc
        finally:
            for client in clients:
                client.close()
        result = PromotionResult(
            adapter=adapter,
            version=target,
            name=staged.name,
            previous=current.version,
            replicas=[c.url for c in clients],
            timings={"rollback": round(time.perf_counter() - tick, 3)},
            traffic=traffic,
        )
        audit(
            store,
            "rollback.succeeded",
            adapter,
            trigger,
            **result.model_dump(mode="json", exclude={"adapter"}),
        )
        log(f"rolled back: {adapter} serves {staged.name} ({target}) on every replica")
        return result


def sync(
    store: ObjectStore,
    adapter: str,
    config: ServingConfig,
    *,
    trigger: Trigger | None = None,
    log: Log = lambda _: None,
) -> SyncReport:
    """Make every replica serve what the store says (`placement.desired`): the champion under
    its versioned and the stable name, the previous champion under its versioned name, no
    other version. A replica that cannot be reached is reported, and the others are still
    fixed."""
    art = VersionedArtifact(store, ADAPTERS, adapter)
    alias = art.get_alias(CHAMPION)
    report = SyncReport(adapter=adapter, champion=alias.version if alias else None)
    if alias is None:
        log(f"{adapter} has no champion: nothing to serve")
        return report
    with serving_claim(store, adapter, "sync", log):
        # What the store and the file say once this may act: a promotion it waited for has
        # moved the champion (and the traffic) meanwhile, and must not be undone.
        alias = art.get_alias(CHAMPION) or alias
        report.champion = alias.version
        config = config.current()
        champ = stage(store, adapter, alias.version, config.adapter_dir)
        check_replicas(config, champ.manifest, champ.rank, f"{adapter}@{alias.version}")
        prev = art.manifest(alias.history[-1].version) if alias.history else None
        staged = {champ.version: champ}
        groups = replica_groups(config)
        for name, wants in desired(config, adapter, champ.manifest, prev).items():
            if wants is None:
                log(f"replica set {name}: serves neither champion's base; left as it is")
                continue
            wanted = {}
            for served, manifest in wants.items():
                version = manifest.version or ""
                if version not in staged:
                    staged[version] = stage(store, adapter, version, config.adapter_dir)
                wanted[served] = staged[version].path
            for replica in groups[name]:
                with VLLMClient(replica, timeout=config.timeout_s) as client:
                    report.drift.extend(_sync_one(client, adapter, wanted, log, store))
        champ_set = target_set(config, champ.manifest)
        if config.router is not None and champ_set:
            urls = [r.url for r in config.sets()[champ_set]]
            report.drift.extend(_sync_router(config.router, champ_set, urls, log))
    audit(
        store,
        "serve.synced",
        adapter,
        trigger,
        champion=alias.version,
        drift=[d.model_dump() for d in report.drift],
    )
    return report


def _sync_router(
    settings: RouterSettings, champ_set: str, urls: list[str], log: Log
) -> list[Drift]:
    """The router has the champion's replica set and sends it every request."""
    from slmops.serving.router import HAProxyRuntime

    where = f"router {settings.admin}"
    try:
        shares = HAProxyRuntime(settings.admin).shares(healthy_only=False)
    except SlmopsError as exc:
        return [Drift(replica=where, problem="unreachable", fixed=False, error=str(exc))]
    if shares.get(champ_set, 0) >= 100:
        return []
    sends = ", ".join(f"{v:g}% to {n}" for n, v in shares.items() if v) or "nothing"
    problem = f"sends {sends}, not all to the champion's set {champ_set}"
    try:
        shift_traffic(settings, champ_set, log, instant=True, urls=urls)
    except SlmopsError as exc:
        log(f"{where}: {problem} -> NOT fixed: {exc}")
        return [Drift(replica=where, problem=problem, fixed=False, error=str(exc))]
    log(f"{where}: {problem} -> fixed")
    return [Drift(replica=where, problem=problem, fixed=True)]


def _sync_one(
    client: VLLMClient, adapter: str, want: dict[str, Path], log: Log, store: ObjectStore
) -> list[Drift]:
    drift: list[Drift] = []

    def fix(problem: str, action: Callable[[], None]) -> None:
        try:
            action()
            drift.append(Drift(replica=client.url, problem=problem, fixed=True))
            log(f"{client.url}: {problem} -> fixed")
        except SlmopsError as exc:
            drift.append(Drift(replica=client.url, problem=problem, fixed=False, error=str(exc)))
            log(f"{client.url}: {problem} -> NOT fixed: {exc}")

    try:
        served = client.adapters()
    except ServingError as exc:
        return [Drift(replica=client.url, problem="unreachable", fixed=False, error=str(exc))]
    # Versioned names before the stable one, so the stable name never points at a folder
    # that is not also served under its own name.
    for name in sorted(want, key=lambda n: n == adapter):
        path, root = want[name], served.get(name)
        if root is None:
            fix(f"{name} not loaded", partial(client.load, name, path))
        elif Path(root).resolve() != path:
            fix(f"{name} serves {root}", partial(client.load, name, path, inplace=True))
    extra = [n for n in served if n.startswith(f"{adapter}@") and n not in want]
    gated = being_gated(store, adapter, extra)
    for name in extra:
        if name in gated:
            log(f"{client.url}: {name} left loaded: a gate is asking it (it unloads it after)")
            continue
        fix(f"{name} loaded but not champion or previous", partial(client.unload, name))
    return drift


def retire_set(
    config: ServingConfig,
    store: ObjectStore,
    set_name: str,
    adapters: list[str],
    *,
    drain_s: float = 0.0,
    log: Log = print,
) -> list[str]:
    """Take replica set `set_name` out of the router once it takes no traffic (a base-model
    release moved the stable name to the new revision's set); returns the router's servers
    removed. Refused while the set has a share, or serves the base revision of one of
    `adapters`' champions (its stable name would have nowhere else to go). `drain_s`: wait
    first, for requests still in flight there."""
    from slmops.serving.router import HAProxyRuntime

    if config.router is None:
        raise PromotionError(
            "the serving config has no router: replica sets exist only behind one ("
            "docs/guides/serving.md#replica-sets)"
        )
    for adapter in adapters:
        art = VersionedArtifact(store, ADAPTERS, adapter)
        alias = art.get_alias(CHAMPION)
        if alias is None:
            continue
        try:
            serves = target_set(config, art.manifest(alias.version)) == set_name
        except ConfigError:  # a champion with no base model recorded is served by no set
            serves = False
        if serves:
            raise PromotionError(
                f"replica set {set_name} serves the base revision of {adapter}'s champion "
                f"{alias.version}: promote an adapter of another revision first"
            )
    router = HAProxyRuntime(config.router.admin)
    share = router.shares(healthy_only=False).get(set_name)
    if share is None:
        raise PromotionError(f"the router has no replica set {set_name}")
    if share > 0:
        raise PromotionError(
            f"replica set {set_name} still takes {share:g}% of the requests: move them first "
            "(a promotion does; `slmops serve sync` sends all to the champion's set)"
        )
    if drain_s:
        log(f"waiting {drain_s:g}s for requests still in flight on replica set {set_name}")
        time.sleep(drain_s)
    return router.remove_set(set_name)
