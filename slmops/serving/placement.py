"""Which replicas serve an adapter version: those running its base model at the revision it
was trained on (behind a router, the replica set of that revision), each checked reachable and
within its LoRA limits; and what every replica set should serve of an adapter (`desired`), the
one rule `serve status` diffs and `serve sync` applies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from slmops.errors import (
    PromotionError,
)
from slmops.serving.client import (
    Replica,
    ServingConfig,
    ServingError,
    VLLMClient,
)
from slmops.serving.staging import serving_name
from slmops.store.manifest import Manifest


def base_of(manifest: Manifest) -> tuple[str, str]:
    base = manifest.trained_on()
    return base.name, str(base.version)


def serves_base(replica: Replica, manifest: Manifest) -> bool:
    model, revision = base_of(manifest)
    base = next(i for i in manifest.inputs if i.kind == "base-model")
    # Another revision with the same weights digest (a model-card-only release) serves the
    # adapter as its own revision does.
    same_weights = bool(base.sha256) and replica.weights == base.sha256
    return replica.model == model and (replica.revision == revision or same_weights)


def target_set(config: ServingConfig, manifest: Manifest) -> str | None:
    """Behind a router: the replica set whose every replica serves the adapter's base (the
    first in config order). None: no set does, or there is no router."""
    if config.router is None:
        return None
    return next(
        (
            name
            for name, replicas in config.sets().items()
            if all(serves_base(r, manifest) for r in replicas)
        ),
        None,
    )


def target_replicas(config: ServingConfig, manifest: Manifest) -> list[Replica]:
    """The replicas an adapter version is loaded onto: its base revision's set behind a
    router, every replica without one."""
    name = target_set(config, manifest)
    return config.sets()[name] if name is not None else list(config.replicas)


def base_mismatch(config: ServingConfig, manifest: Manifest, what: str) -> str | None:
    """Why the replicas cannot serve this adapter version's base (None: they can)."""
    model, revision = base_of(manifest)
    if config.router is not None:
        if target_set(config, manifest) is not None:
            return None
        sets = ", ".join(
            f"{name} ({rs[0].model}@{rs[0].revision[:12]})" for name, rs in config.sets().items()
        )
        return (
            f"{what} was trained on {model}@{revision[:12]}, but no replica set behind the "
            f"router serves it (sets: {sets}): start a set on that revision first (locally: "
            "`slmops stack up --roll`)"
        )
    for replica in config.replicas:
        if not serves_base(replica, manifest):
            return (
                f"{what} was trained on {model}@{revision[:12]}, but replica {replica.url} "
                f"serves {replica.model}@{replica.revision[:12]}: an adapter only works on its "
                "own base revision. Roll the replicas onto that revision first"
            )
    return None


def check_replicas(config: ServingConfig, manifest: Manifest, rank: int, what: str) -> None:
    """The configured facts: base model, revision and max rank of every replica."""
    mismatch = base_mismatch(config, manifest, what)
    if mismatch:
        raise PromotionError(mismatch)
    for replica in target_replicas(config, manifest):
        if rank > replica.max_lora_rank:
            raise PromotionError(
                f"{what} has LoRA rank {rank}, above replica {replica.url}'s "
                f"--max-lora-rank {replica.max_lora_rank}: retrain with rank <= "
                f"{replica.max_lora_rank} or raise the server's limit"
            )


@dataclass
class Clients:
    config: ServingConfig
    by_url: dict[str, VLLMClient] = field(default_factory=dict)

    def __iter__(self) -> Iterator[VLLMClient]:
        return iter(self.by_url.values())


def connect(config: ServingConfig, manifest: Manifest) -> Clients:
    """A client per replica the adapter is loaded onto, each checked reachable and serving
    its base model."""
    clients, model = Clients(config), base_of(manifest)[0]
    for replica in target_replicas(config, manifest):
        client = VLLMClient(replica, timeout=config.timeout_s)
        clients.by_url[replica.url] = client
        try:
            served = client.base_models()
        except ServingError as exc:
            raise PromotionError(f"replica {replica.url} is not usable: {exc}") from exc
        if model not in served:
            raise PromotionError(
                f"replica {replica.url} serves {', '.join(served) or 'nothing'}, not the base "
                f"model {model}: fix the serving config or the server's --served-model-name"
            )
    return clients


def replica_groups(config: ServingConfig) -> dict[str, list[Replica]]:
    """The replicas by set behind a router; without one, one group ("") of them all."""
    return config.sets() if config.router is not None else {"": list(config.replicas)}


def desired(
    config: ServingConfig, adapter: str, champion: Manifest, previous: Manifest | None
) -> dict[str, dict[str, Manifest] | None]:
    """What each replica group (`replica_groups`) should serve of `adapter`: every name to
    keep loaded, the stable name included, with the version it serves; None: the group is left
    as it is. The one rule `serve status` diffs against and `serve sync` applies.

    The champion's set (its base revision's) serves the champion under its versioned and the
    stable name, and the previous champion under its versioned name for an instant rollback,
    unless that was trained on another base revision (after a base-model release it cannot
    run there). Another revision's set, kept for a rollback across revisions, serves the
    previous champion when that was trained on its revision; else it is left as it is (it
    takes no traffic)."""
    want = {serving_name(adapter, champion): champion, adapter: champion}
    if previous is not None and base_of(previous) == base_of(champion):
        want[serving_name(adapter, previous)] = previous
    champ_set = target_set(config, champion)
    out: dict[str, dict[str, Manifest] | None] = {}
    for name, replicas in replica_groups(config).items():
        if config.router is None or name == champ_set:
            out[name] = want
        elif previous is not None and all(serves_base(r, previous) for r in replicas):
            out[name] = {serving_name(adapter, previous): previous, adapter: previous}
        else:
            out[name] = None
    return out
