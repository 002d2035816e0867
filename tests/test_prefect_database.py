"""The Prefect server on a real PostgreSQL server (Debian's package, on loopback): concurrent
flow runs and API clients with no refused request. The same load against SQLite is reported
by `python -m benchmarks.prefect_database` (docs/operations/kubernetes.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import postgres

pytestmark = [pytest.mark.e2e]


def test_concurrent_flow_runs_and_clients_on_postgres_are_never_refused(tmp_path: Path) -> None:
    from benchmarks import prefect_database

    (row,) = prefect_database.main(
        [
            "--clients",
            "24",
            "--runs",
            "72",
            "--tasks",
            "5",
            "--readers",
            "6",
            "--databases",
            "postgres",
        ]
    )
    # 72 flow runs x (create, Running, 5 x (task, Running, Completed), logs, Completed)
    assert row["requests"] >= 72 * 19
    assert row["failed"] == 0 and row["locked"] == 0, row["errors"]
    assert row["completed"] == 72


def test_the_cluster_is_made_once_with_a_password_only_its_owner_reads(tmp_path: Path) -> None:
    root = tmp_path / "pg"
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:  # the server runs as `postgres` when tests run as root
        parent.chmod(parent.stat().st_mode | 0o001)
    assert postgres.initialise(root) is True
    secret = postgres.password_file(root)
    assert secret.stat().st_mode & 0o077 == 0 and len(secret.read_text()) >= 24
    assert (postgres.data_dir(root) / "PG_VERSION").exists()
    assert postgres.initialise(root) is False  # kept: the same password, the same data
    assert postgres.url(root, 5442).startswith(f"postgresql+asyncpg://slmops:{secret.read_text()}@")


def test_a_missing_postgres_names_the_command_that_installs_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(postgres.Path, "glob", lambda self, pattern: iter(()))
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    with pytest.raises(postgres.PostgresError, match="make postgres"):
        postgres.bindir()


def test_a_postgres_older_than_prefect_supports_is_refused_before_initdb(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "bin" / "postgres"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 14.2 (Debian 14.2-1)'\n")
    fake.chmod(0o755)
    assert postgres.version(fake.parent) == (14, 2)
    monkeypatch.setattr(postgres, "bindir", lambda: fake.parent)
    with pytest.raises(postgres.PostgresError, match=r"14\.2 .* older than 14\.9"):
        postgres.initialise(tmp_path / "pg")
    assert not (tmp_path / "pg").exists()  # nothing made
