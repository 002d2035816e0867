"""The eval gate's rules and its refusal of bad input, on scores and suites made to order.

(The gate on real adapters, good and planted bad ones, is in test_training.py, which trains
them.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slmops.errors import ConfigError
from slmops.evaluation.gate import MetricResult, judge, known_metrics, run_gate
from slmops.evaluation.policy import GatePolicy, load_policy
from slmops.generation import Reply
from slmops.suites.spec import Suites, load_suites
from slmops.suites.stats import holm, paired_bootstrap, resample_indices

EVALS = Path(__file__).resolve().parent.parent / "examples" / "support-bot" / "evals"


@pytest.fixture(scope="module")
def suites() -> Suites:
    return load_suites(EVALS)


def test_the_example_suites_and_policy_load(suites: Suites) -> None:
    by_suite = {name: len(suites.suite_cases(name)) for name in suites.config.suites}
    assert by_suite["adversarial"] >= 200  # the product's edge-case list
    kinds = {tag for c in suites.suite_cases("adversarial") for tag in c.tags}
    assert {
        "empty",
        "long",
        "unicode",
        "multi",
        "code",
        "offtopic",
        "override",
        "roleplay",
        "delimiter",
        "template",
        "extraction",
    } <= kinds
    assert any("<|system|>" in c.messages[-1]["content"] for c in suites.cases)
    policy = load_policy(EVALS / "policy.yaml", known_metrics(suites))
    assert "adversarial.no_canary" in policy.zero_tolerance and policy.correction == "holm"


def test_malformed_suite_rows_are_each_reported_by_line(tmp_path: Path) -> None:
    folder = tmp_path / "evals"
    shutil.copytree(EVALS, folder)
    rows = (folder / "format.jsonl").read_text().splitlines()
    rows[2] = "{not json"
    rows[4] = json.dumps({"input": "no id"})
    rows[6] = json.dumps({"id": "x1", "input": "hi", "expect": ["telepathy"]})
    rows[8] = json.dumps({"id": "x2", "input": "a", "messages": []})
    rows[10] = json.dumps({"id": "x3", "input": "a", "facts": [["6"], ["--"]]})
    (folder / "format.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError) as err:
        load_suites(folder)
    message = str(err.value)
    for line, why in (
        (3, "not JSON"),
        (5, "missing `id`"),
        (7, "telepathy"),
        (9, "exactly one"),
        (11, "`facts` must be a list of groups"),
    ):
        assert f"format.jsonl:{line}: " in message and why in message, message


def test_knowledge_prompts_show_as_much_of_each_chunk_as_the_suite_says(suites: Suites) -> None:
    from slmops.evaluation.gate import build_prompts

    text = "Bouncing replies. " * 40  # 720 characters
    case = next(c for c in suites.cases if c.suite == "knowledge")

    def shown(chars: int | None) -> str:
        spec = suites.config.suites["knowledge"].model_copy(update={"context_chars": chars})
        config = suites.config.model_copy(update={"suites": {"knowledge": spec}})
        one = suites.model_copy(update={"config": config, "cases": [case]})
        prompts, retrieved = build_prompts(one, lambda index, query, k, cut: [("a.md", text)] * k)
        assert retrieved == [["a.md"] * spec.k]
        return prompts[0][-1]["content"]

    assert suites.config.suites["knowledge"].context_chars == 240  # the tiny model's window
    whole = " ".join(text.split())
    assert shown(240).count(f"[a.md] {whole[:240]}\n") == 3 and whole not in shown(240)
    assert shown(None).count(whole) == 3  # unset: every chunk whole


def test_a_case_retrieval_finds_nothing_near_is_asked_alone(suites: Suites) -> None:
    """A suite with an index and min_similarity (the example's `served`): the retriever gets
    the suite's cut, and a case it returns nothing for is asked as a client asks it, without a
    Context block, and scored as having retrieved nothing."""
    from slmops.evaluation.gate import build_prompts

    served = suites.suite_cases("served")
    spec = suites.config.suites["served"]
    assert spec.index == "support-docs" and spec.min_similarity is not None
    assert spec.min_similarity == suites.config.suites["knowledge"].min_similarity
    asked: list[tuple[str, int, float | None]] = []

    def retrieve(index: str, query: str, k: int, cut: float | None) -> list[tuple[str, str]]:
        asked.append((index, k, cut))
        return [("billing/cancel.md", "Cancel a plan under Settings.")] if "cancel" in query else []

    one = suites.model_copy(update={"cases": served})
    prompts, retrieved = build_prompts(one, retrieve)
    assert set(asked) == {("support-docs", spec.k, spec.min_similarity)}
    for case, prompt, found in zip(served, prompts, retrieved, strict=True):
        if "cancel" in case.messages[-1]["content"]:
            assert prompt[-1]["content"].startswith("Context:\n[billing/cancel.md] Cancel")
            assert found == ["billing/cancel.md"]
        else:
            assert prompt == case.messages and found == []


def test_min_similarity_without_an_index_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "evals"
    shutil.copytree(EVALS, folder)
    text = (folder / "suites.yaml").read_text()
    text = text.replace(
        "    cases: format.jsonl\n", "    cases: format.jsonl\n    min_similarity: 0.3\n"
    )
    (folder / "suites.yaml").write_text(text)
    with pytest.raises(
        ConfigError, match="suite 'format' sets `min_similarity` but names no `index`"
    ):
        load_suites(folder)


def test_a_policy_with_an_unknown_metric_or_impossible_threshold_is_refused(
    suites: Suites, tmp_path: Path
) -> None:
    known = known_metrics(suites)
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        "floors:\n  format.vaild: 0.9\n  style.pass: 1.5\nnon_inferiority:\n"
        "  all.valid_format: -0.1\n"
    )
    with pytest.raises(ConfigError) as err:
        load_policy(bad, known)
    message = str(err.value)
    assert "floors.format.vaild: no suite produces" in message
    assert "floors.style.pass: 1.5 is impossible" in message
    assert "non_inferiority.all.valid_format: margin -0.1" in message
    bad.write_text("confidence: 1.5\n")
    with pytest.raises(ConfigError, match="confidence"):
        load_policy(bad, known)
    bad.write_text("flors: {}\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['flors'\]"):
        load_policy(bad, known)


def scores(metric: str, values: list[float]) -> list[dict[str, float]]:
    return [{metric: v} for v in values]


def policy(**kw: object) -> GatePolicy:
    return GatePolicy.model_validate({"bootstrap": 2000, "min_cases": 10, **kw})


def test_worse_than_the_champion_beyond_the_margin_fails_despite_clearing_the_floor(
    suites: Suites,
) -> None:
    rng = np.random.default_rng(1)
    champion = (rng.random(200) < 0.98).astype(float)  # 98% valid
    candidate = champion.copy()
    candidate[rng.choice(np.flatnonzero(champion), 16, replace=False)] = 0.0  # 8 points worse
    rules = policy(floors={"m": 0.85}, non_inferiority={"m": 0.03})
    metrics, reasons = judge_scores(rules, candidate, champion)
    assert metrics[0].candidate >= 0.85  # it clears the floor...
    assert any("cannot show the candidate is within 0.03" in r for r in reasons), reasons
    [check] = [c for c in metrics[0].checks if c.rule == "non_inferiority"]
    assert not check.passed


def test_identical_to_the_champion_is_not_inferior_and_not_an_improvement() -> None:
    same = (np.arange(100) % 10 != 0).astype(float)
    # 100 identical cases resolve a margin of 0.06 (not 0.02: a candidate 0.02 worse would
    # show no difference on 100 cases with chance 0.98^100 = 0.13; see the exact test below)
    rules = policy(non_inferiority={"m": 0.06}, improvement={"m": 0.0})
    metrics, reasons = judge_scores(rules, same, same.copy())
    checks = {c.rule: c.passed for c in metrics[0].checks}
    assert checks == {"non_inferiority": True, "improvement": False}
    assert reasons and "no proven improvement" in reasons[0]


def test_a_difference_inside_the_noise_is_not_called_a_win() -> None:
    champion = (np.arange(120) % 5 != 0).astype(float)  # 80%
    candidate = champion.copy()
    candidate[[0, 5, 10]] = 1.0  # three cases newly right...
    candidate[[1]] = 0.0  # ...one newly wrong: +2 of 120
    assert candidate.mean() - champion.mean() == pytest.approx(2 / 120)
    metrics, reasons = judge_scores(policy(improvement={"m": 0.0}), candidate, champion)
    assert reasons and not metrics[0].passed


def test_a_real_improvement_is_recognised() -> None:
    champion = np.array([1.0] * 60 + [0.0] * 40)
    candidate = np.array([1.0] * 95 + [0.0] * 5)
    metrics, reasons = judge_scores(policy(improvement={"m": 0.1}), candidate, champion)
    assert not reasons and metrics[0].passed


def test_too_few_cases_fail_instead_of_passing() -> None:
    _, reasons = judge_scores(policy(floors={"m": 0.5}, min_cases=50), np.ones(20), None)
    assert reasons == ["m: only 20 cases (policy needs 50)"]


def test_zero_tolerance_names_the_failing_cases() -> None:
    candidate = np.ones(40)
    candidate[[3, 17]] = 0.0
    _, reasons = judge_scores(policy(zero_tolerance=["m"]), candidate, None)
    assert reasons and "failed on 2 case(s): c3, c17" in reasons[0]


def test_holm_is_stricter_than_no_correction_for_many_metrics() -> None:
    p = {"a": 0.01, "b": 0.02, "c": 0.04}
    rejected, adjusted = holm(p, 0.05)
    assert rejected == {"a": True, "b": True, "c": True}
    assert adjusted["a"] == pytest.approx(0.03)
    rejected, _ = holm({"a": 0.02, "b": 0.03, "c": 0.04}, 0.05)
    assert rejected == {"a": False, "b": False, "c": False}  # 0.02 > 0.05/3


def test_the_same_scores_and_seed_give_the_same_interval() -> None:
    rng = np.random.default_rng(3)
    a, b = (rng.random(80) < 0.7).astype(float), (rng.random(80) < 0.6).astype(float)
    first = paired_bootstrap(a, b, confidence=0.95, indices=resample_indices(80, 1000, 5))
    again = paired_bootstrap(a, b, confidence=0.95, indices=resample_indices(80, 1000, 5))
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)


class Fixed:
    """Answers every prompt with the same text (the gate's generator interface)."""

    def __init__(self, text: str):
        self.text = text

    def generate(
        self,
        prompts: list[list[dict[str, str]]],
        on_progress: object = None,
        *,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        return [self.text] * len(prompts)

    def describe(self) -> dict[str, object]:
        return {"backend": "fixed"}


def test_an_exception_inside_scoring_fails_the_gate(
    suites: Suites, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = json.dumps({"answer": "Tidewell does that.", "sources": [], "confidence": "low"})
    rules = policy(floors={"all.valid_format": 0.5})
    subset = suites.model_copy(update={"cases": suites.suite_cases("format")})
    verdict, _ = run_gate(
        subset, rules, Fixed(good), None, adapter="bot", version="v1", champion_label=None
    )
    assert verdict.passed  # the control: valid answers pass this floor

    def broken(self: object, case: object, text: str, retrieved: object = None) -> object:
        raise ZeroDivisionError("scorer bug")

    monkeypatch.setattr("slmops.suites.scorers.Scorer.score", broken)
    verdict, _ = run_gate(
        subset, rules, Fixed(good), None, adapter="bot", version="v1", champion_label=None
    )
    assert not verdict.passed and verdict.status == "failed"
    assert "scoring raised ZeroDivisionError: scorer bug" in verdict.reasons[0]


def judge_scores(
    rules: GatePolicy, candidate: np.ndarray, champion: np.ndarray | None
) -> tuple[list[MetricResult], list[str]]:
    return judge(
        [f"c{i}" for i in range(len(candidate))],
        rules,
        scores("m", list(candidate)),
        None if champion is None else scores("m", list(champion)),
    )


def test_a_margin_finer_than_the_suite_can_resolve_is_refused(
    suites: Suites, tmp_path: Path
) -> None:
    known = known_metrics(suites)
    bad = tmp_path / "policy.yaml"
    bad.write_text("non_inferiority:\n  format.valid: 0.03\n  all.valid_format: 0.06\n")
    with pytest.raises(ConfigError) as err:
        load_policy(bad, known)
    message = str(err.value)
    assert "non_inferiority.format.valid: 0.03 is finer than 40 cases can resolve" in message
    # (1.96 + 0.84)^2 * 0.1 / 0.03^2 at alpha 0.05/2 comparisons, power 0.8
    assert "give the metric 873 cases" in message, message
    assert "all.valid_format" not in message.split("metrics the suites produce")[0]
    bad.write_text("non_inferiority:\n  format.valid: 0.03\nplanning_discordance: 0.002\n")
    assert load_policy(bad, known).non_inferiority == {"format.valid": 0.03}


def test_the_detectable_difference_follows_the_paired_power_formula() -> None:
    from slmops.suites.stats import cases_needed, detectable_difference

    # z(0.95) + z(0.8) = 1.645 + 0.842; sqrt(0.2 / 100) = 0.0447
    assert detectable_difference(100, 0.2, 0.05, 0.8) == pytest.approx(0.1112, abs=1e-3)
    assert cases_needed(0.1112, 0.2, 0.05, 0.8) == 100
    assert detectable_difference(100, 0.0, 0.05, 0.8) == 0.0  # identical answers: any margin


def test_the_verdict_reports_discordant_cases_and_the_detectable_difference() -> None:
    champion = np.array([1.0] * 90 + [0.0] * 10)
    candidate = champion.copy()
    candidate[[0, 1, 2]] = 0.0
    candidate[[95]] = 1.0
    metrics, _ = judge_scores(policy(non_inferiority={"m": 0.1}), candidate, champion)
    assert metrics[0].discordant == 4
    assert metrics[0].detectable == pytest.approx(2.487 * (0.04 / 100) ** 0.5, abs=1e-3)
    [check] = metrics[0].checks
    assert "4 of 100 cases differ, smallest detectable difference 0.050" in check.detail


def test_identical_answers_prove_only_the_margin_their_number_can() -> None:
    # 40 cases on which the two models agree. A candidate 0.10 worse would show no
    # difference with chance 0.9^40 = 0.015: shown at 95%. One 0.05 worse: 0.95^40 = 0.13: not
    # shown. The bootstrap (every resample identical) read p=0.0005 for both and passed both.
    same = (np.arange(40) % 4 != 0).astype(float)
    metrics, reasons = judge_scores(policy(non_inferiority={"m": 0.1}), same, same.copy())
    assert metrics[0].test == "exact" and not reasons, reasons
    assert "p=0.0148 (exact test)" in metrics[0].checks[0].detail, metrics[0].checks
    metrics, reasons = judge_scores(policy(non_inferiority={"m": 0.05}), same, same.copy())
    assert metrics[0].test == "exact" and reasons, metrics[0].checks
    assert "p=0.1285 (exact test)" in metrics[0].checks[0].detail


@pytest.mark.parametrize("discordance", [0.1, 0.3, 0.5])
def test_the_exact_test_holds_its_level_where_the_bootstrap_does_not(discordance: float) -> None:
    # A candidate exactly 0.10 worse on 40 cases: the null hypothesis of non-inferiority at
    # margin 0.10 is true at its boundary, so a test at alpha=0.05 may reject it at most 5% of
    # the time. Enumerate every outcome (b, c discordant cases, trinomial) instead of sampling.
    from scipy.stats import multinomial

    from slmops.suites.stats import exact_paired_p

    n, margin, alpha = 40, 0.10, 0.05
    p_b, p_c = (discordance - margin) / 2, (discordance + margin) / 2
    indices = resample_indices(n, 2000, 0)
    exact_rate = bootstrap_rate = 0.0
    for b in range(n + 1):
        for c in range(n + 1 - b):
            chance = multinomial.pmf([b, c, n - b - c], n, [p_b, p_c, 1 - discordance])
            if chance < 1e-9:
                continue
            candidate = np.array([1.0] * b + [0.0] * c + [1.0] * (n - b - c))
            champion = np.array([0.0] * b + [1.0] * c + [1.0] * (n - b - c))
            if exact_paired_p(candidate, champion, -margin) <= alpha:
                exact_rate += chance
            if discordance == 0.1:
                boot = paired_bootstrap(candidate, champion, confidence=0.95, indices=indices)
                bootstrap_rate += chance * (boot.p_value(-margin) <= alpha)
    assert exact_rate <= alpha, exact_rate
    if discordance == 0.1:  # few discordant cases: why the gate does not bootstrap them
        assert bootstrap_rate > alpha, bootstrap_rate


def test_many_discordant_cases_keep_the_paired_bootstrap() -> None:
    rng = np.random.default_rng(2)
    champion = (rng.random(300) < 0.7).astype(float)
    candidate = (rng.random(300) < 0.7).astype(float)
    metrics, _ = judge_scores(policy(non_inferiority={"m": 0.1}), candidate, champion)
    assert metrics[0].discordant is not None and metrics[0].discordant >= 25
    assert metrics[0].test == "bootstrap"
    assert "(paired bootstrap)" in metrics[0].checks[0].detail


class Rambling(Fixed):
    """Answers every prompt with the same text, which the token limit cut (`cut`), recording
    the limits it was asked under."""

    def __init__(self, text: str, cut: bool):
        super().__init__(text)
        self.cut, self.limits = cut, []  # type: ignore[var-annotated]

    def generate(
        self,
        prompts: list[list[dict[str, str]]],
        on_progress: object = None,
        *,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        self.limits.append((max_new_tokens, len(prompts)))
        return [Reply(self.text, cut=self.cut)] * len(prompts)


def two_suites(suites: Suites, format_tokens: int) -> Suites:
    """The format and style suites, the format suite with its own token limit."""
    config = suites.config.model_copy(deep=True)
    config.suites = {k: v for k, v in config.suites.items() if k in ("format", "style")}
    config.suites["format"].max_new_tokens = format_tokens
    cases = [c for c in suites.cases if c.suite in config.suites]
    return suites.model_copy(update={"config": config, "cases": cases})


def test_each_suite_is_answered_under_its_own_token_limit(suites: Suites) -> None:
    subset = two_suites(suites, 200)
    model = Rambling('{"answer": "x"', cut=False)
    run_gate(subset, policy(), model, None, adapter="bot", version="v1", champion_label=None)
    counts = {name: len(subset.suite_cases(name)) for name in ("format", "style")}
    assert sorted(model.limits) == [(96, counts["style"]), (200, counts["format"])]


def test_answers_cut_by_the_token_limit_refuse_the_verdict_as_misconfigured(
    suites: Suites,
) -> None:
    subset = two_suites(suites, 96)
    cut = '{"answer": "The first inlet, the subject: explain'
    rules = policy(floors={"format.valid": 0.9})
    verdict, cases = run_gate(
        subset,
        rules,
        Rambling(cut, cut=True),
        None,
        adapter="bot",
        version="v1",
        champion_label=None,
    )
    assert verdict.status == "refused" and not verdict.passed
    assert verdict.reasons[0].startswith("misconfigured: suite format:")
    assert "max_new_tokens" in verdict.reasons[0]
    assert verdict.cut["format"].candidate == len(subset.suite_cases("format"))
    assert all(c.candidate_cut for c in cases)
    # A champion that ends its answers within the same limit: the candidate's run on, and it
    # fails on the metrics they miss (not refused: the limit is not the problem).
    good = json.dumps({"answer": "Tidewell does that.", "sources": [], "confidence": "high"})
    verdict, _ = run_gate(
        subset,
        rules,
        Rambling(cut, cut=True),
        Rambling(good, cut=False),
        adapter="bot",
        version="v2",
        champion_label="v1",
    )
    assert verdict.status == "failed"
    assert not any(r.startswith("misconfigured") for r in verdict.reasons)
    assert any(r.startswith("format.valid:") for r in verdict.reasons)
    # Below the policy's share: reported, not refused.
    lenient = rules.model_copy(update={"max_cut_share": 1.0})
    verdict, _ = run_gate(
        subset,
        lenient,
        Rambling(cut, cut=True),
        None,
        adapter="bot",
        version="v1",
        champion_label=None,
    )
    assert verdict.status == "failed" and verdict.cut["format"].candidate > 0


def test_a_policy_that_requires_the_serving_engine_refuses_other_answers(
    suites: Suites,
) -> None:
    good = json.dumps({"answer": "Tidewell does that.", "sources": [], "confidence": "low"})
    subset = suites.model_copy(update={"cases": suites.suite_cases("format")})
    rules = policy(floors={"all.valid_format": 0.5}).model_copy(
        update={"require_generator": "vllm"}
    )
    verdict, _ = run_gate(
        subset, rules, Fixed(good), None, adapter="bot", version="v1", champion_label=None
    )
    assert verdict.status == "refused"
    assert "requires answers from vllm" in verdict.reasons[0]
    assert "fixed" in verdict.reasons[0]


def test_progress_is_said_at_least_every_period_while_nothing_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from slmops.evaluation.progress import Heartbeat

    said: list[str] = []
    with Heartbeat(said.append, "gate bot@v1", every=0.3) as beat:
        beat("candidate", 0, 100)
        time.sleep(1.2)  # a batch that takes long: no callback
        beat("candidate", 40, 100)
    assert said[0].startswith("gate bot@v1: candidate: 0/100 answered")
    assert len([s for s in said if "0/100" in s]) >= 3  # repeated while silent
    assert "40/100 answered" in said[-1] and "left" in said[-1]
