"""Promotion of an adapter version to every vLLM replica, rollback, and reconcile.

Names. Each adapter version is served under an immutable, content-addressed name
(`support-bot@<sha of its weights>`), never reloaded with other weights. Clients call the
stable name (`support-bot`), which promotion moves with vLLM's in-place load: the name keeps
answering while its weights change, so no request fails.

Promotion, two phases, all replicas or none:
  preflight (nothing touched): a passing gate verdict against the current champion; the
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

    from slmops.serving.promotion import promote
    result = promote(store, "support-bot", "challenger", config,
                     suites="examples/support-bot/evals")
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from slmops.errors import ClaimHeldError, ConfigError, ConflictError, SlmopsError, StoreError
from slmops.suites.spec import load_suites
from slmops.evaluation.verdicts import champion_label, find_verdict, verdict_answers
from slmops.serving.client import (
    Replica,
    RouterSettings,
    ServingConfig,
    ServingError,
    VLLMClient,
    VLLMGenerator,
)
from slmops.serving.leases import being_gated
from slmops.store.audit import AuditLog
from slmops.store.base import ObjectStore
from slmops.store.claims import Claim, holding, try_claim
from slmops.store.hashing import sha256_bytes, sha256_file
from slmops.store.manifest import Manifest, Trigger
from slmops.store.versions import ADAPTERS, CHAMPION, VersionedArtifact
from slmops.store.artifacts import ADAPTER_FILES

CLAIM_TTL = 600.0
# How long a promotion, rollback or sync waits for another one of the same adapter (each
# takes seconds, plus the drain before unloading), and how often it looks.
SERVING_WAIT_S = 300.0
SERVING_POLL_S = 2.0
Log = Callable[[str], None]


class PromotionError(SlmopsError):
    """A promotion or rollback was refused or undone; the message says why and where."""


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


@dataclass
class Staged:
    """An adapter version copied to the shared folder the replicas load from."""

    version: str
    manifest: Manifest
    name: str
    path: Path
    rank: int
    # The gate's answers for this version that passed on the format suite (case id -> answer):
    # the smoke test's golden prompts. None: the verdict was stored without its answers.
    gated: dict[str, str] | None = None


@dataclass
class _Clients:
    config: ServingConfig
    by_url: dict[str, VLLMClient] = field(default_factory=dict)

    def __iter__(self) -> Iterator[VLLMClient]:
        return iter(self.by_url.values())


def serving_name(adapter: str, manifest: Manifest) -> str:
    """`<adapter>@<10 hex>`: a hash of the served files' hashes, so a name means one set of
    weights forever (two versions with identical weights share it)."""
    hashes = []
    for path in ADAPTER_FILES:
        try:
            hashes.append(f"{path}:{manifest.file(path).sha256}")
        except KeyError:
            raise PromotionError(
                f"adapter {adapter} version {manifest.version} has no {path} in the store: it "
                "cannot be served (a PEFT adapter folder holds adapter_config.json and "
                "adapter_model.safetensors)"
            ) from None
    return f"{adapter}@{sha256_bytes(chr(10).join(hashes).encode())[:10]}"


def stage(store: ObjectStore, adapter: str, version: str, adapter_dir: str | Path) -> Staged:
    """Copy the served files of `adapter@version` to `<adapter_dir>/<serving name>/`, each
    checked against the manifest's sha256 (an existing copy is re-checked, and replaced whole
    if it differs), then check what vLLM would refuse."""
    art = VersionedArtifact(store, ADAPTERS, adapter)
    manifest = art.manifest(version)
    name = serving_name(adapter, manifest)
    root = Path(adapter_dir).expanduser().resolve()
    dest = root / name
    expected = {p: manifest.file(p).sha256 for p in ADAPTER_FILES}
    if not (dest.is_dir() and all(_same(dest / p, h) for p, h in expected.items())):
        tmp = root / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for rel in ADAPTER_FILES:
                store.get_file(
                    f"{art.version_prefix(version)}/{rel}", tmp / rel, sha256=expected[rel]
                )
        except StoreError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PromotionError(
                f"cannot copy {adapter}@{version} from {store.uri}: {exc}"
            ) from exc
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    rank = _check_servable(dest, f"{adapter}@{version}")
    return Staged(version=version, manifest=manifest, name=name, path=dest, rank=rank)


def _same(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def _check_servable(folder: Path, what: str) -> int:
    from safetensors import safe_open

    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("modules_to_save"):
        raise PromotionError(
            f"{what} trains modules_to_save {config['modules_to_save']}: vLLM cannot load those; "
            "retrain without modules_to_save"
        )
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as fh:
        whole = [k for k in fh.keys() if "lm_head" in k or "embed_tokens" in k]  # noqa: SIM118
    if whole:
        raise PromotionError(
            f"{what} carries full {whole[0].split('.')[-2]} weights ({len(whole)} tensors): vLLM "
            "serves LoRA matrices only; retrain with target_modules that exclude lm_head"
        )
    return _rank(config, what)


def _rank(config: dict[str, Any], what: str) -> int:
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise PromotionError(f"{what}: adapter_config.json has no valid rank 'r' ({rank!r})")
    return rank


def _base_of(manifest: Manifest) -> tuple[str, str]:
    base = manifest.trained_on()
    return base.name, str(base.version)


def serves_base(replica: Replica, manifest: Manifest) -> bool:
    model, revision = _base_of(manifest)
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
    model, revision = _base_of(manifest)
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


def _check_replicas(config: ServingConfig, manifest: Manifest, rank: int, what: str) -> None:
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


def _connect(config: ServingConfig, manifest: Manifest) -> _Clients:
    """A client per replica the adapter is loaded onto, each checked reachable and serving
    its base model."""
    clients, model = _Clients(config), _base_of(manifest)[0]
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


def _smoke_failures(scores: dict[str, float]) -> list[str]:
    from slmops.suites.scorers import ALL_VALID

    return [m for m, v in scores.items() if v < 1.0 and (m == ALL_VALID or "no_" in m)]


def smoke_prompts(
    suites: str | Path, count: int, gated: dict[str, str] | None = None
) -> tuple[list[Any], Any]:
    """`count` cases of the format suite and a scorer for them: the first ones the gate saw
    this version answer in the format (`gated`), or the first ones when that is not known.
    A case the gated model itself got wrong proves nothing about the load."""
    from slmops.suites.scorers import Scorer

    loaded = load_suites(suites)
    names = [n for n, spec in loaded.config.suites.items() if spec.kind == "format"]
    if not names:
        raise ConfigError(f"{suites}: no suite of kind 'format' to take smoke-test prompts from")
    cases = loaded.suite_cases(names[0])
    if gated:
        passed = [c for c in cases if c.id in gated]
        cases = passed or cases
    return cases[:count], Scorer(loaded.config, loaded.schema_doc)


def gated_answers(answers: list[Any] | None) -> dict[str, str] | None:
    """The gate's answers (its answers.jsonl rows) that pass the smoke test's rules, by case."""
    if answers is None:
        return None
    # (a case the gate did not score is no evidence either way)
    return {
        a.id: a.candidate
        for a in answers
        if a.candidate_scores and not _smoke_failures(a.candidate_scores)
    }


def _smoke(client: VLLMClient, staged: Staged, suites: str | Path, config: ServingConfig) -> int:
    cases, scorer = smoke_prompts(suites, config.smoke_cases, staged.gated)
    gen = VLLMGenerator(client, staged.name, max_new_tokens=config.max_new_tokens)
    replies = gen.generate([c.messages for c in cases])
    for case, reply in zip(cases, replies, strict=True):
        failed = _smoke_failures(scorer.score(case, reply))
        if failed:
            seen = (staged.gated or {}).get(case.id)
            raise PromotionError(
                f"smoke test on {client.url}: {staged.name} answered golden prompt {case.id} "
                f"with {reply[:120]!r}, which fails {', '.join(failed)}"
                + (
                    f"; the gate saw this version answer it {seen[:120]!r}: the served "
                    "adapter does not behave as the one the gate judged"
                    if seen is not None
                    else ""
                )
            )
    return len(cases)


def _audit(
    store: ObjectStore, event: str, adapter: str, trigger: Trigger | None, **kw: Any
) -> None:
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
    _audit(
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


def preflight(
    store: ObjectStore, adapter: str, version: str, config: ServingConfig
) -> tuple[Staged, str | None, _Clients]:
    """Every check that needs no change on a server, cheapest first. Returns the staged
    adapter, the current champion version, and a client per replica."""
    art = VersionedArtifact(store, ADAPTERS, adapter)
    resolved = art.version_of(version)
    what = f"{adapter}@{resolved}"
    manifest = art.manifest(resolved)
    serving_name(adapter, manifest)  # both served files are in the manifest
    rank = _rank(json.loads(art.read_file(resolved, "adapter_config.json")), what)
    _check_replicas(config, manifest, rank, what)
    champion = champion_label(store, adapter, "auto")
    if champion == resolved:
        raise PromotionError(f"{what} is the champion already; `slmops serve sync` re-applies it")
    verdict = find_verdict(store, adapter, resolved, champion)
    against = f"champion {champion}" if champion else "floors only (there is no champion yet)"
    if verdict is None:
        raise PromotionError(
            f"{what} has no gate verdict against {against}: run `slmops gate {what}` first "
            "(promotion needs a passing one)"
        )
    if not verdict.passed:
        raise PromotionError(
            f"{what} failed the gate against {against}: " + "; ".join(verdict.reasons)
        )
    staged = stage(store, adapter, resolved, config.adapter_dir)
    staged.gated = gated_answers(verdict_answers(store, adapter, resolved, champion))
    clients = _connect(config, manifest)
    return staged, champion, clients


def promote(
    store: ObjectStore,
    adapter: str,
    version: str,
    config: ServingConfig,
    *,
    suites: str | Path,
    trigger: Trigger | None = None,
    log: Log = lambda _: None,
) -> PromotionResult:
    """Promote `adapter@version` (a version or alias, e.g. challenger) to every replica."""
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    with ExitStack() as stack:
        try:
            stack.enter_context(serving_claim(store, adapter, "promotion", log))
            config = config.current()
            staged, champion, clients = preflight(store, adapter, version, config)
        except (PromotionError, StoreError, ConfigError) as exc:
            _audit(
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
        _audit(
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
    clients: _Clients,
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
            loaded.smoke[client.url] = _smoke(client, staged, suites, clients.config)
        timings["smoke"] = time.perf_counter() - tick
        log(f"phase 1: {staged.name} loaded, listed and answering on {len(loaded.smoke)} replicas")
        return loaded
    except (SlmopsError, OSError) as exc:
        undone = _unload_quietly(loaded.replicas, staged.name)
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


def _unload_quietly(clients: list[VLLMClient], name: str) -> list[str]:
    done = []
    for client in clients:
        try:
            client.unload(name)
            done.append(client.url)
        except ServingError:
            pass  # unreachable now: `serve sync` removes names the store does not know
    return done


def _move_stable(clients: list[VLLMClient], adapter: str, path: Path) -> list[VLLMClient]:
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
    clients: _Clients,
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
        undone = _unload_quietly(loaded.replicas, staged.name)
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
        moved = _move_stable(list(clients), adapter, staged.path)
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
                _move_stable(moved, adapter, Path(root).resolve())
            else:  # a new replica set (another base revision): the old champion never ran here
                for client in moved:
                    client.unload(adapter)
        _unload_quietly(loaded.replicas, staged.name)
    except (SlmopsError, OSError, KeyError) as exc:
        return (
            f"Restoring failed too ({exc}): run `slmops serve sync {adapter}` once the replicas "
            "are reachable; it makes them serve what the champion alias says"
        )
    return f"The champion alias and {len(moved)} replica(s) were put back"


def shift_traffic(
    settings: RouterSettings,
    target: str,
    log: Log = lambda _: None,
    *,
    instant: bool = False,
    urls: list[str] | None = None,
) -> dict[str, float]:
    """Move the stable name's requests onto replica set `target` through the router: in the
    canary steps (or at once: `instant`, for a rollback), each watched for `step_s`; when the
    share of the target's requests that failed during a step exceeds `max_error_rate`, the
    shares go back to what they were and the error says so. `urls`: the set's replicas as the
    serving config lists them, added to the router (with no traffic) if it lacks them, so a
    new set needs no step of its own. Returns the shares afterwards."""
    from slmops.serving.router import HAProxyRuntime

    router = HAProxyRuntime(settings.admin)
    if urls:
        router.add_set(target, urls)
    start = router.shares(healthy_only=False)
    if target not in start:
        raise PromotionError(
            f"replica set {target} is not in the router ({settings.admin}; sets: "
            f"{', '.join(start) or 'none'}): add its replicas to the router first"
        )
    if start[target] >= 100:
        return start
    router.wait_up(target)
    others = {name: share for name, share in start.items() if name != target and share > 0}
    total = sum(others.values())
    steps = [100.0] if instant or not total else [s for s in settings.canary if s > start[target]]
    servers = [s.name for s in router.sets()[target]]
    try:
        _canary(router, settings, target, servers, start, others, steps, instant, log)
    except (SlmopsError, OSError):
        try:
            router.set_shares(start)
        except (SlmopsError, OSError) as exc:
            log(f"could not put the router's shares back ({exc}): `slmops serve sync` does it")
        raise
    return router.shares(healthy_only=False)


def _canary(
    router: Any,
    settings: RouterSettings,
    target: str,
    servers: list[str],
    start: dict[str, float],
    others: dict[str, float],
    steps: list[float],
    instant: bool,
    log: Log,
) -> None:
    total = sum(others.values())
    for share in steps:
        split = {target: share, **{n: (100 - share) * v / total for n, v in others.items()}}
        before = router.counters()
        router.set_shares(split)
        log(f"traffic: replica set {target} takes {share:g}% of the requests")
        if instant:
            break
        time.sleep(settings.step_s)
        after = router.counters()
        sent = sum(after[n][0] - before.get(n, (0, 0))[0] for n in servers)
        failed = sum(after[n][1] - before.get(n, (0, 0))[1] for n in servers)
        if sent >= max(settings.min_requests, 1) and failed / sent > settings.max_error_rate:
            raise PromotionError(
                f"replica set {target} failed {failed} of {sent} requests at {share:g}% of the "
                f"traffic (more than max_error_rate {settings.max_error_rate:g}): the traffic "
                f"went back to {', '.join(f'{n} {v:g}%' for n, v in start.items() if v)}"
            )
        if sent < settings.min_requests:
            raise PromotionError(
                f"replica set {target} answered {sent} requests at {share:g}% of the traffic, "
                f"fewer than min_requests {settings.min_requests} to judge it by: the traffic "
                "went back"
            )
        if settings.max_latency_ratio and sent:
            _judge_latency(router, settings.max_latency_ratio, target, servers, share)


def _judge_latency(
    router: Any, ratio: float, target: str, servers: list[str], share: float
) -> None:
    times = router.response_ms()
    new = [t for n, t in times.items() if n in servers and t]
    old = [t for n, t in times.items() if n not in servers and t]
    if new and old:
        new_ms, old_ms = sum(new) / len(new), sum(old) / len(old)
        if new_ms > ratio * old_ms:
            raise PromotionError(
                f"replica set {target} answered in {new_ms:.0f} ms on average at {share:g}% of "
                f"the traffic, more than max_latency_ratio {ratio:g} x the other sets' "
                f"{old_ms:.0f} ms: the traffic went back"
            )


def _drain(
    adapter: str, keep: set[str | None], clients: _Clients, drain_s: float, log: Log
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
        _check_replicas(config, staged.manifest, staged.rank, f"{adapter}@{target}")
        clients = _connect(config, staged.manifest)
        try:
            for client in clients:  # the versioned name back first, if a restart lost it
                if staged.name not in client.adapters():
                    client.load(staged.name, staged.path)
            art.rollback(CHAMPION, reason="rollback", trigger=trigger)
            try:
                _move_stable(list(clients), adapter, staged.path)
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
        _audit(
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
    """Make every replica serve what the store says: the champion under its versioned and
    the stable name, the previous champion under its versioned name, no other version. A
    replica that cannot be reached is reported, and the others are still fixed."""
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
        _check_replicas(config, champ.manifest, champ.rank, f"{adapter}@{alias.version}")
        prev = (
            stage(store, adapter, alias.history[-1].version, config.adapter_dir)
            if alias.history
            else None
        )
        want = {champ.name: champ.path, adapter: champ.path}
        # The previous champion stays loaded for an instant rollback, unless it was trained on
        # another base revision (after a base-model release it cannot run on these replicas).
        if prev is not None and _base_of(prev.manifest) == _base_of(champ.manifest):
            want[prev.name] = prev.path
        champ_set = target_set(config, champ.manifest)
        for name, replicas in config.sets().items() if champ_set else [("", config.replicas)]:
            wanted = want
            if champ_set and name != champ_set:
                # Another base revision's set, kept for a rollback across revisions: it serves
                # the previous champion when that was trained on its revision; else it is left
                # as it is (it takes no traffic).
                if prev is None or not all(serves_base(r, prev.manifest) for r in replicas):
                    log(f"replica set {name}: serves neither champion's base; left as it is")
                    continue
                wanted = {prev.name: prev.path, adapter: prev.path}
            for replica in replicas:
                with VLLMClient(replica, timeout=config.timeout_s) as client:
                    report.drift.extend(_sync_one(client, adapter, wanted, log, store))
        if config.router is not None and champ_set:
            urls = [r.url for r in config.sets()[champ_set]]
            report.drift.extend(_sync_router(config.router, champ_set, urls, log))
    _audit(
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
            "the serving config has no router: replica sets exist only behind one (README: "
            "'Replica sets behind a router')"
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
