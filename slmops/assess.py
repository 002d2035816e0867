"""Prompt engineering, RAG or fine-tuning? Measured on a team's own edge cases, with costs.

Every arm answers the same cases (the eval suites) with greedy decoding:
  prompt            the base model with the system prompt, zero-shot;
  prompt+examples   the same with a long few-shot system prompt (what "just write a better
                    prompt" costs in tokens);
  rag               the base model with retrieved context in every prompt;
  fine-tuned        the champion adapter; fine-tuned+rag: the same with retrieved context.
Each answer is scored by the gate's scorers; a failed case is classified as behaviour (format,
style, terminology, injection: what fine-tuning fixes) or knowledge (the answer does not cite a
doc that holds the answer: what RAG fixes). Failure rates carry bootstrap intervals, and each
arm is compared with prompt-only case by case (paired). Costs come from the prompt and answer
tokens of each arm, the adapter manifests' training cost and how often the store saw the base
model and the docs change. `decide()` then walks the decision tree and keeps the evidence of
every branch.

    from slmops.assess import load_task, run_assessment
    result = run_assessment(store, load_task("examples/support-bot/assess.yaml"), cache_dir)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError

from slmops.errors import ConfigError
from slmops.evaluation.gate import with_context
from slmops.evaluation.scorers import Scorer, parse_answer
from slmops.evaluation.stats import mean_interval, paired_bootstrap, resample_indices
from slmops.evaluation.suites import Case, Suites, load_suites
from slmops.generation import Generator, Prompt
from slmops.store.audit import AuditLog
from slmops.store.base import ObjectStore
from slmops.store.manifest import InputRef, Manifest, Trigger
from slmops.store.versions import ADAPTERS, EVALS, INDEXES, VersionedArtifact

ARMS = ("prompt", "prompt+examples", "rag", "fine-tuned", "fine-tuned+rag")
BASELINE = "prompt"
PROMPTING = ("prompt", "prompt+examples")
BEHAVIOUR_KINDS = ("format", "style", "terminology", "adversarial")
# Failure rates are kept per suite ("format"), per suite and kind ("knowledge:knowledge": a
# suite's knowledge failures) and over all cases: these two by kind, "all" for any failure.
BEHAVIOUR, KNOWLEDGE = "all:behaviour", "all:knowledge"
CHART = "failure-rates.png"
Progress = Callable[[str, int, int], None]  # (arm, done, of)
DAYS_PER_MONTH = 30.44


class Economics(BaseModel):
    """Request volume and prices: what each arm costs to serve, and a retraining run."""

    requests_per_month: int = Field(100_000, ge=1, description="Requests the bot answers a month.")
    input_usd_per_mtok: float = Field(
        0.10, ge=0, description="Price of a million prompt tokens on your serving (USD)."
    )
    output_usd_per_mtok: float = Field(
        0.40, ge=0, description="Price of a million generated tokens (USD)."
    )
    training_usd_per_run: float | None = Field(
        None,
        ge=0,
        description="Cost of one retraining run (USD). Empty: the mean of the adapter "
        "manifests' estimated cost.",
    )
    retrains_per_month: float | None = Field(
        None,
        ge=0,
        description="Retraining runs a month. Empty: from how often the store saw new base "
        "revisions and dataset versions (or weekly, with under a week of history).",
    )


class AssessTask(BaseModel):
    """The task to assess: the team's cases, the model, the docs, the prices, the threshold."""

    name: str = Field(description="Name of the assessment (reports: evals/assess-<name>/).")
    suites: str = Field(description="Eval suites folder: the team's edge cases + expectations.")
    index: str | None = Field(None, description="RAG index (default: the knowledge suite's index).")
    k: int = Field(3, ge=1, le=20, description="Chunks retrieved into each RAG prompt.")
    adapter: str = Field(description="Adapter whose champion is the fine-tuned arm.")
    examples: str = Field(description="JSONL of chat rows: the few-shot examples are taken here.")
    few_shot: int = Field(8, ge=1, le=64, description="Examples in the few-shot system prompt.")
    threshold: float = Field(
        0.05, gt=0, lt=1, description="Failure rate above which an approach is not enough."
    )
    confidence: float = Field(
        0.99, gt=0.5, lt=1, description="Confidence of every interval and decision."
    )
    bootstrap: int = Field(2000, ge=200, le=100_000, description="Bootstrap resamples.")
    seed: int = 0
    max_cases_per_suite: int | None = Field(
        None, ge=5, description="Answer only the first N cases of each suite (a quick look)."
    )
    economics: Economics = Field(default_factory=Economics)
    folder: str = Field("", description="Where the task file is (paths are relative to it).")

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() or not self.folder else Path(self.folder) / p


def load_task(path: str | Path) -> AssessTask:
    """Read a task file; errors name the file and the field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"assessment task file {p} not found (see examples/support-bot/assess.yaml)"
        )
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of fields, got {type(data).__name__}")
    try:
        task = AssessTask.model_validate({**data, "folder": str(p.parent)})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{p}: {problems}") from exc
    for field in ("suites", "examples"):
        if not task.path(getattr(task, field)).exists():
            raise ConfigError(f"{p}: {field}: {task.path(getattr(task, field))} does not exist")
    return task


# ---- the measurement --------------------------------------------------------------------------


class Interval(BaseModel):
    rate: float
    low: float
    high: float
    n: int


class Comparison(BaseModel):
    """An arm's failure rate minus prompt-only's on the same cases (negative: fewer failures)."""

    diff: float
    low: float
    high: float


class ArmResult(BaseModel):
    arm: str
    measured: bool = True
    why_not: str | None = None
    failure: dict[str, Interval] = Field(default_factory=dict)  # see BEHAVIOUR, KNOWLEDGE
    vs_prompt: dict[str, Comparison] = Field(default_factory=dict)
    prompt_tokens: float = 0.0
    answer_tokens: float = 0.0
    truncated: int = 0
    seconds: float = 0.0


class CaseOutcome(BaseModel):
    id: str
    suite: str
    arm: str
    answer: str
    failed: bool
    kind: Literal["behaviour", "knowledge"] | None
    checks: dict[str, float]


class Costs(BaseModel):
    arm: str
    usd_per_request: float
    serving_usd_per_month: float
    training_usd_per_month: float
    total_usd_per_month: float


class Economy(BaseModel):
    costs: list[Costs]
    training_usd_per_run: float | None
    training_cost_source: str
    retrains_per_month: float
    cadence_source: str
    base_revisions: int
    dataset_versions: int
    index_versions: int
    history_days: float
    break_even_requests_per_month: float | None  # fine-tuned vs prompt+examples


class Step(BaseModel):
    """One branch of the decision tree: the question, the answer, and the evidence."""

    question: str
    taken: bool
    leads_to: str
    evidence: list[str]


class Assessment(BaseModel):
    task: str
    recommendation: str
    summary: str
    steps: list[Step]
    arms: list[ArmResult]
    economy: Economy
    threshold: float
    confidence: float
    cases: int
    suites: dict[str, int]
    base_model: dict[str, str | None]
    adapter: dict[str, str | None]
    index: dict[str, str | None]
    created_at: str
    timings: dict[str, float]


def pick_examples(path: Path, n: int) -> list[tuple[str, str]]:
    """`n` (question, answer) pairs spread evenly over a chat JSONL file."""
    pairs: list[tuple[str, str]] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
            user = next(m["content"] for m in messages if m["role"] == "user")
            answer = messages[-1]["content"] if messages[-1]["role"] == "assistant" else None
        except (ValueError, KeyError, StopIteration, TypeError) as exc:
            raise ConfigError(
                f"{path}:{line_no}: not a chat row with a user message and an assistant "
                f"answer ({type(exc).__name__})"
            ) from exc
        if answer:
            pairs.append((user, answer))
    if len(pairs) < n:
        raise ConfigError(f"{path}: {len(pairs)} usable examples, the task asks for {n}")
    step = len(pairs) / n
    return [pairs[int(i * step)] for i in range(n)]


def few_shot_prompt(messages: Prompt, examples: list[tuple[str, str]]) -> Prompt:
    """The case with the examples appended to its system prompt."""
    shots = "\n\n".join(f"User: {q}\nAssistant: {a}" for q, a in examples)
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    rest = messages[1:] if system else messages
    content = f"{system}\n\nExamples of correct replies:\n\n{shots}".strip()
    return [{"role": "system", "content": content}, *rest]


def case_checks(
    scorer: Scorer, case: Case, kind: str, answer: str, retrieved: list[str] | None
) -> tuple[dict[str, float], Literal["behaviour", "knowledge"] | None]:
    """The case's checks and, if it failed, whether on behaviour or on knowledge."""
    scores = scorer.score(case, answer, retrieved=retrieved)
    behaviour = {k: v for k, v in scores.items() if not k.endswith(".cites_retrieved")}
    if not all(v >= 1.0 for v in behaviour.values()):
        return behaviour, "behaviour"
    if kind == "knowledge" and case.expected_sources:
        obj = parse_answer(answer) or {}
        sources = obj.get("sources") if isinstance(obj.get("sources"), list) else []
        cites = any(s in case.expected_sources for s in sources or [])
        behaviour[f"{case.suite}.cites_expected"] = float(cites)
        if not cites:
            return behaviour, "knowledge"
    return behaviour, None


def _tokens(tokenizer: Any, prompt: Prompt) -> int:
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def measure_arm(
    arm: str,
    generator: Generator,
    tokenizer: Any,
    prompts: list[Prompt],
    suites: Suites,
    cases: list[Case],
    retrieved: list[list[str] | None],
    on_progress: Progress | None = None,
) -> tuple[list[CaseOutcome], dict[str, float]]:
    """Answer and score every case with one arm."""
    t0 = time.perf_counter()
    answers = generator.generate(
        prompts, (lambda d, o: on_progress(arm, d, o)) if on_progress else None
    )
    scorer = Scorer(suites.config, suites.schema_doc)
    outcomes = []
    for case, answer, hits in zip(cases, answers, retrieved, strict=True):
        kind = suites.config.suites[case.suite].kind
        checks, failed_kind = case_checks(scorer, case, kind, answer, hits)
        outcomes.append(
            CaseOutcome(
                id=case.id,
                suite=case.suite,
                arm=arm,
                answer=answer,
                failed=failed_kind is not None,
                kind=failed_kind,
                checks=checks,
            )
        )
    stats = {
        "prompt_tokens": float(np.mean([_tokens(tokenizer, p) for p in prompts])),
        "answer_tokens": float(
            np.mean([len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers])
        ),
        "seconds": time.perf_counter() - t0,
    }
    return outcomes, stats


def summarize_arms(
    outcomes: dict[str, list[CaseOutcome]], confidence: float, bootstrap: int, seed: int
) -> dict[str, ArmResult]:
    """Failure rates with intervals per suite (and overall, by kind), paired against prompt."""
    results: dict[str, ArmResult] = {}
    base = outcomes.get(BASELINE)
    for arm, rows in outcomes.items():
        groups: dict[str, list[int]] = {"all": list(range(len(rows)))}
        for i, row in enumerate(rows):
            groups.setdefault(row.suite, []).append(i)
        result = ArmResult(arm=arm)
        for group, idx in groups.items():
            failed = np.array([float(rows[i].failed) for i in idx])
            boot = resample_indices(len(idx), bootstrap, seed)
            low, high = mean_interval(failed, confidence=confidence, indices=boot)
            result.failure[group] = Interval(
                rate=float(failed.mean()), low=low, high=high, n=len(idx)
            )
            if group != "all":  # the suite's knowledge failures alone (what RAG can fix)
                kn = np.array([float(rows[i].kind == "knowledge") for i in idx])
                low, high = mean_interval(kn, confidence=confidence, indices=boot)
                result.failure[f"{group}:knowledge"] = Interval(
                    rate=float(kn.mean()), low=low, high=high, n=len(idx)
                )
            if base is not None and arm != BASELINE:
                ref = np.array([float(base[i].failed) for i in idx])
                paired = paired_bootstrap(failed, ref, confidence=confidence, indices=boot)
                result.vs_prompt[group] = Comparison(
                    diff=paired.diff, low=paired.ci_low, high=paired.ci_high
                )
        boot = resample_indices(len(rows), bootstrap, seed)
        for kind, key in (("behaviour", BEHAVIOUR), ("knowledge", KNOWLEDGE)):
            failed = np.array([float(r.kind == kind) for r in rows])
            low, high = mean_interval(failed, confidence=confidence, indices=boot)
            result.failure[key] = Interval(
                rate=float(failed.mean()), low=low, high=high, n=len(rows)
            )
            if base is not None and arm != BASELINE:
                ref = np.array([float(r.kind == kind) for r in base])
                paired = paired_bootstrap(failed, ref, confidence=confidence, indices=boot)
                result.vs_prompt[key] = Comparison(
                    diff=paired.diff, low=paired.ci_low, high=paired.ci_high
                )
        results[arm] = result
    return results


# ---- the economics -----------------------------------------------------------------------------


def _parse_time(value: object) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def history(
    store: ObjectStore, model: str | None, dataset: str | None, index: str | None
) -> dict[str, Any]:
    """How often the store saw new base revisions, dataset versions and index versions."""
    from slmops.base_models import seen_revisions

    moments: dict[str, list[datetime]] = {"base": [], "dataset": [], "index": []}
    if model:
        seen, _ = seen_revisions(store, model)
        moments["base"] = [t for r in seen.revisions if (t := _parse_time(r.get("seen_at")))]
    for key, collection, name in (("dataset", "datasets", dataset), ("index", INDEXES, index)):
        if not name:
            continue
        art = VersionedArtifact(store, collection, name)
        moments[key] = [art.manifest(v).created_at for v in art.versions()]
    every = [t for ts in moments.values() for t in ts]
    days = (max(every) - min(every)).total_seconds() / 86400 if len(every) > 1 else 0.0
    return {"days": days, **{k: len(v) for k, v in moments.items()}}


def economics(
    task: AssessTask,
    arms: dict[str, ArmResult],
    adapter_manifests: list[Manifest],
    seen: dict[str, Any],
) -> Economy:
    """Monthly cost of each arm at the task's volume, and where fine-tuning pays for itself."""
    econ = task.economics
    if econ.training_usd_per_run is not None:
        per_run: float | None = econ.training_usd_per_run
        run_source = "the task file"
    else:
        costs = [
            float(m.resources["estimated_cost_usd"])
            for m in adapter_manifests
            if isinstance(m.resources.get("estimated_cost_usd"), int | float)
        ]
        per_run = float(np.mean(costs)) if costs else None
        run_source = (
            f"mean estimated cost of {len(costs)} adapter manifests"
            if costs
            else "no adapter manifest records a cost"
        )
    if econ.retrains_per_month is not None:
        cadence, cadence_source = econ.retrains_per_month, "the task file"
    elif seen["days"] >= 7:
        changes = max(seen["base"], 1) + max(seen["dataset"] - 1, 0)
        cadence = changes / seen["days"] * DAYS_PER_MONTH
        cadence_source = (
            f"{seen['base']} base revisions and {seen['dataset']} dataset versions in "
            f"{seen['days']:.0f} days of the store's history"
        )
    else:
        cadence = 52 / 12
        cadence_source = (
            f"weekly (the store's history covers {seen['days'] * 24:.1f} hours, too little "
            "to measure a cadence)"
        )
    rows = []
    for arm, result in arms.items():
        if not result.measured:
            continue
        per_request = (
            result.prompt_tokens * econ.input_usd_per_mtok
            + result.answer_tokens * econ.output_usd_per_mtok
        ) / 1e6
        serving = per_request * econ.requests_per_month
        training = (per_run or 0.0) * cadence if arm.startswith("fine-tuned") else 0.0
        rows.append(
            Costs(
                arm=arm,
                usd_per_request=per_request,
                serving_usd_per_month=serving,
                training_usd_per_month=training,
                total_usd_per_month=serving + training,
            )
        )
    by_arm = {c.arm: c for c in rows}
    break_even = None
    if "fine-tuned" in by_arm and "prompt+examples" in by_arm:
        saving = by_arm["prompt+examples"].usd_per_request - by_arm["fine-tuned"].usd_per_request
        if saving > 0:
            break_even = by_arm["fine-tuned"].training_usd_per_month / saving
    return Economy(
        costs=rows,
        training_usd_per_run=per_run,
        training_cost_source=run_source,
        retrains_per_month=cadence,
        cadence_source=cadence_source,
        base_revisions=seen["base"],
        dataset_versions=seen["dataset"],
        index_versions=seen["index"],
        history_days=seen["days"],
        break_even_requests_per_month=break_even,
    )


# ---- the decision ------------------------------------------------------------------------------


def _pct(iv: Interval) -> str:
    return f"{iv.rate:.1%} [{iv.low:.1%}, {iv.high:.1%}]"


def _vs(result: ArmResult, group: str) -> str:
    c = result.vs_prompt.get(group)
    return "" if c is None else f" ({c.diff:+.1%} vs prompt-only, [{c.low:+.1%}, {c.high:+.1%}])"


def _judgeable(result: ArmResult, suite: str) -> str:
    """Knowledge failures among the answers that held the format (others show nothing)."""
    n = result.failure[suite].n
    knowledge = round(result.failure[f"{suite}:knowledge"].rate * n)
    judged = n - round(result.failure[suite].rate * n) + knowledge
    if not judged:
        return f"no answer held the format, so none shows what it knows ({n} cases)"
    return f"{knowledge} of {judged} answers that held the format cite no doc holding the answer"


def term_fertility(
    tokenizer: Any, glossary: dict[str, list[str]], plain: str
) -> tuple[float, float]:
    """Tokens per word of the glossary's preferred terms, and of plain text (the system prompt)."""

    def per_word(text: str) -> float:
        words = text.split()
        ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        return len(ids) / max(len(words), 1)

    terms = [per_word(t) for t in glossary]
    return (float(np.mean(terms)) if terms else 0.0), per_word(plain)


def decide(
    task: AssessTask,
    arms: dict[str, ArmResult],
    economy: Economy,
    suites: Suites,
    fertility: tuple[float, float],
) -> tuple[str, str, list[Step]]:
    """Walk the decision tree; every branch keeps the figures it was decided on."""
    t, conf = task.threshold, task.confidence
    kinds = {name: spec.kind for name, spec in suites.config.suites.items()}
    prompt = arms[BASELINE]
    prompting = [arms[a] for a in PROMPTING if a in arms and arms[a].measured]
    best = min(prompting, key=lambda r: r.failure[BEHAVIOUR].rate)
    ft = arms.get("fine-tuned")
    ft_measured = ft is not None and ft.measured
    steps: list[Step] = []

    # 1. Knowledge the model lacks without the docs -> RAG. Judged on the arm without
    # retrieval that holds the format best: an answer that is not even valid cannot show
    # what it knows.
    knowledge_suites = [s for s, k in kinds.items() if k == "knowledge" and s in prompt.failure]
    no_rag = [arms[a] for a in ("prompt", "prompt+examples", "fine-tuned") if arms[a].measured]
    judge = min(no_rag, key=lambda r: r.failure[BEHAVIOUR].rate)
    needs_docs = any(judge.failure[f"{s}:knowledge"].low > t for s in knowledge_suites)
    evidence = []
    for s in knowledge_suites:
        evidence.append(
            f"suite {s}, {judge.arm} (no retrieval): answers that cite no doc holding the "
            f"answer {_pct(judge.failure[f'{s}:knowledge'])}"
        )
        for arm in ("rag", "fine-tuned+rag"):
            if arms[arm].measured:
                evidence.append(f"suite {s}, {arm}: {_judgeable(arms[arm], s)}")
    evidence.append(
        f"the docs changed {max(economy.index_versions - 1, 0)} times in "
        f"{economy.history_days:.1f} days of history ({economy.index_versions} index versions): "
        "knowledge baked into weights would go stale; retrieval stays current"
    )
    if not knowledge_suites:
        evidence.append("no knowledge suite in the task: nothing measured here")
    steps.append(
        Step(
            question=f"Do answers lack the docs' knowledge, over {t:.0%} at {conf:.0%}?",
            taken=needs_docs,
            leads_to="RAG",
            evidence=evidence,
        )
    )

    # 2. Format/style/injection failing over the threshold even with the best prompt -> FT.
    behaviour_suites = [s for s, k in kinds.items() if k in BEHAVIOUR_KINDS and s in best.failure]
    bh = best.failure[BEHAVIOUR]
    needs_ft = bh.low > t
    evidence = [
        f"best prompting arm: {best.arm}, behaviour failures {_pct(bh)} "
        f"(lower bound {'above' if needs_ft else 'not above'} {t:.0%})"
    ]
    evidence += [f"suite {s} ({best.arm}): {_pct(best.failure[s])}" for s in behaviour_suites]
    if ft_measured and ft is not None:
        evidence.append(
            f"fine-tuned behaviour failures: {_pct(ft.failure[BEHAVIOUR])}{_vs(ft, BEHAVIOUR)}"
        )
    steps.append(
        Step(
            question=f"Do format, style or injection failures exceed {t:.0%} at {conf:.0%} "
            "with the best prompt?",
            taken=needs_ft,
            leads_to="fine-tuning",
            evidence=evidence,
        )
    )

    # 3. Vocabulary the base lacks -> fine-tuning on a domain corpus.
    term_suites = [s for s, k in kinds.items() if k == "terminology" and s in best.failure]
    term_fail = any(best.failure[s].low > t for s in term_suites)
    term_tok, plain_tok = fertility
    fragmented = plain_tok > 0 and term_tok > 1.5 * plain_tok
    evidence = [f"suite {s} ({best.arm}): {_pct(best.failure[s])}" for s in term_suites] or [
        "no terminology suite in the task"
    ]
    evidence.append(
        f"the base tokenizer splits the glossary's terms into {term_tok:.2f} tokens per word, "
        f"plain text into {plain_tok:.2f}"
        + (" (the terms are foreign to its vocabulary)" if fragmented else "")
    )
    steps.append(
        Step(
            question="Does the base lack the domain's vocabulary (terminology failing over "
            "the threshold and its terms split into many more tokens than plain words)?",
            taken=term_fail and fragmented,
            leads_to="fine-tuning on a domain corpus",
            evidence=evidence,
        )
    )

    # 4. A prompt meets the threshold, but the cheapest such prompt costs more than an
    # adapter at this volume -> compress the prompt into an adapter.
    costs = {c.arm: c for c in economy.costs}
    holding = [r for r in prompting if r.failure[BEHAVIOUR].high <= t and r.arm in costs]
    cheapest = min(holding, key=lambda r: costs[r.arm].total_usd_per_month, default=None)
    cheaper_ft = (
        cheapest is not None
        and ft_measured
        and "fine-tuned" in costs
        and costs["fine-tuned"].total_usd_per_month < costs[cheapest.arm].total_usd_per_month
    )
    evidence = []
    for arm in [*(r.arm for r in holding), "fine-tuned"]:
        if arm in costs:
            c = costs[arm]
            evidence.append(
                f"{arm}: {arms[arm].prompt_tokens:,.0f} prompt tokens/request, "
                f"${c.total_usd_per_month:,.2f}/month at {task.economics.requests_per_month:,} "
                f"requests (training ${c.training_usd_per_month:,.2f})"
            )
    if not holding:
        evidence.insert(0, f"no prompt keeps behaviour failures under {t:.0%}")
    if economy.break_even_requests_per_month is not None:
        evidence.append(
            f"break-even: fine-tuning costs less than the few-shot prompt above "
            f"{economy.break_even_requests_per_month:,.0f} requests/month"
        )
    steps.append(
        Step(
            question="Does a prompt meet the threshold, but cost more than an adapter at this "
            "volume?",
            taken=bool(cheaper_ft and not needs_ft),
            leads_to="fine-tuning (compress the prompt into an adapter)",
            evidence=evidence,
        )
    )

    parts: list[str] = []
    if steps[0].taken:
        parts.append("RAG")
    if steps[1].taken or steps[2].taken or steps[3].taken:
        parts.append("fine-tuning")
    recommendation = " + ".join(parts) if parts else "prompt engineering"
    final = {
        ("RAG", "fine-tuning"): "fine-tuned+rag",
        ("fine-tuning",): "fine-tuned",
        ("RAG",): "rag",
    }.get(tuple(parts), best.arm)
    steps.append(
        Step(
            question="Otherwise: does prompting alone stay under the threshold?",
            taken=not parts,
            leads_to="prompt engineering",
            evidence=[f"{best.arm}: all failures {_pct(best.failure['all'])}"],
        )
    )
    chosen = arms.get(final)
    if chosen is not None and chosen.measured:
        all_iv = chosen.failure["all"]
        meets = all_iv.high <= t
        summary = f"{recommendation}: the {final} arm fails {_pct(all_iv)} of the cases, " + (
            f"under the {t:.0%} threshold at {conf:.0%}."
            if meets
            else f"still over the {t:.0%} threshold: it is the best measured option, and "
            "not yet good enough (more training data, a larger base model, or both)."
        )
    else:
        why = chosen.why_not if chosen else "unknown arm"
        summary = f"{recommendation}: the {final} arm was not measured ({why})"
    return recommendation, summary, steps


# ---- the whole run -----------------------------------------------------------------------------


def _first_per_suite(cases: list[Case], n: int) -> set[str]:
    seen: dict[str, int] = {}
    kept = set()
    for case in cases:
        seen[case.suite] = seen.get(case.suite, 0) + 1
        if seen[case.suite] <= n:
            kept.add(case.id)
    return kept


def run_assessment(
    store: ObjectStore,
    task: AssessTask,
    cache_dir: Path,
    *,
    on_progress: Progress | None = None,
    make_generator: Callable[[Path, Path | None], Generator] | None = None,
) -> AssessRun:
    """Answer every case with every arm, score, compare, price and decide."""
    import tempfile

    from slmops.base_models import checkout
    from slmops.evaluation import _base_of
    from slmops.generation import LocalGenerator
    from slmops.rag.retrieval import load_index

    t0 = time.perf_counter()
    suites = load_suites(task.path(task.suites))
    cases = suites.cases
    if task.max_cases_per_suite:
        kept = _first_per_suite(cases, task.max_cases_per_suite)
        cases = [c for c in cases if c.id in kept]
    index_name = task.index or next(
        (s.index for s in suites.config.suites.values() if s.kind == "knowledge" and s.index), None
    )
    examples = pick_examples(task.path(task.examples), task.few_shot)

    art = VersionedArtifact(store, ADAPTERS, task.adapter)
    champion_alias = art.get_alias("champion")
    if champion_alias is None:
        raise ConfigError(
            f"adapter {task.adapter} has no champion: the fine-tuned arm measures the adapter "
            "in production. Train and promote one first (refine-tune, then promote-adapter)"
        )
    champion = art.manifest(champion_alias.version)
    base = _base_of(champion)
    _, base_dir = checkout(base.name, base.uri or "", base.version, cache_dir)

    index = load_index(index_name, store=store) if index_name else None
    retrieved_all: list[list[tuple[str, str]]] = [
        [(h.source, h.text) for h in index.retrieve(c.messages[-1]["content"], task.k)]
        if index and c.messages[-1]["content"].strip()
        else []
        for c in cases
    ]
    prompts: dict[str, list[Prompt]] = {
        "prompt": [c.messages for c in cases],
        "prompt+examples": [few_shot_prompt(c.messages, examples) for c in cases],
    }
    if index is not None:
        rag = [with_context(c.messages, hits) for c, hits in zip(cases, retrieved_all, strict=True)]
        prompts["rag"] = rag
        prompts["fine-tuned+rag"] = rag
    prompts["fine-tuned"] = prompts["prompt"]
    sources: dict[str, list[list[str] | None]] = {
        arm: (
            [[s for s, _ in hits] for hits in retrieved_all]
            if arm.endswith("rag")
            else [None] * len(cases)
        )
        for arm in prompts
    }
    timings = {"prepare": time.perf_counter() - t0}
    build = make_generator or (lambda b, a: LocalGenerator(b, a))
    outcomes: dict[str, list[CaseOutcome]] = {}
    stats: dict[str, dict[str, float]] = {}
    truncated: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="slmops-assess-") as work:
        adapter_dir = Path(work) / "adapter"
        art.download(champion.version, adapter_dir)
        for with_adapter in (False, True):
            generator = build(base_dir, adapter_dir if with_adapter else None)
            tokenizer = getattr(generator, "tokenizer", None)
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(base_dir)
            for arm in ARMS:
                if arm not in prompts or arm.startswith("fine-tuned") != with_adapter:
                    continue
                before = getattr(generator, "truncated", 0)
                outcomes[arm], stats[arm] = measure_arm(
                    arm,
                    generator,
                    tokenizer,
                    prompts[arm],
                    suites,
                    cases,
                    sources[arm],
                    on_progress,
                )
                truncated[arm] = getattr(generator, "truncated", 0) - before
                timings[f"arm.{arm}"] = stats[arm]["seconds"]
    t1 = time.perf_counter()
    arms = summarize_arms(outcomes, task.confidence, task.bootstrap, task.seed)
    for arm, result in arms.items():
        result.prompt_tokens = stats[arm]["prompt_tokens"]
        result.answer_tokens = stats[arm]["answer_tokens"]
        result.seconds = stats[arm]["seconds"]
        result.truncated = truncated[arm]
    for arm in ARMS:
        if arm not in arms:
            arms[arm] = ArmResult(arm=arm, measured=False, why_not="no RAG index in the task")
    ordered = {arm: arms[arm] for arm in ARMS}
    dataset = next((i.name for i in champion.inputs if i.kind == "dataset"), None)
    seen = history(store, base.name, dataset, index_name)
    economy = economics(task, ordered, [art.manifest(v) for v in art.versions()], seen)
    glossary: dict[str, list[str]] = {}
    for spec in suites.config.suites.values():
        glossary.update(spec.glossary or {})
    fertility = term_fertility(tokenizer, glossary, suites.config.system)
    recommendation, summary, steps = decide(task, ordered, economy, suites, fertility)
    timings["judge"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.suite] = counts.get(c.suite, 0) + 1
    assessment = Assessment(
        task=task.name,
        recommendation=recommendation,
        summary=summary,
        steps=steps,
        arms=list(ordered.values()),
        economy=economy,
        threshold=task.threshold,
        confidence=task.confidence,
        cases=len(cases),
        suites=counts,
        base_model={"name": base.name, "revision": base.version, "source": base.uri},
        adapter={"name": task.adapter, "version": champion.version},
        index={"name": index_name, "version": index.version if index else None},
        created_at=datetime.now(UTC).isoformat(),
        timings=timings,
    )
    return AssessRun(
        assessment=assessment, outcomes=[o for arm in ARMS for o in outcomes.get(arm, [])]
    )


class AssessRun(BaseModel):
    """An assessment and every case's answer per arm (stored as answers.jsonl)."""

    assessment: Assessment
    outcomes: list[CaseOutcome]


def store_assessment(
    store: ObjectStore, run: AssessRun, folder: Path, trigger: Trigger | None = None
) -> str:
    """Write report.json, report.md, the chart and the answers, publish them under
    evals/assess-<task>/ and point its `latest` alias at them; returns the version."""
    from slmops.assess_report import chart, markdown

    result = run.assessment
    folder.mkdir(parents=True, exist_ok=True)
    chart(result, folder / CHART)
    (folder / "report.json").write_text(result.model_dump_json(indent=1))
    (folder / "report.md").write_text(markdown(result, CHART))
    with open(folder / "answers.jsonl", "w", encoding="utf-8") as fh:
        for outcome in run.outcomes:
            fh.write(outcome.model_dump_json() + "\n")
    art = VersionedArtifact(store, EVALS, f"assess-{result.task}")
    manifest = Manifest(
        kind="assessment",
        name=f"assess-{result.task}",
        inputs=[
            InputRef(
                kind="adapter", name=str(result.adapter["name"]), version=result.adapter["version"]
            ),
            InputRef(
                kind="base-model",
                name=str(result.base_model["name"]),
                version=result.base_model["revision"],
            ),
            *(
                [
                    InputRef(
                        kind="index",
                        name=str(result.index["name"]),
                        version=result.index["version"],
                    )
                ]
                if result.index["name"]
                else []
            ),
        ],
        config={"threshold": result.threshold, "confidence": result.confidence},
        metrics={
            "recommendation": result.recommendation,
            **{
                f"{a.arm}.failure": round(a.failure["all"].rate, 4)
                for a in result.arms
                if a.measured
            },
        },
        timings=result.timings,
        trigger=trigger or Trigger(),
    )
    stored = art.publish(manifest, folder)
    art.set_alias("latest", stored.version, reason=result.recommendation)
    AuditLog(store).record(
        "assess.completed",
        art.resource_id,
        trigger=trigger,
        version=stored.version,
        recommendation=result.recommendation,
    )
    return stored.version
