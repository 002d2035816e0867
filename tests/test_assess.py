"""Prompt, RAG or fine-tuning: the assessment measured on the session's refine-tuned adapter,
and the decision tree on figures chosen to take each branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slmops.assess.decision import decide
from slmops.assess.results import ArmResult, Comparison, CostEstimate, Costs, Interval
from slmops.assess.task import BEHAVIOUR, KNOWLEDGE, AssessTask, load_task
from slmops.errors import ConfigError
from slmops.store.manifest import Manifest
from slmops.store.s3 import S3Store
from slmops.store.versions import ADAPTERS, EVALS, VersionedArtifact
from slmops.suites.spec import load_suites

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-bot"


def test_the_example_task_loads() -> None:
    task = load_task(EXAMPLE / "assess.yaml")
    assert task.adapter == "support-bot" and task.threshold == 0.05 and task.confidence == 0.99
    assert task.path(task.suites) == EXAMPLE / "evals"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: x\nsuites: evals\nadapter: a\nexamples: train.jsonl\nthreshold: 2\n", "threshold"),
        ("name: x\nadapter: a\nexamples: train.jsonl\n", "suites: Field required"),
        ("name: x\nsuites: nowhere\nadapter: a\nexamples: train.jsonl\n", "suites: "),
        ("- a list\n", "expected a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_task_file_names_the_field(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "evals").symlink_to(EXAMPLE / "evals")
    (tmp_path / "train.jsonl").symlink_to(EXAMPLE / "train.jsonl")
    path = tmp_path / "assess.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        load_task(path)
    assert str(path) in str(err.value)


def _arm(arm: str, behaviour: float, knowledge: float, tokens: float) -> ArmResult:
    """An arm failing `behaviour` of all cases, and `knowledge` of the knowledge suite's."""

    def iv(rate: float) -> Interval:
        return Interval(rate=rate, low=max(rate - 0.04, 0), high=min(rate + 0.04, 1), n=300)

    suites = {
        "format": iv(behaviour),
        "style": iv(behaviour),
        "terminology": iv(behaviour),
        "adversarial": iv(behaviour),
        "knowledge": iv(min(behaviour + knowledge, 1)),
        "knowledge:knowledge": iv(knowledge),  # failures on knowledge alone, in that suite
    }
    return ArmResult(
        arm=arm,
        failure={
            "all": iv(behaviour + knowledge),
            BEHAVIOUR: iv(behaviour),
            KNOWLEDGE: iv(knowledge),
            **suites,
        },
        vs_prompt={g: Comparison(diff=0, low=-0.01, high=0.01) for g in ("all", BEHAVIOUR)},
        prompt_tokens=tokens,
        answer_tokens=40,
    )


def _economy(arms: dict[str, ArmResult], training_per_month: float) -> CostEstimate:
    costs = []
    for arm, result in arms.items():
        per_request = (result.prompt_tokens * 0.1 + result.answer_tokens * 0.4) / 1e6
        training = training_per_month if arm.startswith("fine-tuned") else 0.0
        costs.append(
            Costs(
                arm=arm,
                usd_per_request=per_request,
                serving_usd_per_month=per_request * 1e6,
                training_usd_per_month=training,
                total_usd_per_month=per_request * 1e6 + training,
            )
        )
    return CostEstimate(
        costs=costs,
        training_usd_per_run=1.0,
        training_cost_source="test",
        retrains_per_month=4,
        cadence_source="test",
        base_revisions=2,
        dataset_versions=1,
        index_versions=3,
        history_days=30,
        break_even_requests_per_month=None,
    )


@pytest.mark.parametrize(
    ("figures", "training", "expected", "taken"),
    [
        # prompting holds: nothing else is worth it
        ({"prompt": (0.01, 0.0), "prompt+examples": (0.01, 0.0)}, 4.0, "prompt engineering", [4]),
        # answers miss the docs' knowledge: RAG
        ({"prompt": (0.01, 0.3), "prompt+examples": (0.01, 0.3)}, 4.0, "RAG", [0]),
        # format/injection fails even with the best prompt: fine-tuning
        ({"prompt": (0.6, 0.0), "prompt+examples": (0.3, 0.0)}, 4.0, "fine-tuning", [1]),
        # the long prompt works but costs more than an adapter at this volume: compress it
        ({"prompt": (0.3, 0.0), "prompt+examples": (0.01, 0.0)}, 4.0, "fine-tuning", [3]),
        # ... unless retraining costs more than the tokens saved
        ({"prompt": (0.3, 0.0), "prompt+examples": (0.01, 0.0)}, 9e9, "prompt engineering", [4]),
        # both
        ({"prompt": (0.6, 0.3), "prompt+examples": (0.4, 0.3)}, 4.0, "RAG + fine-tuning", [0, 1]),
    ],
)
def test_the_decision_tree_takes_the_branch_the_figures_call_for(
    figures: dict[str, tuple[float, float]], training: float, expected: str, taken: list[int]
) -> None:
    suites = load_suites(EXAMPLE / "evals")
    task = AssessTask(name="t", suites="x", adapter="a", examples="x")
    arms = {
        "prompt": _arm("prompt", *figures["prompt"], tokens=60),
        "prompt+examples": _arm("prompt+examples", *figures["prompt+examples"], tokens=900),
        "rag": _arm("rag", figures["prompt"][0], 0.0, tokens=300),
        "fine-tuned": _arm("fine-tuned", 0.01, figures["prompt"][1], tokens=60),
        "fine-tuned+rag": _arm("fine-tuned+rag", 0.01, 0.0, tokens=300),
    }
    recommendation, summary, steps = decide(
        task, arms, _economy(arms, training), suites, (1.2, 1.2)
    )
    assert recommendation == expected, [(s.question, s.evidence) for s in steps]
    assert [i for i, s in enumerate(steps) if s.taken] == taken
    assert all(s.evidence for s in steps)  # every branch shows what it was decided on
    assert recommendation in summary


def test_the_summary_names_an_arm_that_fails_fewer_cases_than_the_recommended_one() -> None:
    # The cases need the docs and an adapter, but retrieval makes this model worse (a tiny
    # model that cannot read its context): the summary must not call RAG + fine-tuning the
    # best measured option.
    suites = load_suites(EXAMPLE / "evals")
    task = AssessTask(name="t", suites="x", adapter="a", examples="x")
    arms = {
        "prompt": _arm("prompt", 0.6, 0.3, tokens=60),
        "prompt+examples": _arm("prompt+examples", 0.4, 0.3, tokens=900),
        "rag": _arm("rag", 0.6, 0.0, tokens=300),
        "fine-tuned": _arm("fine-tuned", 0.1, 0.3, tokens=60),
        "fine-tuned+rag": _arm("fine-tuned+rag", 0.3, 0.2, tokens=300),
    }
    recommendation, summary, _ = decide(task, arms, _economy(arms, 4.0), suites, (1.2, 1.2))
    assert recommendation == "RAG + fine-tuning"
    assert "best measured option" not in summary
    assert "fine-tuned fails 40.0%" in summary, summary
    # ... and when the recommended arm does fail fewest, it says so
    arms["fine-tuned+rag"] = _arm("fine-tuned+rag", 0.1, 0.2, tokens=300)
    _, summary, _ = decide(task, arms, _economy(arms, 4.0), suites, (1.2, 1.2))
    assert "it is the best measured option" in summary, summary


def test_an_answer_citing_the_right_doc_that_says_something_else_lacks_the_knowledge() -> None:
    from slmops.assess.arms import case_checks
    from slmops.suites.scorers import Scorer

    suites = load_suites(EXAMPLE / "evals")
    scorer = Scorer(suites.config, suites.schema_doc)
    case = next(c for c in suites.cases if c.id == "kn-001")  # What does error TW-131 mean?
    doc = ["api/error-codes.md"]

    def kind(answer: str) -> str | None:
        reply = json.dumps({"answer": answer, "sources": doc, "confidence": "high"})
        return case_checks(scorer, case, "knowledge", reply, doc)[1]

    assert kind("Replies are bouncing: verify the sending domain (SPF and DKIM).") is None
    assert kind("The ticket has the TW-131 header with the error code.") == "knowledge"
    assert case_checks(scorer, case, "knowledge", "TW-131 is bouncing", doc)[1] == "behaviour"


@pytest.mark.timeout(1800)
def test_assess_measures_every_arm_and_recommends_with_evidence(
    prefect_harness: None,
    trained: tuple[S3Store, Manifest, list[str]],
    tmp_path: Path,
) -> None:
    """The flow on the session's adapter as champion: the random tiny base fails the answer
    format whatever the prompt, the adapter fixes it, so the evidence says fine-tuning."""
    from flows.assess import AssessParams, assess

    store, good, _ = trained
    source = VersionedArtifact(store, ADAPTERS, "support-bot")
    source.download(good.version, tmp_path / "weights")
    art = VersionedArtifact(store, ADAPTERS, "assessed")
    champion = art.publish(good.model_copy(update={"name": "assessed"}), tmp_path / "weights")
    art.set_alias("champion", champion.version)
    task = {
        "name": "support",
        "suites": str(EXAMPLE / "evals"),
        "adapter": "assessed",
        "examples": str(EXAMPLE / "train.jsonl"),
        "few_shot": 8,
        "max_cases_per_suite": 16,  # 96 cases (6 suites) x 5 arms: enough for a 70-point gap
        "economics": {"requests_per_month": 300_000},
    }
    (tmp_path / "assess.yaml").write_text(yaml.safe_dump(task))

    summary = assess(AssessParams(task=str(tmp_path / "assess.yaml"), store=store.uri))

    reports = VersionedArtifact(store, EVALS, "assess-support")
    version = reports.resolve("latest").version
    result = json.loads(reports.read_file(version, "report.json"))
    arms = {a["arm"]: a for a in result["arms"]}
    assert set(arms) == {"prompt", "prompt+examples", "rag", "fine-tuned", "fine-tuned+rag"}
    assert all(a["measured"] for a in arms.values())
    # The random base cannot hold the JSON format, however it is prompted ...
    for arm in ("prompt", "prompt+examples", "rag"):
        assert arms[arm]["failure"][BEHAVIOUR]["rate"] >= 0.9, arms[arm]["failure"]
    # ... the adapter can, and the paired interval against prompt-only excludes zero.
    tuned = arms["fine-tuned"]
    assert tuned["failure"]["style"]["rate"] <= 0.2, tuned["failure"]
    assert tuned["vs_prompt"][BEHAVIOUR]["high"] < -0.3, tuned["vs_prompt"]
    # A few-shot prompt costs tokens on every request.
    assert arms["prompt+examples"]["prompt_tokens"] > 3 * arms["prompt"]["prompt_tokens"]
    assert "fine-tuning" in result["recommendation"]
    ft_step = result["steps"][1]
    assert ft_step["taken"] and ft_step["leads_to"] == "fine-tuning"
    assert any("behaviour failures" in e for e in ft_step["evidence"])
    # Training cost per run comes from the adapter manifests.
    assert result["economy"]["training_usd_per_run"] == pytest.approx(
        good.resources["estimated_cost_usd"]
    )
    answers = [json.loads(x) for x in reports.read_file(version, "answers.jsonl").splitlines()]
    assert len(answers) == 5 * result["cases"] == 5 * 96
    # Failures are classed: a well-formed answer citing no doc is knowledge, anything the
    # format, style or injection rules catch is behaviour (the fix differs: RAG vs tuning).
    for row in answers:
        if not row["failed"]:
            assert row["kind"] is None
        elif row["suite"] != "knowledge":
            assert row["kind"] == "behaviour", row
        elif row["kind"] == "knowledge":
            assert row["checks"]["knowledge.valid_format"] == 1.0, row
            checks = row["checks"]
            assert min(checks["knowledge.cites_expected"], checks["knowledge.states_facts"]) == 0
    assert reports.read_file(version, "failure-rates.png")[:4] == b"\x89PNG"
    markdown = reports.read_file(version, "report.md").decode()
    assert "### Decision" in markdown and result["recommendation"] in markdown
    assert result["recommendation"] in summary
