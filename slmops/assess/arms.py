"""Each arm answers the cases: prompts (zero-shot, few-shot, with retrieved context), the
gate's checks per case, failure rates with intervals, paired against prompt-only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slmops.assess.results import ArmResult, CaseOutcome, Comparison, Interval
from slmops.assess.task import BASELINE, BEHAVIOUR, KNOWLEDGE, Progress
from slmops.errors import ConfigError
from slmops.generation import Generator, Prompt, was_cut
from slmops.suites.scorers import Scorer, parse_answer
from slmops.suites.spec import Case, Suites
from slmops.suites.stats import mean_interval, paired_bootstrap, resample_indices


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
    """The case's checks and, if it failed, whether on behaviour or on knowledge: a
    well-formed answer that cites no doc holding the answer, or does not say what the doc
    says (the case's facts), lacks the knowledge."""
    scores = scorer.score(case, answer, retrieved=retrieved)
    knowledge = (".cites_retrieved", ".states_facts")
    checks = {k: v for k, v in scores.items() if not k.endswith(knowledge)}
    if not all(v >= 1.0 for v in checks.values()):
        return checks, "behaviour"
    if kind == "knowledge":
        known = True
        if case.expected_sources:
            obj = parse_answer(answer) or {}
            sources = obj.get("sources") if isinstance(obj.get("sources"), list) else []
            cites = any(s in case.expected_sources for s in sources or [])
            checks[f"{case.suite}.cites_expected"] = float(cites)
            known &= cites
        if case.facts:
            says = scores[f"{case.suite}.states_facts"]
            checks[f"{case.suite}.states_facts"] = says
            known &= says >= 1.0
        if not known:
            return checks, "knowledge"
    return checks, None


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
    from slmops.suites.prompts import answer_all

    t0 = time.perf_counter()
    limits = [suites.config.suites[c.suite].max_new_tokens for c in cases]
    answers = answer_all(
        generator, prompts, limits, (lambda d, o: on_progress(arm, d, o)) if on_progress else None
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
                cut=was_cut(answer),
                failed=failed_kind is not None,
                kind=failed_kind,
                checks=checks,
            )
        )
    stats = {
        "cut": float(sum(o.cut for o in outcomes)),
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
