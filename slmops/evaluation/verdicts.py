"""The gate's verdicts in the store: a verdict stored with a lookup per (candidate, champion)
pair, found again by promotion (`find_verdict`) with the answers behind it, and what the
champion is now. A gate run (slmops.pipelines.gate) makes them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel

from slmops.evaluation.gate import (
    CaseResult,
    Verdict,
)
from slmops.evaluation.policy import GatePolicy, load_policy
from slmops.evaluation.report import chart, markdown
from slmops.store.audit import AuditLog
from slmops.store.base import ObjectStore
from slmops.store.manifest import InputRef, Manifest, Trigger
from slmops.store.versions import ADAPTERS, CHALLENGER, CHAMPION, EVALS, VersionedArtifact
from slmops.suites.spec import Suites

log = logging.getLogger("slmops.gate")
VERDICT = "verdict"  # lookup kind: "<candidate>.vs.<champion|base|none>" -> eval run


class GateRecord(BaseModel):
    """A stored verdict: where it lives and what it decided."""

    run: str
    verdict: Verdict
    report_uri: str


def champion_label(store: ObjectStore, adapter: str, champion: str) -> str | None:
    """What `champion` means now: a version, 'base', or None (floors only)."""
    art = VersionedArtifact(store, ADAPTERS, adapter)
    if champion == "none":
        return None
    if champion == "base":
        return "base"
    if champion == "auto":
        alias = art.get_alias(CHAMPION)
        return alias.version if alias else None
    return art.version_of(champion)


def store_verdict(
    store: ObjectStore,
    verdict: Verdict,
    cases: list[CaseResult],
    suites: Suites,
    policy: GatePolicy,
    folder: Path,
    trigger: Trigger | None,
    set_challenger: bool,
) -> GateRecord:
    """Store the verdict (report.json, report.md, the chart, every case's answers) with its
    lookup per (candidate, champion) pair, audit it, and make a passing candidate the
    challenger when `set_challenger`."""
    folder.mkdir(parents=True, exist_ok=True)
    chart(verdict, folder / "comparison.png")
    (folder / "report.json").write_text(verdict.model_dump_json(indent=1))
    (folder / "report.md").write_text(markdown(verdict, "comparison.png"))
    with open(folder / "answers.jsonl", "w", encoding="utf-8") as fh:
        for case in cases:
            fh.write(case.model_dump_json() + "\n")
    evals = VersionedArtifact(store, EVALS, verdict.adapter)
    manifest = Manifest(
        kind="eval-report",
        name=verdict.adapter,
        inputs=[
            InputRef(kind="adapter", name=verdict.adapter, version=verdict.version),
            InputRef(kind="champion", name=verdict.adapter, version=verdict.champion or "none"),
            InputRef(kind="eval-suites", name=suites.folder),
        ],
        config={"policy": policy.model_dump(), "generation": verdict.generation},
        metrics={
            "passed": verdict.passed,
            **{f"{m.metric}.candidate": round(m.candidate, 4) for m in verdict.metrics},
        },
        timings=verdict.timings,
        trigger=trigger or Trigger(),
    )
    key = f"{verdict.version}.vs.{verdict.champion or 'none'}"
    stored = evals.publish(manifest, folder, lookup={VERDICT: key})
    event = "gate.passed" if verdict.passed else "gate.failed"
    AuditLog(store).record(
        event,
        f"slmops.adapter.{verdict.adapter}",
        trigger=trigger,
        version=verdict.version,
        champion=verdict.champion,
        eval_run=stored.version,
        reasons=verdict.reasons,
    )
    if verdict.passed and set_challenger:
        VersionedArtifact(store, ADAPTERS, verdict.adapter).set_alias(
            CHALLENGER,
            verdict.version,
            reason=f"passed the gate against {verdict.champion or 'floors only'}",
            trigger=trigger,
        )
    report_uri = f"{store.uri}/{evals.version_prefix(stored.version)}/report.md"
    return GateRecord(run=stored.version, verdict=verdict, report_uri=report_uri)


def auto_promote(policy: str | Path) -> bool:
    """Does the gate policy let a passing adapter be promoted without a person?"""
    return bool(load_policy(policy, known_metrics=None).auto_promote)


def find_verdict(
    store: ObjectStore, adapter: str, version: str, champion: str | None
) -> Verdict | None:
    """The stored verdict for `adapter@version` against `champion` (a version, 'base' or None)."""
    evals, found = _verdict_run(store, adapter, version, champion)
    if found is None:
        return None
    return Verdict.model_validate(json.loads(evals.read_file(found.version, "report.json")))


def _verdict_run(
    store: ObjectStore, adapter: str, version: str, champion: str | None
) -> tuple[VersionedArtifact, Manifest | None]:
    evals = VersionedArtifact(store, EVALS, adapter)
    return evals, evals.find(VERDICT, f"{version}.vs.{champion or 'none'}")


def verdict_answers(
    store: ObjectStore, adapter: str, version: str, champion: str | None
) -> list[CaseResult] | None:
    """Every case's answer and scores behind that verdict (its answers.jsonl), or None when
    there is no verdict or it was stored without them."""
    evals, found = _verdict_run(store, adapter, version, champion)
    if found is None or "answers.jsonl" not in {f.path for f in found.files}:
        return None
    text = evals.read_file(found.version, "answers.jsonl").decode("utf-8")
    return [CaseResult.model_validate_json(line) for line in text.splitlines() if line.strip()]
