"""The gate policy: what a candidate adapter must show to be allowed to replace the champion.

Written as YAML with a comment on every knob (examples/support-bot/evals/policy.yaml).
Checked on load against the metrics the suites produce: an unknown metric, a threshold no
score can reach, or a confidence outside (0.5, 1) is an error naming the file and the key,
never a gate that passes because a rule could not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from slmops.errors import ConfigError
from slmops.suites.stats import cases_needed, detectable_difference


class GatePolicy(BaseModel):
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1.0,
        description="Confidence of every interval the comparisons use (one-sided, paired).",
    )
    bootstrap: int = Field(
        2000, ge=200, le=200_000, description="Bootstrap resamples per paired comparison."
    )
    seed: int = Field(0, description="Seed of the bootstrap: the same answers, the same verdict.")
    correction: Literal["holm", "none"] = Field(
        "holm",
        description="Multiple-comparison correction across the non_inferiority and "
        "improvement metrics (holm: Holm-Bonferroni).",
    )
    min_cases: int = Field(
        20, ge=1, description="Fewest cases a metric needs to be judged (fewer: refused)."
    )
    floors: dict[str, float] = Field(
        default_factory=dict,
        description="metric -> the lowest rate the candidate may score, whatever the champion "
        "does (e.g. knowledge.answered: 0.9); the only rules when there is no champion.",
    )
    non_inferiority: dict[str, float] = Field(
        default_factory=dict,
        description="metric -> margin: the candidate may be worse than the champion by less "
        "than this, at the policy's confidence.",
    )
    improvement: dict[str, float] = Field(
        default_factory=dict,
        description="metric -> margin: the candidate must beat the champion by at least this, "
        "at the policy's confidence.",
    )
    zero_tolerance: list[str] = Field(
        default_factory=list,
        description="Metrics that must be perfect: one failed case fails the gate (e.g. a "
        "leaked system prompt).",
    )
    min_cases_per_metric: dict[str, int] = Field(
        default_factory=dict, description="metric -> fewest cases, overriding min_cases."
    )
    power: float = Field(
        0.8,
        ge=0.5,
        lt=1.0,
        description="Chance that a comparison finds a true difference as large as its margin: "
        "a margin the suites cannot resolve at this power is refused.",
    )
    planning_discordance: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="The share of cases on which candidate and champion are expected to be "
        "scored differently, to check margins against before any model runs (each verdict "
        "reports the share it measured).",
    )
    max_cut_share: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="The share of a suite's answers (candidate's or champion's) the suite's "
        "token limit may cut; above it the verdict is 'refused': the suite's max_new_tokens is "
        "too small to judge, which is no evidence about the candidate.",
    )
    require_generator: Literal["vllm", "transformers"] | None = Field(
        None,
        description="The backend the gate must have generated on (vllm: the serving engine, "
        "with the serving numerics); a verdict from another one does not pass.",
    )
    auto_promote: bool = Field(
        False,
        description="After refine-tune, promote a passing adapter to the replicas without a "
        "person (else promotion is a manual run).",
    )

    @property
    def comparisons(self) -> int:
        return len(self.non_inferiority) + len(self.improvement)

    def test_alpha(self) -> float:
        """The level one comparison must meet in the worst case: Holm's first step tests at
        (1 - confidence) / comparisons."""
        alpha = 1 - self.confidence
        return alpha / max(1, self.comparisons) if self.correction == "holm" else alpha

    def detectable(self, n: int, discordance: float | None = None) -> float:
        """The smallest difference a comparison on `n` cases can resolve under this policy."""
        share = self.planning_discordance if discordance is None else discordance
        return detectable_difference(n, share, self.test_alpha(), self.power)

    @property
    def guarded(self) -> list[str]:
        """Every metric some rule looks at."""
        return sorted(
            set(self.floors)
            | set(self.non_inferiority)
            | set(self.improvement)
            | set(self.zero_tolerance)
        )


def load_policy(path: str | Path, known_metrics: Mapping[str, int] | set[str] | None) -> GatePolicy:
    """Read and check a policy file against the metrics the suites produce (None: the
    settings only, not the metric names). Given how many cases produce each metric, every
    margin and required gain is checked against what that many cases can resolve."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"gate policy {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"gate policy {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"gate policy {path}: expected a mapping of settings")
    unknown_keys = set(raw) - set(GatePolicy.model_fields)
    if unknown_keys:
        raise ConfigError(
            f"gate policy {path}: unknown setting(s) {sorted(unknown_keys)}; "
            f"known: {', '.join(GatePolicy.model_fields)} (docs/reference/config.md#gate-policy)"
        )
    try:
        policy = GatePolicy.model_validate(raw)
    except ValidationError as exc:
        listed = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(
            f"gate policy {path}: {listed} (docs/reference/config.md#gate-policy)"
        ) from None
    if known_metrics is None:
        return policy
    problems: list[str] = []
    for section in ("floors", "non_inferiority", "improvement", "min_cases_per_metric"):
        for metric in getattr(policy, section):
            if metric not in known_metrics:
                problems.append(f"{section}.{metric}: no suite produces this metric")
    for metric in policy.zero_tolerance:
        if metric not in known_metrics:
            problems.append(f"zero_tolerance: {metric}: no suite produces this metric")
    for metric, floor in policy.floors.items():
        if not 0.0 <= floor <= 1.0:
            problems.append(f"floors.{metric}: {floor} is impossible (scores lie in 0..1)")
    for metric, margin in policy.non_inferiority.items():
        if not 0.0 <= margin < 1.0:
            problems.append(f"non_inferiority.{metric}: margin {margin} must be in [0, 1)")
    for metric, gain in policy.improvement.items():
        if not 0.0 <= gain < 1.0:
            problems.append(f"improvement.{metric}: gain {gain} must be in [0, 1)")
        if metric in policy.floors and policy.floors[metric] + gain > 1.0 + 1e-9:
            problems.append(f"improvement.{metric}: floor + gain exceed 1")
    if isinstance(known_metrics, Mapping):
        problems += _unresolvable(policy, known_metrics)
    if problems:
        listed = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(
            f"gate policy {path}: {len(problems)} problem(s):\n{listed}\n"
            f"metrics the suites produce: {', '.join(sorted(known_metrics))}\n"
            "how the gate decides: docs/guides/gate.md"
        )
    return policy


def _unresolvable(policy: GatePolicy, cases: Mapping[str, int]) -> list[str]:
    """Non-inferiority margins smaller than the suites can resolve at the policy's confidence
    and power: such a comparison fails a candidate as good as the champion at random. (A
    required improvement is shown only when the true gain exceeds it by the detectable
    difference, which each verdict reports.)"""
    problems = []
    alpha = policy.test_alpha()
    for section in ("non_inferiority",):
        for metric, bound in getattr(policy, section).items():
            n = cases.get(metric, 0)
            smallest = policy.detectable(n)
            if n and bound + 1e-9 < smallest:
                need = cases_needed(bound, policy.planning_discordance, alpha, policy.power)
                problems.append(
                    f"{section}.{metric}: {bound} is finer than {n} cases can resolve "
                    f"(smallest detectable difference {smallest:.3f} at "
                    f"{policy.confidence:.0%} confidence over {policy.comparisons} comparisons "
                    f"and {policy.power:.0%} power, if {policy.planning_discordance:.0%} of "
                    f"cases differ): set it to at least {smallest:.3f} or give the metric "
                    f"{need} cases"
                )
    return problems
