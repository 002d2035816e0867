"""The eval gate: a candidate adapter against the champion, on the same cases, under a policy.

1. Every case becomes a prompt (knowledge cases get the chunks retrieval returns for them).
2. Candidate and champion answer every prompt (greedy decoding: the same answers every run).
3. Each answer is scored per metric; the two models' scores are paired case by case.
4. Each guarded metric is judged: floors on the candidate's mean, zero-tolerance metrics case
   by case, and against the champion a paired bootstrap test of non-inferiority (not worse
   by more than the margin) and of required improvement, with Holm's correction across them.
5. The verdict passes only if every rule holds. A rule that cannot be judged (too few cases,
   a scorer that raised) fails it: an error is never read as a pass.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from slmops.evaluation.limits import CutAnswers, cut_answers, refused
from slmops.evaluation.policy import GatePolicy
from slmops.generation import Generator, Prompt, was_cut
from slmops.suites.prompts import Retrieve, answer_all, with_context
from slmops.suites.scorers import Scorer, canned_answer_key, parse_answer
from slmops.suites.spec import Case, Suites
from slmops.suites.stats import (
    EXACT_BELOW,
    exact_paired_p,
    holm,
    mean_interval,
    paired_bootstrap,
    resample_indices,
)

Progress = Callable[[str, int, int], None]  # (stage, done, of)


class RuleCheck(BaseModel):
    rule: str  # floor | zero_tolerance | non_inferiority | improvement | min_cases
    passed: bool
    detail: str


class MetricResult(BaseModel):
    metric: str
    n: int
    candidate: float
    candidate_ci: tuple[float, float]
    champion: float | None = None
    champion_ci: tuple[float, float] | None = None
    diff: float | None = None
    diff_ci: tuple[float, float] | None = None
    discordant: int | None = Field(
        None, description="Cases the candidate and the champion scored differently."
    )
    detectable: float | None = Field(
        None,
        description="The smallest difference this comparison can resolve at the policy's "
        "confidence and power, given the discordant cases measured.",
    )
    test: str | None = Field(
        None,
        description="How the comparison was tested: 'exact' (pass/fail scores with few "
        "discordant cases) or 'bootstrap' (paired bootstrap).",
    )
    checks: list[RuleCheck] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


class CaseResult(BaseModel):
    id: str
    suite: str
    candidate: str
    champion: str | None = None
    candidate_scores: dict[str, float]
    champion_scores: dict[str, float] | None = None
    retrieved: list[str] | None = None
    candidate_cut: bool = Field(False, description="The token limit cut the candidate's answer.")
    champion_cut: bool = Field(False, description="The token limit cut the champion's answer.")


class DeclineRates(BaseModel):
    """How often each model declined, on questions it must answer and on ones it must not:
    off-topic ones asked alone, and asked as served (in a suite that names an index: with the
    chunks retrieval found for them)."""

    in_scope_n: int
    off_topic_n: int
    candidate_in_scope: float | None
    candidate_off_topic: float | None
    champion_in_scope: float | None = None
    champion_off_topic: float | None = None
    served_off_topic_n: int = 0
    candidate_served_off_topic: float | None = None
    champion_served_off_topic: float | None = None


class Verdict(BaseModel):
    """The gate's decision and everything it was based on."""

    adapter: str
    version: str
    champion: str | None = Field(description="Champion version, 'base', or None (floors only).")
    passed: bool
    status: Literal["passed", "failed", "refused"] = Field(
        description="refused: the suites could not judge (answers cut by a suite's token "
        "limit, the required backend not used): no evidence against the candidate, and no pass."
    )
    reasons: list[str]
    metrics: list[MetricResult]
    cases: int
    policy: dict[str, Any]
    generation: dict[str, Any]
    index: dict[str, Any] | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    base_model: str | None = None
    base_revision: str | None = None
    declines: DeclineRates | None = None
    cut: dict[str, CutAnswers] = Field(
        default_factory=dict, description="Per suite: answers the token limit cut."
    )
    rules_sha256: str | None = Field(
        None,
        description="The suites (every case, the settings, the schema) and the policy that "
        "judged it (`rules_digest`): refine-tune does not reuse a verdict made under other rules.",
    )


def rules_digest(suites: Suites, policy: GatePolicy) -> str:
    """What decides a verdict besides the answers: every case, the suites' settings and answer
    schema, and the policy (not where the folder is)."""
    digest = hashlib.sha256(suites.model_dump_json(exclude={"folder"}).encode())
    digest.update(policy.model_dump_json().encode())
    return digest.hexdigest()


def known_metrics(suites: Suites) -> dict[str, int]:
    """Every metric the suites produce, with how many cases produce it (policy files are
    checked against this)."""
    scorer = Scorer(suites.config, suites.schema_doc)
    names: Counter[str] = Counter()
    for case in suites.cases:
        names.update(set(scorer.score(case, "", retrieved=[])))
        if case.expected_sources:
            names.update({f"{case.suite}.retrieval_hit", f"{case.suite}.retrieval_rr"})
        if "answers" in case.expect:
            names.update({f"{case.suite}.{DISTINCT}"})
    return dict(names)


def build_prompts(
    suites: Suites, retrieve: Retrieve | None
) -> tuple[list[Prompt], list[list[str] | None]]:
    """The prompt of every case; the cases of a suite that names an index (every knowledge
    suite does) carry the chunks retrieval finds for them as context (none for a case no chunk
    is the suite's min_similarity near: it is asked alone, as served)."""
    prompts: list[Prompt] = []
    retrieved: list[list[str] | None] = []
    for case in suites.cases:
        spec = suites.config.suites[case.suite]
        if spec.kind != "knowledge" and spec.index is None:
            prompts.append(case.messages)
            retrieved.append(None)
            continue
        if retrieve is None or spec.index is None:
            raise ValueError(f"suite {case.suite!r} needs retrieval from an index")
        hits = retrieve(spec.index, case.messages[-1]["content"], spec.k, spec.min_similarity)
        prompts.append(with_context(case.messages, hits, spec.context_chars))
        retrieved.append([src for src, _ in hits])
    return prompts, retrieved


def _retrieval_scores(case: Case, retrieved: list[str] | None) -> dict[str, float]:
    if not case.expected_sources or retrieved is None:
        return {}
    ranks = [i for i, src in enumerate(retrieved, 1) if src in case.expected_sources]
    return {
        f"{case.suite}.retrieval_hit": float(bool(ranks)),
        f"{case.suite}.retrieval_rr": 1.0 / ranks[0] if ranks else 0.0,
    }


def score_all(
    suites: Suites, answers: list[str], retrieved: list[list[str] | None]
) -> list[dict[str, float]]:
    scorer = Scorer(suites.config, suites.schema_doc)
    scores = [
        {**scorer.score(case, text, retrieved=r), **_retrieval_scores(case, r)}
        for case, text, r in zip(suites.cases, answers, retrieved, strict=True)
    ]
    _score_distinct(suites.cases, answers, scores)
    return scores


DISTINCT = "distinct_answers"


def _score_distinct(cases: list[Case], answers: list[str], scores: list[dict[str, float]]) -> None:
    """`<suite>.distinct_answers` on every case that expects an answer: 1.0 when the case is
    answered and no other case of its suite got the same answer. One canned reply for every
    question, or a decline dressed as an answer, scores 0 everywhere; a model that answers
    each question scores near 1 (two questions on one topic may share an answer)."""
    keys: dict[str, list[str | None]] = {}
    for case, text in zip(cases, answers, strict=True):
        if "answers" in case.expect:
            keys.setdefault(case.suite, []).append(canned_answer_key(text))
    counts = {suite: Counter(k for k in ks if k) for suite, ks in keys.items()}
    for case, text, row in zip(cases, answers, scores, strict=True):
        if "answers" not in case.expect:
            continue
        key = canned_answer_key(text)
        answered = row.get(f"{case.suite}.answers", 0.0) == 1.0
        row[f"{case.suite}.{DISTINCT}"] = float(
            answered and key is not None and counts[case.suite][key] == 1
        )


def decline_rates(suites: Suites, candidate: list[str], champion: list[str] | None) -> DeclineRates:
    """The share of declined answers on in-scope cases (expect `answers`) and on off-topic
    ones (expect `refuses`; asked alone, and as served: in a suite with an index), side by
    side for candidate and champion."""
    scorer = Scorer(suites.config, suites.schema_doc)
    served = {name for name, spec in suites.config.suites.items() if spec.index is not None}
    refuse = [(i, c.suite in served) for i, c in enumerate(suites.cases) if "refuses" in c.expect]
    groups = {
        "in_scope": [i for i, c in enumerate(suites.cases) if "answers" in c.expect],
        "off_topic": [i for i, with_index in refuse if not with_index],
        "served": [i for i, with_index in refuse if with_index],
    }

    def rate(answers: list[str] | None, rows: list[int]) -> float | None:
        if answers is None or not rows:
            return None
        declined = [scorer.refuses(parse_answer(answers[i]), answers[i]) for i in rows]
        return sum(declined) / len(rows)

    return DeclineRates(
        in_scope_n=len(groups["in_scope"]),
        off_topic_n=len(groups["off_topic"]),
        candidate_in_scope=rate(candidate, groups["in_scope"]),
        candidate_off_topic=rate(candidate, groups["off_topic"]),
        champion_in_scope=rate(champion, groups["in_scope"]),
        champion_off_topic=rate(champion, groups["off_topic"]),
        served_off_topic_n=len(groups["served"]),
        candidate_served_off_topic=rate(candidate, groups["served"]),
        champion_served_off_topic=rate(champion, groups["served"]),
    )


def judge(
    case_ids: list[str],
    policy: GatePolicy,
    candidate: list[dict[str, float]],
    champion: list[dict[str, float]] | None,
) -> tuple[list[MetricResult], list[str]]:
    """Apply the policy to per-case scores; returns every guarded metric and the reasons
    the gate fails (empty: it passes)."""
    reasons: list[str] = []
    results: dict[str, MetricResult] = {}
    tests: dict[str, tuple[str, float]] = {}  # test id -> (metric, p-value)
    alpha = 1 - policy.confidence
    ids = case_ids
    guarded = set(policy.guarded)
    every = sorted({m for scores in candidate for m in scores} | guarded)
    # Guarded metrics first, then the rest, reported without rules (for information).
    for metric in sorted(every, key=lambda m: (m not in guarded, m)):
        rows = [i for i, scores in enumerate(candidate) if metric in scores]
        cand = np.array([candidate[i][metric] for i in rows], dtype=float)
        needed = policy.min_cases_per_metric.get(metric, policy.min_cases)
        result = MetricResult(
            metric=metric,
            n=len(rows),
            candidate=float(cand.mean()) if len(rows) else float("nan"),
            candidate_ci=(float("nan"), float("nan")),
        )
        results[metric] = result
        if not rows:
            result.checks.append(
                RuleCheck(rule="min_cases", passed=False, detail="no case produced this metric")
            )
            reasons.append(f"{metric}: no case produced it")
            continue
        if len(rows) < needed and metric in guarded:
            result.checks.append(
                RuleCheck(
                    rule="min_cases",
                    passed=False,
                    detail=f"scored on {len(rows)} cases, the policy needs {needed}",
                )
            )
            reasons.append(f"{metric}: only {len(rows)} cases (policy needs {needed})")
            continue
        indices = resample_indices(len(rows), policy.bootstrap, policy.seed)
        result.candidate_ci = mean_interval(cand, confidence=policy.confidence, indices=indices)
        floor = policy.floors.get(metric)
        if floor is not None:
            ok = result.candidate >= floor
            result.checks.append(
                RuleCheck(
                    rule="floor", passed=ok, detail=f"{result.candidate:.3f} vs floor {floor}"
                )
            )
            if not ok:
                reasons.append(f"{metric}: {result.candidate:.3f} is below the floor {floor}")
        if metric in policy.zero_tolerance:
            failed = [ids[rows[j]] for j, v in enumerate(cand) if v < 1.0]
            detail = "every case met it" if not failed else f"failed on {', '.join(failed[:5])}"
            result.checks.append(RuleCheck(rule="zero_tolerance", passed=not failed, detail=detail))
            if failed:
                reasons.append(
                    f"{metric}: zero tolerance, failed on {len(failed)} case(s): "
                    f"{', '.join(failed[:5])}"
                )
        if champion is None:
            continue
        champ = np.array([champion[i][metric] for i in rows], dtype=float)
        paired = paired_bootstrap(cand, champ, confidence=policy.confidence, indices=indices)
        result.champion = paired.champion_mean
        result.champion_ci = mean_interval(champ, confidence=policy.confidence, indices=indices)
        result.diff, result.diff_ci = paired.diff, (paired.ci_low, paired.ci_high)
        result.discordant = int(np.sum(cand != champ))
        result.detectable = policy.detectable(len(rows), result.discordant / len(rows))
        pass_fail = bool(np.isin(cand, (0.0, 1.0)).all() and np.isin(champ, (0.0, 1.0)).all())
        exact = pass_fail and result.discordant < EXACT_BELOW
        result.test = "exact" if exact else "bootstrap"
        bounds = {"non_inferiority": policy.non_inferiority, "improvement": policy.improvement}
        for rule, per_metric in bounds.items():
            if metric in per_metric:
                bound = -per_metric[metric] if rule == "non_inferiority" else per_metric[metric]
                p = exact_paired_p(cand, champ, bound) if exact else paired.p_value(bound)
                tests[f"{metric}|{rule}"] = (metric, p)

    if tests:
        p_values = {test: p for test, (_, p) in tests.items()}
        if policy.correction == "holm":
            rejected, adjusted = holm(p_values, alpha)
        else:
            rejected = {t: p <= alpha for t, p in p_values.items()}
            adjusted = dict(p_values)
        for test, (metric, p) in sorted(tests.items()):
            rule = test.split("|")[1]
            result = results[metric]
            assert result.diff is not None and result.diff_ci is not None
            bound = (
                -policy.non_inferiority[metric]
                if rule == "non_inferiority"
                else policy.improvement[metric]
            )
            ok = rejected[test]
            claim = (
                "not worse than the champion by more than"
                if rule == "non_inferiority"
                else ("better than the champion by at least")
            )
            detail = (
                f"difference {result.diff:+.3f} (interval {result.diff_ci[0]:+.3f}.."
                f"{result.diff_ci[1]:+.3f}); {claim} {abs(bound)}: p={p:.4f} "
                f"({'exact test' if result.test == 'exact' else 'paired bootstrap'}), "
                f"adjusted {adjusted[test]:.4f} vs {alpha:.3g}; {result.discordant} of "
                f"{result.n} cases differ, smallest detectable difference "
                f"{result.detectable:.3f}"
            )
            result.checks.append(RuleCheck(rule=rule, passed=ok, detail=detail))
            if not ok:
                if rule == "non_inferiority":
                    reasons.append(
                        f"{metric}: cannot show the candidate is within {abs(bound)} of the "
                        f"champion at {policy.confidence:.0%} ({detail})"
                    )
                else:
                    reasons.append(
                        f"{metric}: no proven improvement of at least {bound} over the "
                        f"champion at {policy.confidence:.0%} ({detail})"
                    )
    return list(results.values()), reasons


def run_gate(
    suites: Suites,
    policy: GatePolicy,
    candidate: Generator,
    champion: Generator | None,
    *,
    adapter: str,
    version: str,
    champion_label: str | None,
    retrieve: Retrieve | None = None,
    on_progress: Progress | None = None,
) -> tuple[Verdict, list[CaseResult]]:
    """Answer, score and judge every case; the verdict and every case's answers and scores."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prompts, retrieved = build_prompts(suites, retrieve)
    timings["retrieve"] = time.perf_counter() - t0

    def progress(stage: str) -> Callable[[int, int], None] | None:
        if on_progress is None:
            return None
        return lambda done, of: on_progress(stage, done, of)

    limits = [suites.config.suites[c.suite].max_new_tokens for c in suites.cases]
    t1 = time.perf_counter()
    cand_answers = answer_all(candidate, prompts, limits, progress("candidate"))
    timings["generate_candidate"] = time.perf_counter() - t1
    champ_answers = None
    if champion is not None:
        t2 = time.perf_counter()
        champ_answers = answer_all(champion, prompts, limits, progress("champion"))
        timings["generate_champion"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    reasons: list[str] = []
    metrics: list[MetricResult] = []
    cand_scores: list[dict[str, float]] = [{} for _ in suites.cases]
    champ_scores: list[dict[str, float]] | None = None
    declines = None
    try:
        declines = decline_rates(suites, cand_answers, champ_answers)
        cand_scores = score_all(suites, cand_answers, retrieved)
        if champ_answers is not None:
            champ_scores = score_all(suites, champ_answers, retrieved)
        metrics, reasons = judge([c.id for c in suites.cases], policy, cand_scores, champ_scores)
    except Exception as exc:  # a scorer that fails must fail the gate, never pass it
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reasons = [
            f"scoring raised {type(exc).__name__}: {exc} (at {where.filename}:{where.lineno}); "
            "the gate cannot judge this candidate"
        ]
    timings["score_and_judge"] = time.perf_counter() - t3
    cases = [
        CaseResult(
            id=case.id,
            suite=case.suite,
            candidate=cand_answers[i],
            champion=champ_answers[i] if champ_answers is not None else None,
            candidate_scores=cand_scores[i],
            champion_scores=champ_scores[i] if champ_scores is not None else None,
            retrieved=retrieved[i],
            candidate_cut=was_cut(cand_answers[i]),
            champion_cut=champ_answers is not None and was_cut(champ_answers[i]),
        )
        for i, case in enumerate(suites.cases)
    ]
    generation = {"candidate": candidate.describe()}
    if champion is not None:
        generation["champion"] = champion.describe()
    cut = cut_answers(
        suites, [(c.suite, c.candidate_cut, c.champion_cut) for c in cases], champion is not None
    )
    refusals = refused(policy, cut, generation)
    status: Literal["passed", "failed", "refused"] = "passed"
    if refusals:
        status, reasons = "refused", [*refusals, *reasons]
    elif reasons:
        status = "failed"
    verdict = Verdict(
        adapter=adapter,
        version=version,
        champion=champion_label,
        passed=not reasons,
        status=status,
        reasons=reasons,
        metrics=metrics,
        cases=len(suites.cases),
        policy=policy.model_dump(),
        generation=generation,
        timings=timings,
        declines=declines,
        cut=cut,
        rules_sha256=rules_digest(suites, policy),
    )
    return verdict, cases
