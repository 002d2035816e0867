"""The gate policy: what a candidate adapter must show to be allowed to replace the champion.

Written as YAML with a comment on every knob (examples/support-bot/evals/policy.yaml).
Checked on load against the metrics the suites produce: an unknown metric, a threshold no
score can reach, or a confidence outside (0.5, 1) is an error naming the file and the key,
never a gate that passes because a rule could not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from slmops.errors import ConfigError


class GatePolicy(BaseModel):
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap: int = Field(2000, ge=200, le=200_000)
    seed: int = 0
    correction: Literal["holm", "none"] = "holm"
    min_cases: int = Field(20, ge=1)
    floors: dict[str, float] = Field(default_factory=dict)
    non_inferiority: dict[str, float] = Field(default_factory=dict)
    improvement: dict[str, float] = Field(default_factory=dict)
    zero_tolerance: list[str] = Field(default_factory=list)
    min_cases_per_metric: dict[str, int] = Field(default_factory=dict)
    auto_promote: bool = Field(
        False,
        description="After refine-tune, promote a passing adapter to the replicas without a "
        "person (else promotion is a manual run).",
    )

    @property
    def guarded(self) -> list[str]:
        """Every metric some rule looks at."""
        return sorted(
            set(self.floors)
            | set(self.non_inferiority)
            | set(self.improvement)
            | set(self.zero_tolerance)
        )


def load_policy(path: str | Path, known_metrics: set[str] | None) -> GatePolicy:
    """Read and check a policy file against the metrics the suites produce (None: the
    settings only, not the metric names)."""
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
            f"known: {', '.join(GatePolicy.model_fields)}"
        )
    try:
        policy = GatePolicy.model_validate(raw)
    except ValidationError as exc:
        listed = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"gate policy {path}: {listed}") from None
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
    if problems:
        listed = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(
            f"gate policy {path}: {len(problems)} problem(s):\n{listed}\n"
            f"metrics the suites produce: {', '.join(sorted(known_metrics))}"
        )
    return policy
