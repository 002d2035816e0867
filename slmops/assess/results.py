"""What an assessment measured: failure intervals per arm, costs, the decision's steps."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


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
    cut: int = Field(0, description="Answers the suite's token limit cut (not ended by the model).")
    seconds: float = 0.0


class CaseOutcome(BaseModel):
    id: str
    suite: str
    arm: str
    answer: str
    cut: bool = False  # the suite's token limit ended the answer, not the model
    failed: bool
    kind: Literal["behaviour", "knowledge"] | None
    checks: dict[str, float]


class Costs(BaseModel):
    arm: str
    usd_per_request: float
    serving_usd_per_month: float
    training_usd_per_month: float
    total_usd_per_month: float


class CostEstimate(BaseModel):
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
    economy: CostEstimate
    threshold: float
    confidence: float
    cases: int
    suites: dict[str, int]
    base_model: dict[str, str | None]
    adapter: dict[str, str | None]
    index: dict[str, str | None]
    created_at: str
    timings: dict[str, float]
    generation: dict[str, Any] = Field(
        default_factory=dict,
        description="What answered each arm's cases: backend, version, numerics (per arm).",
    )
