"""Eval-gate benchmark: batched generation against one prompt at a time, and the whole gate.

    python -m benchmarks.gate               # builds a tiny model + adapter if none is given
    python -m benchmarks.gate --base DIR --adapter DIR

Prints, from one run on the same model, adapter and prompts (every eval case of the example
suites, 355 of them):
- generation throughput of the gate's batched generator vs the same generator answering one
  prompt at a time (the ratio; the answers must be identical, or the ratio means nothing);
- the wall time of a whole gate run (candidate vs the base model as champion: retrieval,
  both models answering every case, scoring, the paired bootstrap, the report).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVALS = ROOT / "examples" / "support-bot" / "evals"
EXAMPLE = ROOT / "examples" / "support-bot"


def _tiny(work: Path, steps: int) -> tuple[Path, Path]:
    from infra.tiny_model import build_tiny_model
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
    args = parser.parse_args(argv)

    from slmops.evaluation.gate import build_prompts
    from slmops.evaluation.suites import load_suites
    from slmops.generation import LocalGenerator

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-gate-"))
    try:
        if args.base and args.adapter:
            base, adapter = args.base, args.adapter
        else:
            base, adapter = _tiny(work, args.steps)
        suites = load_suites(EVALS)
        # Knowledge cases without retrieval here: the prompt set is what matters for speed.
        plain = suites.model_copy(
            update={"cases": [c for c in suites.cases if c.suite != "knowledge"]}
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


def _whole_gate(work: Path, base: Path, adapter: Path) -> float:
    from slmops.base_models import WatchedModel, current_revision
    from slmops.evaluation.verdicts import evaluate_adapter
    from slmops.rag.ingest import run_ingest
    from slmops.store.local import LocalStore
    from slmops.store.manifest import InputRef, Manifest
    from slmops.store.versions import ADAPTERS, VersionedArtifact

    store = LocalStore(work / "store")
    run_ingest(
        str(EXAMPLE / "docs"), store, "support-docs", workdir=work / "ingest", evaluate=False
    )
    rev = current_revision(WatchedModel(name="tiny", source=str(base))).revision
    art = VersionedArtifact(store, ADAPTERS, "bench")
    manifest = Manifest(
        kind="adapter",
        name="bench",
        inputs=[InputRef(kind="base-model", name="tiny", version=rev, uri=str(base))],
    )
    version = art.publish(manifest, adapter).version
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


if __name__ == "__main__":
    main()
