"""Promotion of an adapter the gate passed: the serving stage (slmops.serving.promotion)
cleared by the stored verdict against the current champion (slmops.evaluation.verdicts),
with the gate's own answers as the smoke test's golden prompts.

    from slmops.pipelines.promotion import promote
    result = promote(store, "support-bot", "challenger", config,
                     suites="examples/support-bot/evals")
"""

from __future__ import annotations

from pathlib import Path

from slmops.evaluation.verdicts import find_verdict, verdict_answers
from slmops.progress import Log
from slmops.serving.client import ServingConfig
from slmops.serving.promotion import Clearance, ClearanceLookup, PromotionResult
from slmops.serving.promotion import promote as promote_cleared
from slmops.serving.smoke import gated_answers
from slmops.store.base import ObjectStore
from slmops.store.manifest import Trigger


def gate_clearance(store: ObjectStore, adapter: str) -> ClearanceLookup:
    """The stored gate verdict of a version against a champion, as promotion's clearance."""

    def clearance(version: str, champion: str | None) -> Clearance | None:
        verdict = find_verdict(store, adapter, version, champion)
        if verdict is None:
            return None
        answers = gated_answers(verdict_answers(store, adapter, version, champion))
        return Clearance(passed=verdict.passed, reasons=list(verdict.reasons), answers=answers)

    return clearance


def promote(
    store: ObjectStore,
    adapter: str,
    version: str,
    config: ServingConfig,
    *,
    suites: str | Path,
    trigger: Trigger | None = None,
    log: Log = lambda _: None,
) -> PromotionResult:
    """Promote `adapter@version` (a version or alias, e.g. challenger) to every replica,
    if the gate passed it against the current champion (see slmops.serving.promotion)."""
    return promote_cleared(
        store,
        adapter,
        version,
        config,
        suites=suites,
        clearance=gate_clearance(store, adapter),
        trigger=trigger,
        log=log,
    )
