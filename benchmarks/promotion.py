"""Promotion benchmark: how long a promotion takes, step by step, on one and on two real vLLM
replicas, and how many client requests fail while it (and a rollback) happens.

    python -m benchmarks.promotion                    # builds a tiny model, trains an adapter
    python -m benchmarks.promotion --base DIR --adapter DIR --rounds 5

Starts two vLLM replicas (CPU build, `make vllm`) on loopback, stores the adapter and copies
of it with other bytes (so every promotion loads a new name) in a scratch store, gates each
against the champion, and promotes them in turn. Prints, from one run:
- per step (preflight, load, list-check, smoke test, flip) the median seconds on 1 and on 2
  replicas; load + list + flip per replica against a bare `/v1/load_lora_adapter` call
  measured in the same run (the ratio is the cost of the checks around the raw load);
- requests sent to the stable name by 4 client threads during promotions and rollbacks, and
  how many failed (goal: 0).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import yaml

from benchmarks import free_port

ROOT = Path(__file__).resolve().parent.parent
EVALS = ROOT / "examples" / "support-bot" / "evals"
ADAPTER = "bench-bot"


def _variant(source: Path, dest: Path, factor: float) -> Path:
    """The adapter with its LoRA B scaled by `factor`: the same answers, other bytes."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, dest)
    weights = load_file(str(dest / "adapter_model.safetensors"))
    save_file(
        {k: v * factor if "lora_B" in k else v for k, v in weights.items()},
        str(dest / "adapter_model.safetensors"),
    )
    return dest


def _suites(dest: Path) -> Path:
    """The format suite alone, with a policy that only asks for valid answers: the gate here
    is a precondition of promotion, not what is measured."""
    dest.mkdir(parents=True)
    doc = yaml.safe_load((EVALS / "suites.yaml").read_text())
    doc["suites"] = {"format": doc["suites"]["format"]}
    shutil.copy(EVALS / "format.jsonl", dest / "format.jsonl")
    shutil.copy(EVALS / doc["schema"], dest / doc["schema"])
    (dest / "suites.yaml").write_text(yaml.safe_dump(doc))
    (dest / "policy.yaml").write_text(yaml.safe_dump({"floors": {"all.valid_format": 0.5}}))
    return dest


class _Load:
    """4 threads calling the stable name on every replica until stopped (bounded)."""

    def __init__(self, urls: list[str], prompt: list[dict[str, str]], limit: int = 5000):
        import httpx

        self.clients = [httpx.Client(base_url=u, timeout=30) for u in urls]
        self.prompt, self.limit = prompt, limit
        self.sent, self.failed, self.errors = 0, 0, []  # type: ignore[var-annotated]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(4)]

    def _run(self, i: int) -> None:
        import httpx

        client = self.clients[i % len(self.clients)]
        body = {"model": ADAPTER, "messages": self.prompt, "max_tokens": 8, "temperature": 0}
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and self.sent < self.limit and time.monotonic() < deadline:
            self.sent += 1
            try:
                response = client.post("/v1/chat/completions", json=body)
                ok = response.status_code == 200
            except httpx.HTTPError as exc:
                ok, response = False, exc  # type: ignore[assignment]
            if not ok:
                self.failed += 1
                self.errors.append(str(getattr(response, "text", response))[:200])

    def __enter__(self) -> _Load:
        for t in self.threads:
            t.start()
        time.sleep(1)  # traffic before the change ...
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1)  # ... and after it
        self.stop.set()
        for t in self.threads:
            t.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="base model folder (default: build tiny)")
    parser.add_argument("--adapter", type=Path, help="adapter folder trained on --base")
    parser.add_argument("--steps", type=int, default=150, help="training steps if no adapter")
    parser.add_argument("--rounds", type=int, default=3, help="promotions per replica count")
    args = parser.parse_args(argv)

    from benchmarks.gate import _tiny
    from infra.vllm_server import start, threads_per_replica, wait_ready
    from slmops.base_models import WatchedModel, current_revision
    from slmops.pipelines.gate import evaluate_adapter
    from slmops.pipelines.promotion import promote
    from slmops.serving.client import Replica, ServingConfig, VLLMClient
    from slmops.serving.reconcile import rollback, sync
    from slmops.store.local import LocalStore
    from slmops.store.manifest import InputRef, Manifest
    from slmops.store.versions import ADAPTERS, VersionedArtifact

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-promotion-"))
    servers = []
    try:
        base, adapter = (
            (args.base, args.adapter) if args.base and args.adapter else _tiny(work, args.steps)
        )
        revision = current_revision(WatchedModel(name="tiny", source=str(base))).revision
        print("starting 2 vLLM replicas (55-85 s) ...", flush=True)
        servers = [
            start(
                base,
                free_port(),
                work / f"vllm-{i}.log",
                served_name="tiny",
                threads=threads_per_replica(2),
            )
            for i in range(2)
        ]
        wait_ready(servers, on_wait=lambda note: print(" ", note, flush=True))
        replicas = [Replica(url=s.url, model="tiny", revision=revision) for s in servers]
        suites = _suites(work / "suites")
        store = LocalStore(work / "store")
        art = VersionedArtifact(store, ADAPTERS, ADAPTER)
        manifest = Manifest(
            kind="adapter",
            name=ADAPTER,
            inputs=[InputRef(kind="base-model", name="tiny", version=revision, uri=str(base))],
        )
        made = 0

        def candidate() -> str:
            nonlocal made
            made += 1
            folder = _variant(adapter, work / f"v{made}", 1 + made / 1000)
            version = art.publish(manifest, folder).version
            record = evaluate_adapter(
                store,
                ADAPTER,
                version,
                suites=suites,
                policy=suites / "policy.yaml",
                cache_dir=work / "cache",
                set_challenger=False,
            )
            assert record.verdict.passed, record.verdict.reasons
            return version

        # Baseline: the bare API call promotion wraps, on the same server and adapter.
        raw = []
        with VLLMClient(replicas[0]) as client:
            for i in range(5):
                tick = time.perf_counter()
                client.load(f"raw-{i}", adapter)
                raw.append(time.perf_counter() - tick)
                client.unload(f"raw-{i}")
        raw_load = statistics.median(raw)

        prompt = [
            {"role": "system", "content": "You are the Tidewell support assistant."},
            {"role": "user", "content": "How do I reset my password?"},
        ]
        rows: dict[int, list[dict[str, float]]] = {}
        load_stats: dict[str, list[int]] = {"promote": [0, 0], "rollback": [0, 0]}
        errors: list[str] = []
        for count in (1, 2):
            config = ServingConfig(
                replicas=replicas[:count],
                adapter_dir=str(work / "adapters"),
                drain_s=0,
                smoke_cases=3,
            )
            if art.get_alias("champion"):  # a replica new to the adapter gets the champion
                sync(store, ADAPTER, config)
            urls = [s.url for s in servers[:count]]
            for r in range(args.rounds):
                version = candidate()
                print(f"  {count} replica(s), round {r + 1}/{args.rounds}", flush=True)
                if art.get_alias("champion") is None:  # nothing to call yet: no load
                    result = promote(store, ADAPTER, version, config, suites=suites)
                else:
                    with _Load(urls, prompt) as load:
                        result = promote(store, ADAPTER, version, config, suites=suites)
                    load_stats["promote"][0] += load.sent
                    load_stats["promote"][1] += load.failed
                    errors.extend(load.errors)
                rows.setdefault(count, []).append(result.timings)
            with _Load(urls, prompt) as load:
                rolled = rollback(store, ADAPTER, config)
            errors.extend(load.errors)
            load_stats["rollback"][0] += load.sent
            load_stats["rollback"][1] += load.failed
            rows[count][-1]["rollback"] = rolled.timings["rollback"]
        _report(rows, raw_load, load_stats)
        if errors:
            print(f"first failed request: {errors[0]}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _report(
    rows: dict[int, list[dict[str, float]]], raw_load: float, load: dict[str, list[int]]
) -> None:
    steps = ["preflight", "load", "list", "smoke", "flip"]

    def median(count: int, step: str) -> float:
        return statistics.median(r.get(step, 0.0) for r in rows[count])

    print("\npromotion, median seconds per step (smoke generation reported apart):")
    print(f"  {'replicas':<9}" + "".join(f"{s:>11}" for s in steps) + f"{'rollback':>11}")
    for count in rows:
        cells = "".join(f"{median(count, s):>11.3f}" for s in steps)
        back = rows[count][-1].get("rollback", 0.0)
        print(f"  {count:<9}{cells}{back:>11.3f}")
    print(f"\nbaseline, bare /v1/load_lora_adapter: {raw_load * 1000:.1f} ms")
    for count in rows:
        per = (median(count, "load") + median(count, "list") + median(count, "flip")) / count
        print(
            f"  {count} replica(s): load + list + flip per replica {per * 1000:.1f} ms = "
            f"{per / raw_load:.1f}x the bare load (goal: under 2 s)"
        )
    for what, (sent, failed) in load.items():
        print(f"requests during {what}: {sent} sent, {failed} failed (goal: 0)")


if __name__ == "__main__":
    main()
