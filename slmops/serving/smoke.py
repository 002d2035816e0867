"""The smoke test of a promotion: golden prompts from the format suite, asked of the loaded
name on every replica and scored by the suite's rules; the first ones the gate saw this version
answer in the format, so a failure means the served adapter does not behave as the judged one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmops.errors import (
    ConfigError,
    PromotionError,
)
from slmops.serving.client import (
    ServingConfig,
    VLLMClient,
    VLLMGenerator,
)
from slmops.serving.staging import Staged
from slmops.suites.spec import load_suites


def _smoke_failures(scores: dict[str, float]) -> list[str]:
    from slmops.suites.scorers import ALL_VALID

    return [m for m, v in scores.items() if v < 1.0 and (m == ALL_VALID or "no_" in m)]


def smoke_prompts(
    suites: str | Path, count: int, gated: dict[str, str] | None = None
) -> tuple[list[Any], Any]:
    """`count` cases of the format suite and a scorer for them: the first ones the gate saw
    this version answer in the format (`gated`), or the first ones when that is not known.
    A case the gated model itself got wrong proves nothing about the load."""
    from slmops.suites.scorers import Scorer

    loaded = load_suites(suites)
    names = [n for n, spec in loaded.config.suites.items() if spec.kind == "format"]
    if not names:
        raise ConfigError(f"{suites}: no suite of kind 'format' to take smoke-test prompts from")
    cases = loaded.suite_cases(names[0])
    if gated:
        passed = [c for c in cases if c.id in gated]
        cases = passed or cases
    return cases[:count], Scorer(loaded.config, loaded.schema_doc)


def gated_answers(answers: list[Any] | None) -> dict[str, str] | None:
    """The gate's answers (its answers.jsonl rows) that pass the smoke test's rules, by case."""
    if answers is None:
        return None
    # (a case the gate did not score is no evidence either way)
    return {
        a.id: a.candidate
        for a in answers
        if a.candidate_scores and not _smoke_failures(a.candidate_scores)
    }


def smoke_test(
    client: VLLMClient, staged: Staged, suites: str | Path, config: ServingConfig
) -> int:
    cases, scorer = smoke_prompts(suites, config.smoke_cases, staged.gated)
    gen = VLLMGenerator(client, staged.name, max_new_tokens=config.max_new_tokens)
    replies = gen.generate([c.messages for c in cases])
    for case, reply in zip(cases, replies, strict=True):
        failed = _smoke_failures(scorer.score(case, reply))
        if failed:
            seen = (staged.gated or {}).get(case.id)
            raise PromotionError(
                f"smoke test on {client.url}: {staged.name} answered golden prompt {case.id} "
                f"with {reply[:120]!r}, which fails {', '.join(failed)}"
                + (
                    f"; the gate saw this version answer it {seen[:120]!r}: the served "
                    "adapter does not behave as the one the gate judged"
                    if seen is not None
                    else ""
                )
            )
    return len(cases)
