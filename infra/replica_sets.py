"""The local stack's vLLM replica sets and the router in front of them: one set per base
revision, each serving a copy of the model folder at that revision (what serving.yaml says it
runs, even after the folder changes); a set started beside the serving one on a roll, the
router's sets kept in step, serving.yaml written for promotion, and a set retired once it takes
no traffic."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from infra.processes import HOST, _http_ok, _is_ours, _stop_group
from infra.stack import Component, ReplicaSet, StackError
from slmops.errors import SlmopsError

if TYPE_CHECKING:
    from infra.stack import LocalStack


class ReplicaSets:
    """The replica sets of one `LocalStack` (its processes, state and log)."""

    def __init__(self, stack: LocalStack):
        self.stack, self.config, self.log = stack, stack.config, stack.log
        self.state_dir = stack.state_dir

    def router_ready(self) -> bool:
        from slmops.serving.router import HAProxyRuntime

        try:
            HAProxyRuntime(self.config.router_admin).servers()
        except SlmopsError:
            return False
        return True

    def replica_name(self, port: int) -> str:
        return f"vllm-{port - self.config.vllm_port}"

    def start(
        self, comps: dict[str, Component], roll: bool
    ) -> tuple[list[Component], dict[str, ReplicaSet], str, float]:
        """Start the vLLM replicas not running (all at once: about 35 s); return them, the
        replica sets and the one production runs on, for `start_router` and `await_ready`.

        A set serves a copy of the model folder at one revision, so what its replicas run is
        what serving.yaml says even after the folder changes. After a base-model release the
        serving set keeps the revision it serves: the champion's adapter was trained on it and
        would not load on the new one. `roll` starts a set on the folder's revision beside it
        (the demo does once the gate passed; `slmops stack up --roll`); a promotion then moves
        the traffic, and `retire` stops the old set. A release that changed only the model
        card (same weights digest) starts nothing either way: the set serves the new revision
        as is. Every recorded set is kept running (a replica that died restarts on its port)
        until it is retired."""
        from infra import vllm_server
        from slmops.base_models import WatchedModel, current_revision, materialize, snapshot_weights

        cfg = self.config
        model_dir = (cfg.project_dir / cfg.model_dir).absolute()
        if not cfg.model_source and not (model_dir / "config.json").exists():
            from examples.tiny_base.build import build_tiny_model

            self.log(f"building the tiny base model in {model_dir}")
            build_tiny_model(model_dir)
        sets = self.stack.replica_sets()
        legacy = [n for n in comps if n.startswith("vllm-") and not comps[n].set]
        for name in legacy:  # recorded before replica sets existed: started again in one
            self.log(f"restarting {name} in a replica set")
            _stop_group(comps.pop(name), signal.SIGTERM, 60)
        newest = current_revision(WatchedModel(name=cfg.served_model, source=cfg.source))
        revision = newest.revision
        snapshot = materialize(cfg.source, revision, self.state_dir / "models")
        weights = snapshot_weights(snapshot)
        served = self.served_snapshot(cfg.source)
        served_weights = snapshot_weights(served[1]) if served else weights
        if not roll and served is not None and served[0] != revision and served_weights != weights:
            self.log(
                f"the model folder is at revision {revision[:12]}; the vLLM replicas keep "
                f"serving {served[0][:12]}, which the champion's adapter was trained on "
                "(`slmops stack up --roll` starts its replica set once the new revision's "
                "adapter passed the gate)"
            )
            revision, snapshot = served
            weights = served_weights
        target = next((rs for rs in sets.values() if rs.weights == weights), None)
        if target is None:
            taken = {p for rs in sets.values() for p in rs.ports}
            ports = [p for p in range(cfg.vllm_port, cfg.vllm_port + 1000) if p not in taken]
            target = ReplicaSet(revision[:12], revision, weights, str(snapshot), ports[: cfg.vllm])
            if sets:
                self.log(
                    f"starting replica set {target.name} ({cfg.served_model}@{revision[:12]}) "
                    f"beside {', '.join(sets)}, which keeps the traffic until a promotion "
                    "moves it"
                )
            sets[target.name] = target
        elif target.revision != revision:
            self.log(
                f"replica set {target.name} already serves the weights of {revision[:12]} "
                "(the release changed only the model card): kept running"
            )
            target.revision = revision
        active = next((n for n, rs in sets.items() if rs.weights == served_weights), target.name)
        self.stack._save(comps, sets)
        starting = []
        threads = cfg.vllm_threads or vllm_server.threads_per_replica(2 * cfg.vllm)
        for rs in sets.values():
            for port in rs.ports:
                name = self.replica_name(port)
                if name in comps:
                    continue
                self.stack._refuse_busy_port(port, f"vLLM replica {name}", "--vllm-port")
                cmd = vllm_server.command(Path(rs.snapshot), port, served_name=cfg.served_model)
                self.log(
                    f"starting vLLM replica {name} of set {rs.name} on http://{HOST}:{port} "
                    f"({cfg.served_model}@{rs.revision[:12]}, {threads} thread(s))"
                )
                env = vllm_server.environment(threads)
                comp = self.stack._spawn(name, cmd, f"http://{HOST}:{port}", env)
                comp.set = rs.name
                comps[name] = comp
                self.stack._save(comps, sets)
                starting.append(comp)
        return starting, sets, active, time.time()

    def start_router(
        self,
        comps: dict[str, Component],
        sets: dict[str, ReplicaSet],
        active: str,
        env: dict[str, str],
    ) -> None:
        """HAProxy in front of the replica sets, `active` taking every request (a restarted
        router starts so; `serve sync` moves the weights onto the champion's set if they
        differ). A router already running is left as it is: new sets join it at weight 0 in
        `await_ready`."""
        from infra import haproxy

        if "router" in comps:
            return
        cfg = self.config
        self.stack._refuse_busy_port(cfg.router_port, "router (HAProxy)", "--router-port")
        try:
            config, _ = haproxy.write_config(
                cfg.router_dir,
                cfg.router_port,
                {name: [f"http://{HOST}:{p}" for p in rs.ports] for name, rs in sets.items()},
                {active: 100},
            )
            cmd = haproxy.command(config)
        except SlmopsError as exc:
            raise StackError(f"cannot start the router: {exc}") from exc
        self.log(f"starting the router (HAProxy) on {cfg.router_url}: the stable name's address")
        comp = self.stack._spawn("router", cmd, cfg.router_url, env)
        comps["router"] = comp
        self.stack._save(comps)
        self.stack._wait(comp, self.router_ready, 30)

    def served_snapshot(self, source: str) -> tuple[str, Path] | None:
        """The base revision production runs on, and its cached copy: the revision the
        champions of this model's adapters in the stack's store were trained on (when they
        agree), or serving.yaml's when it has the same weights (a model-card release moved the
        replicas onto it) or there is no champion. None: neither, or its copy is gone."""
        from slmops.base_models import materialize, snapshot_weights
        from slmops.errors import ConfigError, SlmopsError
        from slmops.serving.client import load_serving_config
        from slmops.store.versions import ADAPTERS, artifacts

        def cached(revision: str | None) -> tuple[str, Path] | None:
            if not revision:
                return None
            try:
                return revision, materialize(source, revision, self.state_dir / "models")
            except ConfigError:
                return None

        champion = None
        try:
            store = self.stack._store()
            bases = set()
            for art in artifacts(store, ADAPTERS):
                alias = art.get_alias("champion")
                base = art.manifest(alias.version).base_model() if alias else None
                if base is not None and base.name == self.config.served_model and base.version:
                    bases.add(base.version)
            champion = cached(bases.pop()) if len(bases) == 1 else None
        except SlmopsError as exc:
            self.log(
                f"could not read the champions from the stack's store ({exc}): "
                "the replicas follow serving.yaml"
            )
        serving = None
        if self.config.serving_file.is_file():
            try:
                replicas = load_serving_config(self.config.serving_file).replicas
                serving = cached(replicas[0].revision if replicas else None)
            except ConfigError as exc:
                self.log(f"ignoring the unreadable serving config: {exc}")
        if champion is None or (
            serving is not None and snapshot_weights(serving[1]) == snapshot_weights(champion[1])
        ):
            return serving or champion
        return champion

    def await_ready(
        self, starting: list[Component], sets: dict[str, ReplicaSet], active: str, started: float
    ) -> None:
        """Wait for the replicas `start` started, make sure the router has every set
        (a new one joins at weight 0: no traffic), then write the serving config that
        promotion reads."""
        from slmops.serving.router import HAProxyRuntime

        deadline, note = started + 400, started
        for comp in starting:
            health = f"{comp.url}/health"
            self.stack._wait(
                comp,
                lambda health=health: _http_ok(health) is not None,  # type: ignore[misc]
                max(deadline - time.time(), 1),
                on_wait=lambda: self.log(
                    f"waiting for vLLM ({time.time() - note:.0f}s; usually 30-60 s on 2 cores)"
                ),
            )
        router = HAProxyRuntime(self.config.router_admin)
        try:
            for name, rs in sets.items():
                router.add_set(name, [f"http://{HOST}:{p}" for p in rs.ports])
                # its replicas answer /health: the router's next check (1 s) finds them, and
                # the stable name answers when `up` returns
                router.wait_up(name, timeout=30)
        except SlmopsError as exc:
            raise StackError(f"router (HAProxy, {self.config.router_url}): {exc}") from exc
        self.write_serving(sets)
        if len(sets) > 1:
            shares = router.shares(healthy_only=False)
            self.log(
                "replica sets: "
                + ", ".join(f"{n} ({shares.get(n, 0):g}% of the traffic)" for n in sets)
            )

    def write_serving(self, sets: dict[str, ReplicaSet]) -> None:
        """serving.yaml: every set's replicas, the router in front of them."""
        import yaml

        cfg = self.config
        serving = {
            "replicas": [
                {
                    "url": f"http://{HOST}:{port}",
                    "model": cfg.served_model,
                    "revision": rs.revision,
                    "weights": rs.weights,
                    "set": rs.name,
                    "max_lora_rank": 16,
                    "dtype": "float32",  # infra/vllm_server.py's --dtype
                }
                for rs in sets.values()
                for port in rs.ports
            ],
            "adapter_dir": str(self.state_dir / "adapters"),
            "drain_s": 30,
            # One CPU replica per set: short canary steps (a production router takes minutes
            # per step, and the error rate of real traffic).
            "router": {
                "url": cfg.router_url,
                "admin": self.config.router_admin,
                "canary": [10, 50, 100],
                "step_s": 3,
                "max_error_rate": 0.01,
            },
        }
        tmp = cfg.serving_file.with_suffix(".tmp")
        tmp.write_text(
            "# Written by `slmops stack up --vllm N`: the local vLLM replica sets and their "
            "router.\n" + yaml.safe_dump(serving, sort_keys=False)
        )
        os.replace(tmp, cfg.serving_file)
        self.log(f"serving config: {cfg.serving_file}")

    def retire(self, name: str, *, drain_s: float = 0.0) -> list[str]:
        """Take replica set `name` out of the router (refused while it takes traffic or serves
        a champion's base revision), stop its replicas and drop it from serving.yaml; returns
        the replicas stopped. After it, a rollback to its revision is no longer instant."""
        from slmops.serving.client import load_serving_config
        from slmops.serving.reconcile import retire_set
        from slmops.store.versions import ADAPTERS, artifacts

        sets = self.stack.replica_sets()
        if name not in sets:
            raise StackError(
                f"the stack has no replica set {name!r}; it has {', '.join(sets) or 'none'}"
            )
        store = self.stack._store()
        adapters = [art.name for art in artifacts(store, ADAPTERS)]
        config = load_serving_config(self.config.serving_file)
        if name in config.sets():
            retire_set(config, store, name, adapters, drain_s=drain_s, log=self.log)
        comps = self.stack._load()
        stopped = []
        for port in sets[name].ports:
            comp = comps.pop(self.replica_name(port), None)
            if comp is not None and _is_ours(comp):
                self.log(f"stopping {comp.name} of replica set {name} (pid {comp.pid})")
                _stop_group(comp, signal.SIGTERM, 60)
                stopped.append(comp.name)
        del sets[name]
        self.stack._save(comps, sets)
        self.write_serving(sets)
        return stopped
