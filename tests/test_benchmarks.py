"""The benchmarks still run (on a tiny corpus; their figures are not asserted: timings are
noisy on shared machines and belong in the benchmark's own output)."""

from __future__ import annotations

import pytest

from benchmarks import ingest_throughput


def test_ingest_benchmark_runs_and_reports_its_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    ingest_throughput.main(["--docs", "12"])
    out = capsys.readouterr().out
    assert "ratio ingest/raw:" in out and "re-ingest, nothing changed:" in out
    assert "(exact)" in out
