"""Flows under the Prefect test harness: flows/ -> tasks/ -> slmops, on both store backends."""

from __future__ import annotations

import asyncio

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.verify_store import VerifyStoreParams, verify_store
from slmops.errors import IntegrityError
from slmops.manifest import Manifest
from slmops.store.base import ObjectStore
from slmops.versions import VersionedArtifact
from tests.test_store import corrupt

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def latest_artifact(key: str) -> str:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            limit=1,
            sort="CREATED_DESC",  # type: ignore[arg-type]
        )
    return str(found[0].data) + " " + str(found[0].description)


def test_verify_store_checks_every_version_and_reports(
    store: ObjectStore, store_uri_env: str
) -> None:
    bot = VersionedArtifact(store, "adapters", "bot")
    docs = VersionedArtifact(store, "indexes", "docs")
    versions = [
        bot.publish(Manifest(kind="adapter", name="bot"), {"w": b"1"}).version,
        bot.publish(Manifest(kind="adapter", name="bot"), {"w": b"2"}).version,
        docs.publish(Manifest(kind="index", name="docs"), {"i": b"3"}).version,
    ]

    checks = verify_store()  # store from SLMOPS_STORE, as a deployment's worker would see it
    assert sorted(c.version for c in checks) == sorted(versions)
    assert all(not c.problems and c.files == 1 for c in checks)
    report = asyncio.run(latest_artifact("store-verification"))
    assert "3 versions checked" in report and versions[0] in report


def test_verify_store_fails_the_run_on_a_damaged_version(
    store: ObjectStore, store_uri_env: str
) -> None:
    bot = VersionedArtifact(store, "adapters", "bot")
    good = bot.publish(Manifest(kind="adapter", name="bot"), {"w": b"good"}).version
    bad = bot.publish(Manifest(kind="adapter", name="bot"), {"w": b"fine"}).version
    corrupt(store, f"adapters/bot/versions/{bad}/w", b"rot!")

    with pytest.raises(IntegrityError, match=f"1 damaged versions.*adapters/bot@{bad}"):
        verify_store(VerifyStoreParams(store=store.uri))
    checks = verify_store(VerifyStoreParams(store=store.uri, fail_on_problems=False))
    by_version = {c.version: c for c in checks}
    assert by_version[good].problems == []
    assert "sha256" in by_version[bad].problems[0]
