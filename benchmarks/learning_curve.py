"""How fast the demo's adapter learns the job: the gate and the answer/decline rates against
training steps, on the example's tiny base and training data.

    python -m benchmarks.learning_curve                  # the example's recipe, 150 steps
    python -m benchmarks.learning_curve --steps 300 --every 50 --lr 0.003
    python -m benchmarks.learning_curve --every 150 --seed 1      # another draw of the adapter
    python -m benchmarks.learning_curve --steps 300 --batch 4     # more, smaller steps

Trains once with a checkpoint every `--every` steps, then judges the base model and every
checkpoint with the real gate (the example's suites and policy, floors only, retrieval from
the example docs indexed into a scratch store) and on prompts written for this benchmark
alone (in `FRESH_IN_SCOPE` / `FRESH_OFF_TOPIC`: in no suite and no training row). Prints
first the base's own scope decision on those prompts, in its own chat form (what the adapter
starts from; a tiny base only); then per checkpoint: training seconds so far, the gate's
verdict and its helpfulness metrics, and the fresh prompts' answer, decline and valid-JSON
rates, and the scope decision's AUC (how well the score of "high" against "low" confidence
ranks the fresh in-scope prompts above the off-topic ones, whatever the line); then the first
step that passes the gate and the seconds it took, and whether any line on that score meets
both scope targets (if none does, no data mix that only moves the line can meet them: the
subjects are not told apart well enough). The fresh prompts are asked twice: alone, and as
the bot is served (the "served" columns: the chunks retrieval finds for each prompt before it
when one is the knowledge suite's min_similarity near, as the demo and a RAG client ask;
"served cites": in-scope answers whose sources are all among the chunks shown; "off, no cut":
off-topic declined with the chunks before every prompt, what the cut saves). The targets for
the default demo adapter: in-scope answered >= 0.80, off-topic declined >= 0.90, valid JSON
>= 0.95, cites a retrieved doc >= 0.50.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

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
    "How do I add a new deckhand to my crew?",
    "What can a crew lead do that a deckhand cannot?",
    "Can my team sign in to Tidewell with our company SSO?",
    "Is my Tidewell data encrypted at rest?",
    "How do I handle a GDPR request to erase a customer's data?",
    "How long does Tidewell keep closed tickets by default?",
    "What does a 429 response from the Harbor API mean?",
    "How do I page through a long list of tickets with the API?",
    "How do I authenticate a request to the Harbor API?",
    "How do I set the business hours my SLA counts?",
    "When does Tidewell send an SLA breach notification?",
    "What is an SLA anchor?",
    "How do I change the weights of the Tide Score?",
    "How do routing rules decide which berth gets a ticket?",
    "How do I schedule a current to run at night?",
    "What actions can a current perform?",
    "Which triggers can start a current?",
    "How many currents can my plan run?",
    "How do I build a dashboard for my team?",
    "What changed in the September 2026 release?",
    "What is new in the October 2026 release?",
    "How do customers search Beacon articles?",
    "What is Beacon for?",
    "How do I put a web form inlet on my contact page?",
    "My email inlet stopped receiving messages. What should I check?",
    "How do I create tickets through the API inlet?",
    "What is a berth in Tidewell?",
    "How do I set up my Tidewell account for the first time?",
    "What does each Tidewell plan add?",
    "How do I change the card we pay with?",
    "What happens when a payment fails?",
    "How do I create a custom role for my agents?",
    "How do I recover access when an agent loses their two-factor device?",
    "In what order are webhook events delivered?",
    "What is the quickest way to get started with Tidewell?",
    "How is the CSAT-W score weighted?",
    "Can I schedule a weekly export of a report?",
    "Can I put a legal hold on tickets?",
    "How do I subscribe to webhooks?",
    "How are taxes shown on my Tidewell invoice?",
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
    "What is the capital of New Zealand?",
    "How do I make cold brew coffee?",
    "Recommend a good science fiction novel.",
    "How do I unclog a kitchen sink?",
    "What is the difference between a crocodile and an alligator?",
    "How long should I boil an egg?",
    "Translate 'good morning' into Spanish.",
    "What causes the northern lights?",
    "How do I improve my credit score?",
    "Write a haiku about autumn leaves.",
    "How many people live in Argentina?",
    "How do I teach my parrot to talk?",
    "Which planet is closest to the sun?",
    "How do I remove a red wine stain?",
    "What are the rules of cricket?",
    "Suggest a workout for lazy Sundays.",
    "Why is the sky blue?",
    "How do I negotiate a higher salary?",
    "What is a good name for a bakery?",
    "How do airplanes stay in the air?",
    "What should I cook for a vegan dinner party?",
    "Who painted The Starry Night?",
    "How do I get better at drawing hands?",
    "What is the longest river in Asia?",
    "How can I stop snoring?",
    "Tell me a joke about giraffes.",
    "How do I start a vegetable garden on a balcony?",
    "What makes a good first date?",
    "How much water should I drink a day?",
    "Which is the best route to hike Mount Fuji?",
    "How do I write a cover letter?",
    "How far away is the Andromeda galaxy?",
    "How do I calm down before an exam?",
    "Explain the rules of handball.",
    "What is the best way to learn the ukulele?",
    "How do solar eclipses happen?",
    "Give me ideas for a child's birthday party.",
    "How do I fix a squeaky door?",
    "What language is spoken in Brazil?",
    "How do I train for a 10k race?",
]


class Scope(NamedTuple):
    """A scope decision on the fresh prompts: the share of in-scope ones answered and of
    off-topic ones turned away as decoded, and how well the decision's score tells the two
    apart whatever the line: `auc` (the chance that an in-scope prompt scores above an
    off-topic one; 0.5 is a coin) and `best` (in-scope answered, off-topic declined) at the
    line that maximizes their sum. A low `auc` is a model that cannot tell the subjects apart;
    a high `auc` with low rates is one whose line sits in the wrong place."""

    answered: float
    declined: float
    auc: float
    best: tuple[float, float]


# The default demo adapter's targets on the fresh prompts (module docstring).
IN_SCOPE_TARGET, OFF_TOPIC_TARGET = 0.80, 0.90


class Separation(NamedTuple):
    """How well a score tells in-scope prompts (should score high) from off-topic ones:
    `auc`, the chance that an in-scope prompt scores above an off-topic one (0.5 is a coin);
    `best`, (in-scope answered, off-topic declined) at the line that maximizes their sum; and
    `reach`, whether some line meets both targets."""

    auc: float
    best: tuple[float, float]
    reach: bool


def separation(inside: Sequence[float], outside: Sequence[float]) -> Separation:
    pairs = [(a > b) + 0.5 * (a == b) for a in inside for b in outside]
    points = [
        (sum(a > t for a in inside) / len(inside), sum(b <= t for b in outside) / len(outside))
        for t in sorted({*inside, *outside, float("-inf")})
    ]
    return Separation(
        auc=sum(pairs) / len(pairs),
        best=max(points, key=sum),
        reach=any(a >= IN_SCOPE_TARGET and d >= OFF_TOPIC_TARGET for a, d in points),
    )


def _next_token_logits(generator: Any, prompts: list[list[dict[str, str]]], lead: str) -> Any:
    """The logits of the token after each prompt's generation tag plus `lead`."""
    import torch

    tokenizer, model = generator.tokenizer, generator.model
    extra: list[int] = tokenizer(lead, add_special_tokens=False)["input_ids"] if lead else []
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([generator._encode(prompt) + extra]).to(generator.device)
            rows.append(model(input_ids=ids).logits[0, -1])
    return torch.stack(rows)


def base_scope(base: Path) -> Scope | None:
    """The base's own scope decision before any adapter, on the fresh prompts asked in its own
    chat form (no system prompt, no JSON): answered / turned away with the tiny base's
    sentence as decoded, and the separation of its score (1 - the probability that the
    reply starts with that sentence's first token). What an adapter starts from: a low AUC
    means the base, not the adapter's rows, fails to tell the docs' subjects from others.
    None for a base that is not one of the tiny bases (another chat form, no such
    sentence)."""
    from transformers import AutoTokenizer

    from examples.tiny_base.recipe import CHAT_TEMPLATE, OUT_OF_SCOPE
    from slmops.generation import LocalGenerator

    tokenizer: Any = AutoTokenizer.from_pretrained(base)
    if tokenizer.chat_template != CHAT_TEMPLATE:
        return None
    sentence = tokenizer(OUT_OF_SCOPE, add_special_tokens=False)["input_ids"]
    generator = LocalGenerator(base, max_new_tokens=len(sentence))
    prompts = [[{"role": "user", "content": q}] for q in FRESH_IN_SCOPE + FRESH_OFF_TOPIC]
    away = [r.startswith(OUT_OF_SCOPE[:12]) for r in generator.generate(prompts)]
    inside, outside = away[: len(FRESH_IN_SCOPE)], away[len(FRESH_IN_SCOPE) :]
    scores = (1 - _next_token_logits(generator, prompts, "").softmax(-1)[:, sentence[0]]).tolist()
    split = separation(scores[: len(FRESH_IN_SCOPE)], scores[len(FRESH_IN_SCOPE) :])
    answered, declined = inside.count(False) / len(inside), outside.count(True) / len(outside)
    return Scope(answered, declined, split.auc, split.best)


def nearest_similarities(store: Any, index: str) -> list[float]:
    """The dense similarity of each fresh prompt's nearest chunk in the index (in-scope
    prompts first), with the embedding model the index was built with."""
    from slmops.rag.retrieval import load_index

    loaded = load_index(index, store=store)
    return [loaded.nearest_similarity(q) for q in FRESH_IN_SCOPE + FRESH_OFF_TOPIC]


def retrieval_scope(store: Any, index: str) -> Separation:
    """The baseline for the adapter's decision: how well retrieval alone tells the fresh
    in-scope prompts from the off-topic ones, by the dense similarity of each prompt's nearest
    chunk in the index. A scope rule a serving path can apply before the model is called
    (suites.yaml's min_similarity: no context when nothing in the docs is near)."""
    scores = nearest_similarities(store, index)
    return separation(scores[: len(FRESH_IN_SCOPE)], scores[len(FRESH_IN_SCOPE) :])


# The example's answers open with their confidence (make_training_data.py's KEY_ORDER): the
# token after this decides whether the adapter answers ("high") or declines ("low").
DECISION_LEAD = '{"confidence": "'


def adapter_separation(generator: Any, system: str) -> Separation | None:
    """How well the adapter's decision tells the fresh in-scope prompts from the off-topic
    ones: the separation of the logit of "high" minus that of "low" after DECISION_LEAD.
    None when the two words are not one token each there."""
    tokenizer = generator.tokenizer
    lead: list[int] = tokenizer(DECISION_LEAD, add_special_tokens=False)["input_ids"]
    ends = []
    for word in ("high", "low"):
        ids: list[int] = tokenizer(DECISION_LEAD + word, add_special_tokens=False)["input_ids"]
        if ids[:-1] != lead:
            return None
        ends.append(ids[-1])
    prompts = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}]
        for q in FRESH_IN_SCOPE + FRESH_OFF_TOPIC
    ]
    logits = _next_token_logits(generator, prompts, DECISION_LEAD)
    scores = (logits[:, ends[0]] - logits[:, ends[1]]).tolist()
    return separation(scores[: len(FRESH_IN_SCOPE)], scores[len(FRESH_IN_SCOPE) :])


def fresh_rates(
    generator: Any,
    system: str,
    retrieve: Any = None,
    k: int = 3,
    chars: int | None = None,
    min_similarity: float | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Answered share of the fresh in-scope prompts, declined share of the off-topic ones,
    valid JSON over both (the example's refusal rule and schema keys); and the prompts it got
    wrong, each with its reply. With `retrieve` (index, query, k) -> [(source, text)], every
    prompt carries the `k` chunks retrieval finds for it, as the bot is served (the demo and
    a RAG client; none for a prompt no chunk is `min_similarity` near), and `cites` is the
    share of the in-scope answers whose sources are all among them (and not none)."""
    from slmops.generation import json_valid_rate
    from slmops.suites.prompts import with_context

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
    found: list[list[str]] = []
    if retrieve is not None:
        chunks = [
            retrieve("support-docs", q, k, min_similarity) for q in FRESH_IN_SCOPE + FRESH_OFF_TOPIC
        ]
        prompts = [with_context(p, h, chars) for p, h in zip(prompts, chunks, strict=True)]
        found = [[src for src, _ in h] for h in chunks]
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
    rates: dict[str, Any] = {
        "in_scope_answered": sum(answered) / len(inside),
        "off_topic_declined": sum(turned_away) / len(outside),
        "valid_json": json_valid_rate(replies, keys),
    }
    hits = {
        "in_scope_answered": answered,
        "off_topic_declined": turned_away,
        "valid_json": [json_valid_rate([r], keys) == 1.0 for r in replies],
    }
    if found:
        hits["cites"] = [
            ok and bool(cited) and all(src in where for src in cited)
            for ok, cited, where in zip(
                answered, [_sources(r) for r in inside], found[: len(inside)], strict=True
            )
        ]
        rates["cites"] = sum(hits["cites"]) / len(inside)
    for name, oks in hits.items():
        rates[f"{name}_interval"] = _interval(oks)
    return rates, wrong


def _sources(reply: str) -> list[str]:
    from slmops.suites.scorers import parse_answer

    sources = (parse_answer(reply) or {}).get("sources")
    return [str(s) for s in sources] if isinstance(sources, list) else []


def _interval(scores: Sequence[float]) -> tuple[float, float]:
    """95% bootstrap interval of a rate (60 prompts resolve it to about +-0.1)."""
    import numpy as np

    from slmops.suites.stats import mean_interval, resample_indices

    values = np.array(scores, dtype=float)
    return mean_interval(values, confidence=0.95, indices=resample_indices(len(values), 2000, 0))


def _fresh(rates: dict[str, Any], name: str) -> tuple[float, tuple[float, float]]:
    return rates[name], rates[f"{name}_interval"]


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
    parser.add_argument(
        "--batch", type=int, default=None, help="rows a step (default: TrainConfig's)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="the adapter's seed (default: TrainConfig's)"
    )
    parser.add_argument("--base", type=Path, help="base model folder (default: the tiny one)")
    parser.add_argument(
        "--train",
        type=Path,
        default=EXAMPLE / "train.jsonl",
        help="training rows (default: the example's train.jsonl)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=3,
        help="print this many knowledge answers of the last checkpoint (with what was retrieved)",
    )
    args = parser.parse_args(argv)

    from examples.tiny_base.build import build_tiny_model
    from slmops.evaluation.gate import known_metrics, run_gate
    from slmops.evaluation.policy import load_policy
    from slmops.generation import LocalGenerator
    from slmops.pipelines.gate import index_retriever
    from slmops.pipelines.ingest import run_ingest
    from slmops.store.local import LocalStore
    from slmops.suites.spec import load_suites
    from slmops.training import datasets
    from slmops.training.trainer import TrainConfig, train_adapter

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-curve-"))
    try:
        base = args.base or build_tiny_model(work / "tiny", seed=1)
        suites = load_suites(EVALS)
        policy = load_policy(EVALS / "policy.yaml", known_metrics(suites))
        rows = [json.loads(line)["messages"] for line in args.train.open()]
        check_fresh(suites, rows)
        scope = base_scope(Path(base))
        if scope:
            print(
                f"the base alone, in its own chat form (before any adapter): fresh in-scope "
                f"answered {scope.answered:.2f}, fresh off-topic turned away "
                f"{scope.declined:.2f}; its decision's AUC {scope.auc:.3f} (the best line: "
                f"{scope.best[0]:.2f} answered, {scope.best[1]:.2f} turned away)",
                flush=True,
            )
        store = LocalStore(work / "store")
        print("indexing the example docs for the knowledge suite ...", flush=True)
        run_ingest(
            str(EXAMPLE / "docs"), store, "support-docs", workdir=work / "ingest", evaluate=False
        )
        retrieve, _ = index_retriever(store, suites)
        # how the bot is served: k, chars, and no context below min_similarity
        knowledge_spec = suites.config.suites["knowledge"]
        similarities = nearest_similarities(store, "support-docs")
        n_in = len(FRESH_IN_SCOPE)
        nearest = separation(similarities[:n_in], similarities[n_in:])
        print(
            f"retrieval alone (the nearest chunk's similarity, no model): the decision's AUC "
            f"{nearest.auc:.3f} (the best line: {nearest.best[0]:.2f} answered, "
            f"{nearest.best[1]:.2f} declined)",
            flush=True,
        )
        cut = knowledge_spec.min_similarity
        if cut is not None:
            near = [s >= cut for s in similarities]
            print(
                f"served with context when the nearest chunk's similarity is >= {cut} "
                f"(suites.yaml min_similarity): {sum(near[:n_in])} of {n_in} fresh in-scope "
                f"prompts, {sum(near[n_in:])} of {len(near) - n_in} off-topic ones",
                flush=True,
            )

        chosen = {
            "learning_rate": args.lr,
            "rank": args.rank,
            "seed": args.seed,
            "batch_size": args.batch,
        }
        # the rows the refine-tune flow trains on: the dataset's train split, the rest held
        # out for its eval loss (a benchmark on every row measures another adapter)
        train_rows, held_out = datasets.split(rows, datasets.DatasetConfig().eval_fraction)
        config = TrainConfig(
            max_steps=args.steps,
            save_steps=args.every,
            **{field: value for field, value in chosen.items() if value is not None},
        )
        print(
            f"training {args.steps} steps on {len(train_rows)} rows ({len(held_out)} held out, as"
            f" the flow splits them; lr {config.learning_rate}, rank {config.rank}, "
            f"batch {config.batch_size}, seed {config.seed}), a checkpoint every {args.every} ...",
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
            train_rows,
            held_out,
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
            f"{'refuses':>7} {'srv.ref':>7} {'cites':>6} {'valid':>6} | {'fresh in':>8} "
            f"{'fresh off':>9} {'fresh json':>10} {'scope AUC':>9} | {'served in':>9} "
            f"{'served off':>10} {'served cites':>12} {'off, no cut':>11}"
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
            served, served_wrong = fresh_rates(
                generator,
                suites.config.system,
                retrieve,
                knowledge_spec.k,
                knowledge_spec.context_chars,
                knowledge_spec.min_similarity,
            )
            # The same, with the chunks before every question (no cut): what the cut saves.
            uncut, _ = fresh_rates(
                generator,
                suites.config.system,
                retrieve,
                knowledge_spec.k,
                knowledge_spec.context_chars,
            )
            split = adapter_separation(generator, suites.config.system) if adapter else None
            print(
                f"{step:>5} {seconds:>7.0f} {'PASS' if verdict.passed else 'fail':>6} "
                f"{means.get('format.answers', 0):>7.2f} "
                f"{means.get('format.distinct_answers', 0):>8.2f} "
                f"{means.get('adversarial.refuses', 0):>7.2f} "
                f"{means.get('served.refuses', 0):>7.2f} "
                f"{means.get('knowledge.cites_retrieved', 0):>6.2f} "
                f"{means.get('all.valid_format', 0):>6.2f} | "
                f"{fresh['in_scope_answered']:>8.2f} {fresh['off_topic_declined']:>9.2f} "
                f"{fresh['valid_json']:>10.2f} "
                + (f"{split.auc:>9.3f}" if split else f"{'-':>9}")
                + f" | {served['in_scope_answered']:>9.2f} {served['off_topic_declined']:>10.2f} "
                f"{served['cites']:>12.2f} {uncut['off_topic_declined']:>11.2f}",
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
        if served_wrong:
            print(
                f"fresh prompts with retrieved context (as served) step {checkpoints[-1][0]} "
                f"gets wrong ({len(served_wrong)}):"
            )
        for line in served_wrong[: args.samples * 4]:
            print(f"  {line[:400]}")
        cited = [
            c.candidate_scores["knowledge.cites_retrieved"]
            for c in cases
            if "knowledge.cites_retrieved" in c.candidate_scores
        ]
        n_in, n_off = len(FRESH_IN_SCOPE), len(FRESH_OFF_TOPIC)
        print(f"targets at step {checkpoints[-1][0]} (95% bootstrap intervals):")
        for label, rate, interval, n, target in (
            ("fresh in-scope answered", *_fresh(fresh, "in_scope_answered"), n_in, IN_SCOPE_TARGET),
            (
                "fresh off-topic declined",
                *_fresh(fresh, "off_topic_declined"),
                n_off,
                OFF_TOPIC_TARGET,
            ),
            ("fresh valid JSON", *_fresh(fresh, "valid_json"), n_in + n_off, 0.95),
            (
                "as served: in-scope answered",
                *_fresh(served, "in_scope_answered"),
                n_in,
                IN_SCOPE_TARGET,
            ),
            (
                "as served: off-topic declined",
                *_fresh(served, "off_topic_declined"),
                n_off,
                OFF_TOPIC_TARGET,
            ),
            ("as served: in-scope cite a retrieved doc", *_fresh(served, "cites"), n_in, 0.50),
            (
                "cites a retrieved doc (knowledge suite)",
                sum(cited) / max(len(cited), 1),
                _interval(cited) if cited else (0.0, 0.0),
                len(cited),
                0.50,
            ),
        ):
            low, high = interval
            print(
                f"  {label:<40} {rate:.2f} [{low:.2f}, {high:.2f}] of {n:>3}  "
                f">= {target:.2f}: {'met' if rate >= target else 'below'}"
            )
        if split:
            verdict_line = (
                "a line exists that meets both targets"
                if split.reach
                else "no line meets both targets: the subjects are not told apart well enough"
            )
            print(
                f"  the decision's AUC at step {checkpoints[-1][0]}: {split.auc:.3f}; the best line"
                f" any threshold draws: {split.best[0]:.2f} answered, {split.best[1]:.2f} declined"
                f" ({verdict_line}); retrieval alone: {nearest.auc:.3f}, "
                f"{nearest.best[0]:.2f} / {nearest.best[1]:.2f}"
            )
        if passed_at:
            print(f"first passes the gate at step {passed_at[0]}, after {passed_at[1]:.0f}s")
        else:
            print(f"no checkpoint of {args.steps} steps passes the gate")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
