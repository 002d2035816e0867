"""Versions and aliases: complete-then-visible, conditional alias flips, rollback, lineage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from slmops.errors import (
    ConflictError,
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreError,
)
from slmops.store.audit import AuditLog
from slmops.store.base import ObjectStore
from slmops.store.manifest import InputRef, Manifest, Trigger
from slmops.store.s3 import S3Store
from slmops.store.versions import VersionedArtifact, summarize
from tests.helpers import corrupt


def publish(art: VersionedArtifact, content: bytes = b"weights", **kw: object) -> str:
    manifest = Manifest(kind="adapter", name=art.name, **kw)
    files = {"adapter_model.safetensors": content, "adapter_config.json": b'{"r": 16}'}
    return art.publish(manifest, files).version


def test_published_version_has_manifest_with_hashes_and_lineage(store: ObjectStore) -> None:
    art = VersionedArtifact(store, "adapters", "support-bot")
    manifest = art.publish(
        Manifest(
            kind="adapter",
            name="support-bot",
            inputs=[
                InputRef(kind="dataset", name="support", version="v3", sha256="ab" * 32),
                InputRef(kind="base-model", name="tiny-llama", version="rev-1"),
            ],
            config={
                "lora_r": 16,
                "hf_token": "hf_secret_value",
                "source": "https://user:pass@example.com/x",
            },
            metrics={"json_valid": 0.98},
            timings={"train": 12.5},
            trigger=Trigger(type="event", id="evt-123"),
        ),
        {"adapter_model.safetensors": b"w" * 100, "adapter_config.json": b"{}"},
    )
    stored = art.manifest(manifest.version)
    assert [f.path for f in stored.files] == ["adapter_config.json", "adapter_model.safetensors"]
    assert stored.file("adapter_model.safetensors").size == 100
    assert stored.inputs[0].version == "v3" and stored.trigger.id == "evt-123"
    assert stored.code.version and stored.metrics == {"json_valid": 0.98}
    raw = store.get_bytes(f"adapters/support-bot/versions/{manifest.version}/manifest.json")
    assert b"hf_secret_value" not in raw and b"user:pass" not in raw, "secrets leaked"
    assert stored.config["lora_r"] == 16
    assert art.read_file(manifest.version, "adapter_model.safetensors") == b"w" * 100


def test_versions_are_immutable(store: ObjectStore) -> None:
    art = VersionedArtifact(store, "adapters", "bot")
    version = publish(art)
    with pytest.raises(ObjectExistsError):
        art.publish(Manifest(kind="adapter", name="bot"), {"x": b"1"}, version=version)
    assert art.read_file(version, "adapter_model.safetensors") == b"weights"


def test_alias_history_and_one_call_rollback(store: ObjectStore) -> None:
    art = VersionedArtifact(store, "adapters", "bot")
    v1, v2, v3 = publish(art, b"1"), publish(art, b"2"), publish(art, b"3")
    assert art.versions() == [v1, v2, v3]
    art.set_alias("champion", v1)
    art.set_alias("champion", v2, expect=v1, reason="gate passed")
    record = art.set_alias("champion", v3)
    assert record.version == v3 and record.previous == v2
    assert [h.version for h in record.history] == [v1, v2]
    assert art.rollback("champion", reason="smoke test failed").version == v2
    assert art.rollback("champion").version == v1
    with pytest.raises(StoreError, match="no earlier version"):
        art.rollback("champion")
    assert art.resolve("champion").version == v1
    events = [
        (e.event, e.details["version"])
        for e in AuditLog(store).events(resource="slmops.adapter.bot")
    ]
    assert events == [
        ("alias.set", v1),
        ("alias.set", v2),
        ("alias.set", v3),
        ("alias.rollback", v2),
        ("alias.rollback", v1),
    ]


def test_conditional_alias_flip_refuses_when_alias_moved(store: ObjectStore) -> None:
    art = VersionedArtifact(store, "adapters", "bot")
    v1, v2 = publish(art, b"1"), publish(art, b"2")
    art.set_alias("champion", v1)
    with pytest.raises(ConflictError, match="another writer moved it"):
        art.set_alias("champion", v2, expect=None)
    assert art.resolve("champion").version == v1


def test_racing_promotions_exactly_one_wins(store: ObjectStore) -> None:
    art = VersionedArtifact(store, "adapters", "bot")
    base = publish(art, b"base")
    art.set_alias("champion", base)
    candidates = [publish(art, f"c{i}".encode()) for i in range(6)]
    barrier = threading.Barrier(len(candidates))

    def promote(version: str) -> str:
        barrier.wait()
        try:
            art.set_alias("champion", version, expect=base)
            return version
        except ConflictError:
            return "conflict"

    with ThreadPoolExecutor(len(candidates)) as pool:
        outcomes = list(pool.map(promote, candidates))
    winners = [o for o in outcomes if o != "conflict"]
    assert len(winners) == 1
    assert art.resolve("champion").version == winners[0]
    assert art.get_alias("champion").history[-1].version == base  # type: ignore[union-attr]


def test_alias_cannot_point_at_an_incomplete_version(store: ObjectStore) -> None:
    art = VersionedArtifact(store, "adapters", "bot")
    store.put_bytes("adapters/bot/versions/20990101T000000Z-orphan/weights.bin", b"partial")
    assert art.versions() == []
    with pytest.raises(StoreError, match=r"refusing to point an alias.*no complete version"):
        art.set_alias("champion", "20990101T000000Z-orphan")
    assert art.get_alias("champion") is None


def test_alias_pointing_at_missing_version_says_how_to_fix(store: ObjectStore) -> None:
    art = VersionedArtifact(store, "adapters", "bot")
    store.put_json(
        "adapters/bot/aliases/champion.json",
        {
            "alias": "champion",
            "history": [],
            "target": {"version": "20250101T000000Z-gone", "set_at": "2025-01-01T00:00:00Z"},
        },
    )
    with pytest.raises(StoreError, match=r"points at version 20250101T000000Z-gone.*rollback"):
        art.resolve("champion")
    with pytest.raises(ObjectNotFoundError, match="no alias 'latest'"):
        art.resolve("latest")


def test_tampered_file_fails_verification_and_reads(store: ObjectStore, tmp_path: Path) -> None:
    art = VersionedArtifact(store, "adapters", "bot")
    version = publish(art, b"good weights")
    assert art.verify(version).ok
    corrupt(store, f"adapters/bot/versions/{version}/adapter_model.safetensors", b"evil weights")
    report = art.verify(version)
    assert not report.ok and "adapter_model.safetensors" in report.problems[0]
    with pytest.raises(IntegrityError, match=r"adapter_model\.safetensors"):
        art.read_file(version, "adapter_model.safetensors")
    with pytest.raises(IntegrityError):
        art.download(version, tmp_path / "dl")
    corrupt(store, f"adapters/bot/versions/{version}/adapter_config.json", b"")
    with pytest.raises(StoreError, match="refusing to point an alias"):
        art.set_alias("champion", version)
    assert art.get_alias("champion") is None


def test_manifest_that_is_not_a_manifest_is_a_clear_error(store: ObjectStore) -> None:
    art = VersionedArtifact(store, "datasets", "support")
    store.put_bytes("datasets/support/versions/v1/manifest.json", b'{"kind": 3}')
    with pytest.raises(
        StoreError, match=r"datasets/support/versions/v1/manifest.json.*not a valid"
    ):
        art.manifest("v1")


def test_killed_writer_leaves_latest_on_the_previous_version(store: ObjectStore) -> None:
    art = VersionedArtifact(store, "indexes", "docs")
    good = art.publish(Manifest(kind="index", name="docs"), {"index.json": b"{}"}).version
    art.set_alias("latest", good)

    endpoint = store.endpoint_url if isinstance(store, S3Store) else ""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [
            sys.executable,
            str(root / "tests" / "crash_writer.py"),
            store.uri,
            endpoint or "",
            "20990101T000000Z-crashed",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )
    assert proc.stdout is not None
    uploaded = 0
    for line in proc.stdout:
        uploaded += line.startswith("uploaded")
        if uploaded == 5:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"

    # The orphan's files are there, but no reader can see the version.
    assert len(list(store.list_objects("indexes/docs/versions/20990101T000000Z-crashed/"))) >= 5
    assert art.versions() == [good]
    assert art.resolve("latest").version == good
    [row] = summarize(store)
    assert (row.versions, row.orphans, row.aliases) == (1, 1, {"latest": good})
    # The next writer goes on as normal.
    nxt = art.publish(Manifest(kind="index", name="docs"), {"index.json": b"[]"}).version
    art.set_alias("latest", nxt, expect=good)
    assert json.loads(art.read_file(art.resolve("latest").version, "index.json")) == []


@pytest.mark.parametrize("name", ["", "a/b", "../x", "-lead", "x" * 200])
def test_bad_artifact_names_are_refused(store: ObjectStore, name: str) -> None:
    with pytest.raises(StoreError, match="invalid"):
        VersionedArtifact(store, "adapters", name)


class CountingStore:
    """A store that counts the requests made through it (to check lookups do not scan)."""

    def __init__(self, inner: ObjectStore):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


def test_lookups_stay_constant_in_the_number_of_versions(store: ObjectStore) -> None:
    art = VersionedArtifact(store, "adapters", "bot")
    counted = CountingStore(store)
    looked_up = VersionedArtifact(counted, "adapters", "bot")  # type: ignore[arg-type]
    costs = []
    for n in (1, 6):
        while len(art.versions()) < n:
            key = f"key{len(art.versions())}"
            art.publish(
                Manifest(kind="adapter", name="bot"), {"w": key.encode()}, lookup={"k": key}
            )
        counted.calls = 0
        found = looked_up.find("k", "key0")
        missing = looked_up.find("k", "nope")
        costs.append(counted.calls)
        assert found is not None and found.files[0].sha256 and missing is None
    assert costs[0] == costs[1] <= 3, costs

    counted.calls = 0
    assert len(looked_up.versions()) == 6
    assert counted.calls == 1  # one listing, not one request per version
