"""Store steps as Prefect tasks: listing and verifying versions, reporting what was found."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from slmops.store import open_store
from slmops.store.versions import COLLECTIONS, VersionedArtifact, artifacts
from tasks.retries import RETRIES


class VersionCheck(BaseModel):
    """The verification result of one stored version."""

    collection: str
    name: str
    version: str
    files: int
    bytes: int
    problems: list[str]


@task(**RETRIES)
def list_versions(store_uri: str) -> list[tuple[str, str, str]]:
    """Every complete version in the store, as (collection, name, version)."""
    store = open_store(store_uri)
    return [(c, a.name, v) for c in COLLECTIONS for a in artifacts(store, c) for v in a.versions()]


# Retries cover a flaky store connection; an integrity problem is a result, not an exception.
@task(task_run_name="verify {collection}/{name}@{version}", **RETRIES)
def verify_version(
    store_uri: str, collection: str, name: str, version: str, deep: bool = True
) -> VersionCheck:
    report = VersionedArtifact(open_store(store_uri), collection, name).verify(version, deep=deep)
    return VersionCheck(
        collection=collection,
        name=name,
        version=version,
        files=report.files,
        bytes=report.bytes,
        problems=report.problems,
    )


@task
def report_checks(store_uri: str, checks: list[VersionCheck]) -> str:
    """Publish the checks as a Prefect table artifact (the run's page in the UI shows it)."""
    rows = [
        {
            "artifact": f"{c.collection}/{c.name}",
            "version": c.version,
            "files": c.files,
            "bytes": c.bytes,
            "status": "ok" if not c.problems else "; ".join(c.problems),
        }
        for c in checks
    ]
    bad = sum(1 for c in checks if c.problems)
    summary = f"{len(checks)} versions checked in {store_uri}, {bad} with problems"
    if rows:
        create_table_artifact(rows, key="store-verification", description=summary)
    else:
        create_markdown_artifact(
            f"**{summary}**: the store holds no versions yet.", key="store-verification"
        )
    return summary
