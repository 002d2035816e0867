"""Token limits in a gate run: the answers a suite's `max_new_tokens` cut, counted per suite,
and the run refused when its limits (or its backend) could not judge the candidate."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from slmops.evaluation.policy import GatePolicy
from slmops.suites.spec import Suites


class CutAnswers(BaseModel):
    """Answers of one suite the token limit cut (not ended by the model)."""

    limit: int = Field(description="The suite's max_new_tokens.")
    cases: int
    candidate: int
    champion: int | None = None


def cut_answers(
    suites: Suites, cut: list[tuple[str, bool, bool]], with_champion: bool
) -> dict[str, CutAnswers]:
    """Per suite that had any: how many answers the token limit cut. `cut`: per case, its
    suite and whether the candidate's and the champion's answers were cut."""
    out: dict[str, CutAnswers] = {}
    for name, spec in suites.config.suites.items():
        rows = [c for c in cut if c[0] == name]
        cand = sum(c[1] for c in rows)
        champ = sum(c[2] for c in rows) if with_champion else None
        if cand or champ:
            out[name] = CutAnswers(
                limit=spec.max_new_tokens, cases=len(rows), candidate=cand, champion=champ
            )
    return out


def refused(
    policy: GatePolicy, cut: dict[str, CutAnswers], generation: dict[str, dict[str, Any]]
) -> list[str]:
    """Why the suites could not judge this run (empty: they could): a suite whose token limit
    cut more of the candidate's answers than the policy allows, where the champion's are cut
    as often (or there is no champion), or answers from a backend the policy rules out.
    Where the champion ends its answers within the same limit, the limit is not the problem:
    the candidate's answers run on, and it fails on the metrics they miss."""
    reasons = []
    share = policy.max_cut_share

    def over(n: int | None, cases: int) -> bool:
        return bool(n) and (n or 0) / max(cases, 1) > share

    for suite, c in cut.items():
        if not over(c.candidate, c.cases):
            continue
        if c.champion is not None and not over(c.champion, c.cases):
            continue
        champ = "" if c.champion is None else f" (the champion's: {c.champion})"
        reasons.append(
            f"misconfigured: suite {suite}: {c.candidate} of {c.cases} candidate answers cut at "
            f"{c.limit} tokens{champ}, over the policy's max_cut_share {share:g}: raise the "
            "suite's max_new_tokens in suites.yaml so answers can end"
        )
    if policy.require_generator:
        for role, gen in generation.items():
            used = gen.get("backend")
            if used != policy.require_generator:
                reasons.append(
                    f"the policy requires answers from {policy.require_generator}; the "
                    f"{role}'s came from {used}: gate with --generator "
                    f"{policy.require_generator}"
                )
    return reasons
