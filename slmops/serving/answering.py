"""Answers from the serving engine, for the gate and `slmops assess`: the model judged where
it is served, with the serving numerics.

Each adapter version answers on the replica set of its base revision under its
content-addressed serving name (`support-bot@<sha>`, the name promotion loads first), never
under the stable name clients call: client traffic keeps its weights while a candidate is
judged beside it. A name the replicas did not serve before is loaded for the run and unloaded
when it ends (`close`, or the `with` block); a name they serve already (the champion, kept
for rollback) is used as it is. The base model alone answers under its served name.

    with ServedBackend(store, load_serving_config("serving.yaml")) as backend:
        record = evaluate_adapter(store, "support-bot", "latest", backend=backend, ...)

Without replicas, `EngineBackend` starts a vLLM engine for the run (on the GPU when there is
one) and stops it at the end.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError
from slmops.generation import Generator, GeneratorBackend, TransformersBackend, Weights
from slmops.serving.client import (
    Replica,
    ServingConfig,
    ServingError,
    VLLMClient,
    VLLMGenerator,
    load_serving_config,
)
from slmops.serving.engine import (
    OwnEngine,
    engine_python,
    engine_version,
    gpu_present,
    served_dtype,
)
from slmops.serving.leases import gates_asking, gating_lease, hand_over, loading, take_over
from slmops.serving.staging import stage
from slmops.store.base import ObjectStore
from slmops.store.claims import holding
from slmops.store.manifest import Manifest
from slmops.store.versions import ADAPTERS, CHAMPION, VersionedArtifact

log = logging.getLogger(__name__)


@dataclass
class _Asked:
    """A served name a run asked: its version, the replicas asked, this run's leases on it,
    and the replicas where this run loaded it."""

    manifest: Manifest
    clients: list[VLLMClient]
    leases: set[str] = field(default_factory=set)
    loaded: set[str] = field(default_factory=set)


class ServedBackend:
    """`GeneratorBackend` on the vLLM replicas of a serving config. `workers`: requests in
    flight per generator (vLLM batches them: on 2 CPU cores the example's 355 prompts took
    35 s with 8 in flight and 21 s with 32 through a LoRA adapter, 11 s and 6 s on the base)."""

    name = "vllm"

    def __init__(
        self,
        store: ObjectStore,
        config: ServingConfig,
        *,
        fallback: GeneratorBackend | None = None,
        workers: int = 32,
    ):
        """fallback: answers for weights no replica set serves (a new base revision whose set
        has not started); None: those are an error."""
        self.store, self.config, self.workers = store, config.current(), workers
        self.fallback = fallback
        self._clients: dict[str, VLLMClient] = {}
        self._asked: dict[str, _Asked] = {}  # served name -> what this run did with it
        self._leases = ExitStack()

    def __enter__(self) -> ServedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serves(self, weights: Weights) -> bool:
        return self._serving_set(weights) is not None

    def replicas(self, weights: Weights) -> list[Replica]:
        """The replicas that serve `weights`' base model at its revision: one set's (the
        first in config order), since a set is what a client's request reaches."""
        found = self._serving_set(weights)
        if found is not None:
            return found
        sets = ", ".join(
            f"{name} ({rs[0].model}@{rs[0].revision[:12]})"
            for name, rs in self.config.sets().items()
        )
        raise ConfigError(
            f"no replica set serves {weights.base}@{weights.revision[:12]} (sets: "
            f"{sets or 'none'}): start one on that revision (locally: `slmops stack up "
            "--roll`), or gate with --generator transformers"
        )

    def _serving_set(self, weights: Weights) -> list[Replica] | None:
        digest = None
        if weights.adapter is not None:
            base = next((i for i in weights.adapter.inputs if i.kind == "base-model"), None)
            digest = base.sha256 if base is not None else None
        for replicas in self.config.sets().values():
            if all(
                r.model == weights.base
                and (r.revision == weights.revision or bool(digest and r.weights == digest))
                for r in replicas
            ):
                return replicas
        return None

    def _client(self, replica: Replica) -> VLLMClient:
        if replica.url not in self._clients:
            self._clients[replica.url] = VLLMClient(replica, timeout=self.config.timeout_s)
        return self._clients[replica.url]

    def identity(self, weights: Weights) -> dict[str, Any]:
        if self.fallback is not None and not self.serves(weights):
            return self.fallback.identity(weights)
        replicas = self.replicas(weights)
        try:
            version = self._client(replicas[0]).version()
        except ServingError as exc:
            raise ConfigError(f"replica {replicas[0].url} is not usable: {exc}") from exc
        return {"backend": self.name, "version": version, "dtype": replicas[0].dtype}

    def generator(self, weights: Weights) -> Generator:
        if self.fallback is not None and not self.serves(weights):
            log.warning(
                "no replica set serves %s@%s: answering with %s instead",
                weights.base,
                weights.revision[:12],
                self.fallback.name,
            )
            return self.fallback.generator(weights)
        replicas = self.replicas(weights)
        clients = [self._client(r) for r in replicas]
        if weights.adapter is None:
            model = replicas[0].model
        else:
            manifest = weights.adapter
            staged = stage(self.store, manifest.name, manifest.version, self.config.adapter_dir)
            for replica in replicas:
                if staged.rank > replica.max_lora_rank:
                    raise ConfigError(
                        f"{manifest.name}@{manifest.version} has LoRA rank {staged.rank}, above "
                        f"replica {replica.url}'s --max-lora-rank {replica.max_lora_rank}"
                    )
            model = staged.name
            # A lease on the name while the gate asks it: `serve sync` leaves a name being
            # gated loaded (it unloads every other version that is not champion or previous),
            # and another gate done with it leaves it loaded for this one.
            with loading(self.store, manifest.name, model):
                lease = self._leases.enter_context(
                    holding(gating_lease(self.store, manifest, model))
                )
                asked = self._asked.setdefault(model, _Asked(manifest, clients))
                asked.leases.add(lease.key)
                for client in clients:
                    if model not in client.adapters():
                        client.load(model, staged.path)
                        asked.loaded.add(client.url)
                        log.info("loaded %s on %s for the run", model, client.url)
        return VLLMGenerator(
            clients,
            model,
            workers=self.workers,
            dtype=replicas[0].dtype,
            tokenizer=weights.base_path,
            version=self.identity(weights)["version"],
        )

    def close(self) -> None:
        """Unload what this run loaded, unless a promotion made it the champion meanwhile (a
        replica that is gone: `serve sync` cleans up) or another gate still asks it (the last
        gate done unloads it then), and give up the leases."""
        for name, asked in reversed(self._asked.items()):
            manifest = asked.manifest
            champion = VersionedArtifact(self.store, ADAPTERS, manifest.name).get_alias(CHAMPION)
            if champion is not None and champion.version == manifest.version:
                continue
            with loading(self.store, manifest.name, name):
                if gates_asking(self.store, manifest.name, name, besides=asked.leases):
                    if asked.loaded:
                        hand_over(self.store, manifest.name, name)
                    log.info("left %s loaded: another gate asks it", name)
                    continue
                if not asked.loaded and not take_over(self.store, manifest.name, name):
                    continue  # served before any gate asked it (a promotion, an operator)
                for client in asked.clients:
                    try:
                        if name in client.adapters():
                            client.unload(name)
                    except ServingError as exc:
                        log.warning("could not unload %s from %s: %s", name, client.url, exc)
        self._asked.clear()
        self._leases.close()
        for client in self._clients.values():
            client.close()
        self._clients.clear()


class EngineBackend(ServedBackend):
    """`ServedBackend` on vLLM engines this run starts itself (one per base revision asked
    for, on loopback: slmops.serving.engine.OwnEngine), stopped when it ends: the gate on the
    serving engine where no replicas are configured (a GPU work pool, a laptop)."""

    def __init__(
        self, store: ObjectStore, *, say: Callable[[str], None] = log.info, workers: int = 32
    ):
        self.work = Path(tempfile.mkdtemp(prefix="slmops-engine-"))
        config = ServingConfig.model_construct(
            replicas=[], adapter_dir=str(self.work / "adapters"), timeout_s=300.0
        )
        super().__init__(store, config, workers=workers)
        self.say = say
        self.engines: list[OwnEngine] = []

    def identity(self, weights: Weights) -> dict[str, Any]:
        if self.serves(weights):
            return super().identity(weights)
        # Known without starting an engine: when every answer is stored, none starts.
        version = engine_version(engine_python())
        return {"backend": self.name, "version": version, "dtype": served_dtype(gpu_present())}

    def replicas(self, weights: Weights) -> list[Replica]:
        if not self.serves(weights):
            engine = OwnEngine(weights.base_path, served_name=weights.base, say=self.say)
            self.engines.append(engine)
            server = engine.start()
            self.config.replicas.append(
                Replica(
                    url=server.url,
                    model=weights.base,
                    revision=weights.revision,
                    max_lora_rank=engine.max_lora_rank,
                    dtype=engine.dtype,
                )
            )
        return super().replicas(weights)

    def close(self) -> None:
        try:
            super().close()
        finally:
            for engine in self.engines:
                engine.stop()
            self.engines.clear()
            shutil.rmtree(self.work, ignore_errors=True)


def serving_if_set(path: str | Path | None) -> ServingConfig | None:
    """The serving config at `path`, else at SLMOPS_SERVING; None when neither is set."""
    from slmops.config import get_settings

    chosen = path or get_settings().serving
    return load_serving_config(chosen) if chosen else None


def choose_backend(
    store: ObjectStore,
    generator: str,
    serving: ServingConfig | None,
    say: Callable[[str], None] = log.info,
) -> ServedBackend | None:
    """The served backend for `generator` (auto | vllm | transformers), or None for
    transformers. auto: vLLM when a serving config is set (transformers for weights no
    replica set serves), transformers otherwise; vllm: the configured replicas, or without a
    serving config a vLLM engine started for the run (`EngineBackend`)."""
    if generator not in ("auto", "vllm", "transformers"):
        raise ConfigError(f"generator {generator!r}: choose auto, vllm or transformers")
    if generator == "transformers" or (generator == "auto" and serving is None):
        return None
    if serving is None:
        return EngineBackend(store, say=say)
    fallback = TransformersBackend() if generator == "auto" else None
    return ServedBackend(store, serving, fallback=fallback)


@contextmanager
def answering_backend(
    store: ObjectStore,
    generator: str,
    serving: str | Path | None,
    say: Callable[[str], None] = log.info,
) -> Iterator[ServedBackend | None]:
    """`choose_backend` for the serving config at `serving` (else SLMOPS_SERVING), said
    aloud ("answers from vllm"), and closed when the block ends (what it loaded unloaded,
    an engine it started stopped). None: transformers."""
    backend = choose_backend(store, generator, serving_if_set(serving), say)
    say(f"answers from {backend.name if backend is not None else 'transformers'}")
    try:
        yield backend
    finally:
        if backend is not None:
            backend.close()
