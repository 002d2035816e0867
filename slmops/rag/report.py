"""The report of an ingest run, as a person reads it on the run's page: each document's
change (added, changed, deleted, skipped and why), the timings, and retrieval quality by
mode against the previous version."""

from __future__ import annotations

from typing import Any

from slmops.rag.evals import mode_table
from slmops.rag.plan import IngestReport
from slmops.store.manifest import Manifest


def ingest_report(
    report: IngestReport, previous: Manifest | None = None
) -> tuple[list[dict[str, Any]], str]:
    """The document table (a row per document that changed or was skipped) and the markdown
    report; `previous`: the index version this run compares its retrieval metrics with."""
    plan = report.plan
    rows = [
        {"document": p, "change": kind, "detail": ""}
        for kind, paths in (
            ("added", plan.added),
            ("changed", plan.changed),
            ("deleted", plan.deleted),
        )
        for p in paths
    ]
    rows += [
        {"document": s.path, "change": "skipped", "detail": s.reason}
        for s in plan.skipped + plan.kept
    ]
    before: dict[str, float] = {}
    if previous is not None:
        before = {
            k.removeprefix("retrieval."): v
            for k, v in previous.metrics.items()
            if k.startswith("retrieval.")
        }
    lines = [
        f"## Ingest of `{plan.source}` into index `{plan.index}`",
        "",
        report.summary(),
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {stage} | {seconds:.2f} |" for stage, seconds in report.timings.items()]
    if report.retrieval:
        header, modes = mode_table(report.retrieval)
        lines += ["", f"| {' | '.join(header)} |", "|---" * len(header) + "|"]
        lines += [f"| {' | '.join(row)} |" for row in modes]
        lines += [
            "",
            f"| retrieval metric | {report.version} | {plan.previous_version or '-'} | change |",
            "|---|---|---|---|",
        ]
        for key, value in report.retrieval.items():
            old = before.get(key)
            delta = f"{value - old:+.4f}" if isinstance(old, int | float) else "-"
            lines.append(f"| {key} | {value:g} | {old if old is not None else '-'} | {delta} |")
    return rows, "\n".join(lines)
