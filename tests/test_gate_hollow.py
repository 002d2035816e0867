"""Nothing hollow passes: degenerate candidates fed to the gate under the example's own
policy each fail, naming the metric, while a helpful candidate passes the same rules.

The answers are written here (what each degenerate adapter would say) and fed to the real
suites, scorers and policy; retrieval returns each knowledge case's expected doc first, as
the example's index does (its retrieval is tested against the real index elsewhere)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from slmops.evaluation.answers import prompt_key
from slmops.evaluation.gate import Retrieve, Verdict, build_prompts, known_metrics, run_gate
from slmops.evaluation.policy import load_policy
from slmops.suites.spec import Case, Suites, load_suites
from tests.helpers import EVALS

DECLINE = "I can only help with questions about Tidewell."
FEW_CANNED = [
    "Open Settings and choose the option you need.",
    "Your admin can change this under Berth settings.",
    "Contact your Tidewell account manager for this.",
]
OTHER_DOC = "billing/invoices.md"


@pytest.fixture(scope="module")
def suites() -> Suites:
    return load_suites(EVALS)


def retrieve(suites: Suites) -> Retrieve:
    by_question = {c.messages[-1]["content"]: c for c in suites.cases if c.expected_sources}

    def hits(index: str, query: str, k: int, cut: float | None) -> list[tuple[str, str]]:
        case = by_question.get(query)
        # The served suite's off-topic questions: chunks as if every one were near the docs
        # (the real index's cut is tested on the real index: test_retrieval, test_benchmarks).
        expected = case.expected_sources if case else ["billing/cancel.md"]
        docs = [*expected, "api/rate-limits.md", "sla/sla-overview.md"]
        return [(src, f"text of {src}") for src in dict.fromkeys(docs)][:k]

    return hits


def reply(answer: str, sources: list[str], confidence: str = "high") -> str:
    return json.dumps({"answer": answer, "sources": sources, "confidence": confidence})


def context_sources(prompt: list[dict[str, str]]) -> list[str]:
    return re.findall(r"^\[([^\]]+)\]", prompt[-1]["content"], re.MULTILINE)


class Scripted:
    """A candidate whose answer to each case is written by `answer(case, prompt)`."""

    def __init__(
        self,
        suites: Suites,
        answer: Callable[[Case, list[dict[str, str]]], str],
        retrieve: Retrieve,
    ):
        prompts, _ = build_prompts(suites, retrieve)
        self.case_of = {prompt_key(p): c for p, c in zip(prompts, suites.cases, strict=True)}
        self.answer = answer

    def generate(
        self,
        prompts: list[list[dict[str, str]]],
        on_progress: object = None,
        *,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        return [self.answer(self.case_of[prompt_key(p)], p) for p in prompts]

    def describe(self) -> dict[str, object]:
        return {"backend": "scripted"}


def helpful(case: Case, prompt: list[dict[str, str]]) -> str:
    """Declines what it must, answers everything else in its own words, cites the context
    and says what it says (a phrase of each of the case's facts)."""
    if "refuses" in case.expect:
        return reply(DECLINE, [], "low")
    terms = " ".join(case.require_terms)
    facts = ", ".join(group[-1] for group in case.facts)
    return reply(
        f"{terms} Answer {case.id}: open Settings, then the page named there. {facts}".strip(),
        context_sources(prompt)[:1],
    )


def cites_other_doc(case: Case, prompt: list[dict[str, str]]) -> str:
    """The helpful answer with its first retrieved source swapped for a doc not retrieved."""
    return helpful(case, prompt).replace(
        json.dumps(context_sources(prompt)[:1]), json.dumps([OTHER_DOC])
    )


DEGENERATE: dict[str, tuple[Callable[[Case, list[dict[str, str]]], str], set[str]]] = {
    "declines everything": (
        lambda c, p: reply(DECLINE, [], "low"),
        {"format.answers", "knowledge.answers", "knowledge.cites_retrieved"},
    ),
    "one canned answer": (
        lambda c, p: (
            reply("Open Settings and choose the option you need.", [OTHER_DOC])
            if "refuses" not in c.expect
            else reply(DECLINE, [], "low")
        ),
        {"format.distinct_answers"},
    ),
    # Three stock replies, each helpful-looking, dealt out over every question: no case has
    # an answer of its own (the example guards distinct answers with a floor, not a margin).
    "a few canned answers": (
        lambda c, p: (
            reply(FEW_CANNED[sum(map(ord, c.id)) % len(FEW_CANNED)], context_sources(p)[:1])
            if "refuses" not in c.expect
            else reply(DECLINE, [], "low")
        ),
        {"format.distinct_answers"},
    ),
    "echoes the question": (
        lambda c, p: (
            reply(c.messages[-1]["content"] or "?", context_sources(p)[:1])
            if "refuses" not in c.expect
            else reply(DECLINE, [], "low")
        ),
        {"format.answers", "knowledge.answers"},
    ),
    "empty answer": (
        lambda c, p: (
            reply("", context_sources(p)[:1])
            if "refuses" not in c.expect
            else reply(DECLINE, [], "low")
        ),
        {"format.valid", "format.answers", "knowledge.answers"},
    ),
    # Declines off-topic questions asked alone and answers them from any chunks put before
    # them: the example's tiny adapter served with chunks before every question
    # (docs/findings/tiny-model.md).
    "answers whatever comes with context": (
        lambda c, p: (
            reply(f"Answer {c.id}: see the page in the context.", context_sources(p)[:1])
            if context_sources(p) or "refuses" not in c.expect
            else reply(DECLINE, [], "low")
        ),
        {"served.refuses"},
    ),
    # The example's policy floors citing at 0.5 (its tiny model cites 0.97) and leaves the
    # facts' floor to a real model (REAL_MODEL_FLOORS); the two citing candidates also fail
    # under the example's own policy (test_citing_..._fails_the_example_policy_as_it_is).
    "cites what it did not retrieve": (
        lambda c, p: cites_other_doc(c, p) if context_sources(p) else helpful(c, p),
        {"knowledge.cites_retrieved"},
    ),
    # Cites from memory in 19 of the 33 knowledge answers (a retrieved doc in 0.42).
    "cites from memory more often than not": (
        lambda c, p: (
            cites_other_doc(c, p)
            if context_sources(p) and int(c.id.rsplit("-", 1)[-1]) % 5 >= 2
            else helpful(c, p)
        ),
        {"knowledge.cites_retrieved"},
    ),
    # Gemma 3 270M after one epoch: the right format, the retrieved doc cited, and the facts
    # wrong ("The ticket has the `TW-131` header with the error code and the subject line.").
    "cites the right doc and says something else": (
        lambda c, p: (
            reply(f"Open the page {c.id} in Settings and read it there.", context_sources(p)[:1])
            if "refuses" not in c.expect
            else reply(DECLINE, [], "low")
        ),
        {"knowledge.states_facts"},
    ),
}


def gate(
    suites: Suites, answer: Callable[[Case, list[dict[str, str]]], str], **floors: float
) -> Verdict:
    rules = load_policy(EVALS / "policy.yaml", known_metrics(suites))
    rules = rules.model_copy(update={"floors": {**rules.floors, **floors}})
    found = retrieve(suites)
    verdict, _ = run_gate(
        suites,
        rules,
        Scripted(suites, answer, found),
        None,
        adapter="bot",
        version="v1",
        champion_label=None,
        retrieve=found,
    )
    return verdict


def failed_metrics(verdict: Verdict) -> set[str]:
    return {m.metric for m in verdict.metrics if not m.passed}


def test_a_helpful_candidate_passes_the_example_policy(suites: Suites) -> None:
    verdict = gate(suites, helpful, **REAL_MODEL_FLOORS)
    assert verdict.passed, verdict.reasons
    assert verdict.declines is not None
    assert verdict.declines.candidate_in_scope == 0.0
    assert verdict.declines.candidate_off_topic == 1.0
    assert verdict.declines.candidate_served_off_topic == 1.0


# The floor the example leaves to a model that reads its context (policy.yaml says so).
REAL_MODEL_FLOORS = {"knowledge.states_facts": 0.5}


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_a_hollow_candidate_fails_naming_the_metric(suites: Suites, name: str) -> None:
    answer, expected = DEGENERATE[name]
    verdict = gate(suites, answer, **REAL_MODEL_FLOORS)
    assert not verdict.passed
    assert expected <= failed_metrics(verdict), (name, failed_metrics(verdict))
    for metric in expected:
        assert any(r.startswith(f"{metric}: ") for r in verdict.reasons), (metric, verdict.reasons)


@pytest.mark.parametrize(
    "name", ["cites what it did not retrieve", "cites from memory more often than not"]
)
def test_citing_nothing_or_too_little_retrieved_fails_the_example_policy_as_it_is(
    suites: Suites, name: str
) -> None:
    answer, _ = DEGENERATE[name]
    verdict = gate(suites, answer)
    assert not verdict.passed
    assert failed_metrics(verdict) == {"knowledge.cites_retrieved"}, verdict.reasons
    cited = next(m for m in verdict.metrics if m.metric == "knowledge.cites_retrieved")
    assert cited.candidate < 0.5, cited


def test_the_verdict_shows_decline_rates_side_by_side(suites: Suites) -> None:
    from slmops.evaluation.report import markdown

    answer, _ = DEGENERATE["declines everything"]
    verdict = gate(suites, answer)
    assert verdict.declines is not None
    assert verdict.declines.candidate_in_scope == 1.0
    text = markdown(verdict)
    assert "| candidate | 100% | 100% | 100% |" in text, text
    assert "off-topic, as served: with retrieval (n=40)" in text, text


def test_declining_off_topic_questions_only_when_asked_alone_shows_beside_as_served(
    suites: Suites,
) -> None:
    from slmops.evaluation.report import markdown

    answer, _ = DEGENERATE["answers whatever comes with context"]
    verdict = gate(suites, answer)
    d = verdict.declines
    assert d is not None and (d.off_topic_n, d.served_off_topic_n) == (40, 40)
    assert (d.candidate_off_topic, d.candidate_served_off_topic) == (1.0, 0.0)
    assert "| candidate | 0% | 100% | 0% |" in markdown(verdict)
    assert failed_metrics(verdict) == {"served.refuses"}, verdict.reasons


def test_facts_are_matched_as_whole_words_in_an_answer_that_does_not_decline(
    suites: Suites,
) -> None:
    from slmops.suites.scorers import Scorer

    scorer = Scorer(suites.config, suites.schema_doc)
    by_id = {c.id: c for c in suites.cases}
    chats, loop, deckhand = by_id["kn-002"], by_id["kn-006"], by_id["kn-015"]
    assert chats.facts == [["6", "six"]]

    def facts(case: Case, answer: str, confidence: str = "high") -> float:
        scores = scorer.score(case, reply(answer, case.expected_sources[:1], confidence))
        return scores["knowledge.states_facts"]

    assert facts(chats, "An agent holds at most 6 chats at once.") == 1.0
    assert facts(chats, "An agent holds at most 16 chats at once.") == 0.0  # not "6"
    assert facts(loop, "Tidewell refuses it and shows error TW-119.") == 1.0
    assert facts(loop, "You see tw_119 in the settings.") == 1.0  # punctuation is ignored
    assert facts(loop, "Overflowed tickets carry the tag overflowed.") == 0.0
    assert facts(deckhand, "No: a Deckhand adds internal notes only.") == 1.0
    # Declining says "not" too, and is no answer.
    assert facts(deckhand, "I can only help with questions about Tidewell, not this.") == 0.0
    assert "knowledge.states_facts" not in scorer.score(by_id["fmt-000"], reply("x", []))
