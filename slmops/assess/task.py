"""What to assess: the task file (cases, model, docs, prices, threshold) and the arms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

from slmops.errors import ConfigError, validation_problems

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


class Prices(BaseModel):
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
    seed: int = Field(0, description="Seed of the bootstrap intervals.")
    max_cases_per_suite: int | None = Field(
        None, ge=5, description="Answer only the first N cases of each suite (a quick look)."
    )
    economics: Prices = Field(
        default_factory=Prices,
        description="Volumes and prices the monthly cost of each arm is estimated with.",
    )
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
        raise ConfigError(
            f"{p}: {validation_problems(exc)} (docs/reference/config.md#assess-task)"
        ) from exc
    for field in ("suites", "examples"):
        if not task.path(getattr(task, field)).exists():
            raise ConfigError(f"{p}: {field}: {task.path(getattr(task, field))} does not exist")
    return task
