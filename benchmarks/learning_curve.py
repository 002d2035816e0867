"""How fast the demo's adapter learns the job: the gate and the answer/decline rates against
training steps, on the example's tiny base and training data.

    python -m benchmarks.learning_curve                  # the example's recipe, 150 steps
    python -m benchmarks.learning_curve --steps 300 --every 50 --lr 0.003

Trains once with a checkpoint every `--every` steps, then judges the base model and every
checkpoint with the real gate (the example's suites and policy, floors only, retrieval from
the example docs indexed into a scratch store) and on prompts written for this benchmark
alone (in `FRESH_IN_SCOPE` / `FRESH_OFF_TOPIC`: in no suite and no training row). Prints per
checkpoint: training seconds so far, the gate's verdict and its helpfulness metrics, and the
fresh prompts' answer, decline and valid-JSON rates; then the first step that passes the gate
and the seconds it took. The targets for the default demo adapter: in-scope answered >= 0.80,
off-topic declined >= 0.90, valid JSON >= 0.95, cites a retrieved doc >= 0.50.
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
EXAMPLE = ROOT / "examples" / "support-bot"
EVALS = EXAMPLE / "evals"

# Written for this benchmark: in scope (the Tidewell docs cover them) and off topic.
FRESH_IN_SCOPE = [
    "Where do I find the weighted satisfaction report?",
    "How can I stop duplicate tickets from an email inlet?",
    "What happens when a berth has no crew online?",
    "Can a current run every Monday morning?",
    "How long are invoices kept in billing?",
    "How do I rotate a Harbor API key?",
    "What does the Tide Score take into account?",
    "How do webhooks retry after a failure?",
    "Can two crews share one berth?",
    "How do I turn on two-factor authentication for my team?",
    "What is the rate limit of the Harbor API?",
    "How do I publish a Beacon article in two languages?",
    "How do I cancel my Tidewell plan?",
    "Which SLA applies to urgent tickets?",
    "How does round-robin assignment pick the next agent?",
    "Where is the Ledger of admin changes?",
    "How do I connect a chat inlet to my website?",
    "What does the overflow berth do?",
    "How do I export a report as CSV?",
    "Can I use a custom domain for Beacon?",
]
FRESH_OFF_TOPIC = [
    "What is the tallest building in Dubai?",
    "Give me a recipe for lemon cake.",
    "Who wrote Pride and Prejudice?",
    "How do I change a flat bicycle tyre?",
    "What is the boiling point of water in Fahrenheit?",
    "Suggest a name for my goldfish.",
    "How many moons does Jupiter have?",
    "What should I pack for a ski holiday?",
    "Explain how vaccines work.",
    "Write a limerick about a cat named Bob.",
    "Which wine goes well with salmon?",
    "How do I get rid of hiccups?",
    "What year did the Berlin wall fall?",
    "Teach me a card trick.",
    "Is coffee bad for my health?",
    "How do I learn to juggle?",
    "What is the speed of light?",
    "Plan a weekend in Lisbon for me.",
    "Which houseplants need little light?",
    "Who invented the telephone?",
]


def fresh_rates(generator: Any, system: str) -> tuple[dict[str, float], list[str]]:
    """Answered share of the fresh in-scope prompts, declined share of the off-topic ones,
    valid JSON over both (the example's refusal rule and schema keys); and the prompts it got
    wrong, each with its reply."""
    from slmops.generation import json_valid_rate

    decline = "only help with questions about Tidewell"

    def declined(text: str) -> bool:
        try:
            obj = json.loads(text)
        except ValueError:
            return decline in text
        if not isinstance(obj, dict):
            return False
        low = obj.get("confidence") == "low" and not obj.get("sources")
        return decline in str(obj.get("answer", "")) or low

    prompts = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}]
        for q in FRESH_IN_SCOPE + FRESH_OFF_TOPIC
    ]
    replies = generator.generate(prompts)
    inside, outside = replies[: len(FRESH_IN_SCOPE)], replies[len(FRESH_IN_SCOPE) :]
    keys = ("answer", "sources", "confidence")
    answered = [json_valid_rate([r], keys) == 1.0 and not declined(r) for r in inside]
    turned_away = [declined(r) for r in outside]
    wrong = [
        f"{q}\n    -> {r}"
        for q, r, ok in zip(
            FRESH_IN_SCOPE + FRESH_OFF_TOPIC, replies, answered + turned_away, strict=True
        )
        if not ok
    ]
    rates = {
        "in_scope_answered": sum(answered) / len(inside),
        "off_topic_declined": sum(turned_away) / len(outside),
        "valid_json": json_valid_rate(replies, keys),
    }
    return rates, wrong


def check_fresh(suites: Any, rows: list[list[dict[str, str]]]) -> None:
    """The fresh prompts must be in no suite and no training row."""
    seen = {c.messages[-1]["content"].strip().lower() for c in suites.cases}
    seen |= {m["content"].strip().lower() for row in rows for m in row if m["role"] == "user"}
    clash = [q for q in FRESH_IN_SCOPE + FRESH_OFF_TOPIC if q.strip().lower() in seen]
    if clash:
        raise SystemExit(f"fresh prompts also in the suites or training data: {clash}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=25, help="checkpoint every N steps")
    parser.add_argument("--lr", type=float, default=None, help="default: TrainConfig's")
    parser.add_argument("--rank", type=int, default=None, help="default: TrainConfig's")
    parser.add_argument("--base", type=Path, help="base model folder (default: the tiny one)")
    parser.add_argument(
        "--samples",
        type=int,
        default=3,
        help="print this many knowledge answers of the last checkpoint (with what was retrieved)",
    )
    args = parser.parse_args(argv)

    from infra.tiny_model import build_tiny_model
    from slmops.evaluation.gate import known_metrics, run_gate
    from slmops.evaluation.policy import load_policy
    from slmops.evaluation.suites import load_suites
    from slmops.evaluation.verdicts import index_retriever
    from slmops.generation import LocalGenerator
    from slmops.rag.ingest import run_ingest
    from slmops.store.local import LocalStore
    from slmops.training.trainer import TrainConfig, train_adapter

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-curve-"))
    try:
        base = args.base or build_tiny_model(work / "tiny", seed=1)
        suites = load_suites(EVALS)
        policy = load_policy(EVALS / "policy.yaml", known_metrics(suites))
        rows = [json.loads(line)["messages"] for line in (EXAMPLE / "train.jsonl").open()]
        check_fresh(suites, rows)
        store = LocalStore(work / "store")
        print("indexing the example docs for the knowledge suite ...", flush=True)
        run_ingest(
            str(EXAMPLE / "docs"), store, "support-docs", workdir=work / "ingest", evaluate=False
        )
        retrieve, _ = index_retriever(store, suites)

        overrides: dict[str, Any] = {"max_steps": args.steps, "save_steps": args.every}
        if args.lr is not None:
            overrides["learning_rate"] = args.lr
        if args.rank is not None:
            overrides["rank"] = args.rank
        config = TrainConfig(**overrides)
        print(
            f"training {args.steps} steps (lr {config.learning_rate}, rank {config.rank}, "
            f"batch {config.batch_size}), a checkpoint every {args.every} ...",
            flush=True,
        )
        t0 = time.perf_counter()
        checkpoints: list[tuple[int, float, Path]] = []

        def keep(path: Path, step: int) -> None:
            dst = work / f"checkpoint-{step}"
            shutil.copytree(path, dst)
            checkpoints.append((step, time.perf_counter() - t0, dst))

        def progress(step: int, logs: dict[str, float]) -> None:
            if step % args.every == 0:
                print(f"  step {step}/{args.steps}, loss {logs.get('loss', 0):.3f}", flush=True)

        result = train_adapter(
            base,
            rows,
            [],
            work / "run",
            config,
            served_model="support-bot",
            on_checkpoint=keep,
            on_log=progress,
        )
        if not checkpoints or checkpoints[-1][0] != result.steps:
            checkpoints.append((result.steps, result.train_seconds, work / "run" / "adapter"))
        print(
            f"trained in {result.train_seconds:.0f}s ({result.train_seconds / result.steps:.2f}"
            f" s a step on {result.threads} threads); judging the base and "
            f"{len(checkpoints)} checkpoints ...",
            flush=True,
        )
        header = (
            f"{'step':>5} {'train s':>7} {'gate':>6} {'fmt.ans':>7} {'distinct':>8} "
            f"{'refuses':>7} {'cites':>6} {'valid':>6} | {'fresh in':>8} {'fresh off':>9} "
            f"{'fresh json':>10}"
        )
        print(header)
        passed_at: tuple[int, float] | None = None
        for step, seconds, adapter in [(0, 0.0, None), *checkpoints]:
            generator = LocalGenerator(base, adapter)
            verdict, cases = run_gate(
                suites,
                policy,
                generator,
                None,
                adapter="support-bot",
                version=f"step-{step}",
                champion_label=None,
                retrieve=retrieve,
            )
            means = {m.metric: m.candidate for m in verdict.metrics}
            fresh, fresh_wrong = fresh_rates(generator, suites.config.system)
            print(
                f"{step:>5} {seconds:>7.0f} {'PASS' if verdict.passed else 'fail':>6} "
                f"{means.get('format.answers', 0):>7.2f} "
                f"{means.get('format.distinct_answers', 0):>8.2f} "
                f"{means.get('adversarial.refuses', 0):>7.2f} "
                f"{means.get('knowledge.cites_retrieved', 0):>6.2f} "
                f"{means.get('all.valid_format', 0):>6.2f} | "
                f"{fresh['in_scope_answered']:>8.2f} {fresh['off_topic_declined']:>9.2f} "
                f"{fresh['valid_json']:>10.2f}",
                flush=True,
            )
            if not verdict.passed:
                print(f"        {len(verdict.reasons)} failed: {verdict.reasons[0][:90]}")
            if verdict.passed and passed_at is None and adapter is not None:
                passed_at = (step, seconds)
        print(f"every metric of step {checkpoints[-1][0]} (the policy's floors in brackets):")
        for m in verdict.metrics:
            floor = policy.floors.get(m.metric)
            print(f"  {m.metric:<32} {m.candidate:.2f}" + (f" ({floor})" if floor else ""))
        knowledge = [c for c in cases if c.suite == "knowledge"][: args.samples]
        if knowledge:
            print(
                f"knowledge answers of step {checkpoints[-1][0]} (retrieved: what the prompt held):"
            )
        for case in knowledge:
            question = next(c.messages[-1]["content"] for c in suites.cases if c.id == case.id)
            print(
                f"  {case.id} {question}\n    retrieved {case.retrieved}\n    -> {case.candidate}"
            )
        invalid = [c for c in cases if c.candidate_scores.get(f"{c.suite}.valid_format") == 0.0]
        if invalid:
            print(f"answers of step {checkpoints[-1][0]} that break the format ({len(invalid)}):")
        for case in invalid[: args.samples]:
            print(f"  {case.id} -> {case.candidate[:300]}")
        if fresh_wrong:
            print(f"fresh prompts step {checkpoints[-1][0]} gets wrong ({len(fresh_wrong)}):")
        for line in fresh_wrong[: args.samples * 4]:
            print(f"  {line}")
        if passed_at:
            print(f"first passes the gate at step {passed_at[0]}, after {passed_at[1]:.0f}s")
        else:
            print(f"no checkpoint of {args.steps} steps passes the gate")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
