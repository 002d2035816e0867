"""The local stack's S3 server keeps what it stored across a restart and a crash, with the
metadata slmops relies on, and still holds the conditional-write guarantee."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from slmops.errors import ConflictError, ObjectExistsError
from slmops.store.manifest import Manifest
from slmops.store.s3 import S3Store
from slmops.store.versions import VersionedArtifact
from tests.helpers import free_port, wait_for_port

pytestmark = pytest.mark.s3


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start (and restart) `python -m infra.s3_server` on one port and one data folder."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infra.s3_server",
                "--port",
                str(port),
                "--data",
                str(tmp_path / "data"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        wait_for_port(port, proc)
        return proc

    start.port = port  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_objects_survive_a_crash_with_their_metadata(
    server: Callable[[], subprocess.Popen[bytes]],
) -> None:
    proc = server()
    endpoint = f"http://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="slmops")
    store = S3Store(
        "slmops", "team", endpoint_url=endpoint, multipart_threshold=5 * 2**20, part_size=5 * 2**20
    )
    art = VersionedArtifact(store, "adapters", "bot")
    big = os.urandom(11 * 2**20)  # a multipart upload
    version = art.publish(
        Manifest(kind="adapter", name="bot"), {"small.bin": b"w" * 10, "big.bin": big}
    ).version
    art.set_alias("champion", version)
    _, alias_etag = store.read_versioned("adapters/bot/aliases/champion.json")
    before = store.head(f"adapters/bot/versions/{version}/big.bin")
    store.put_bytes("scratch/tmp", b"x")
    store.delete("scratch/tmp")

    proc.send_signal(signal.SIGKILL)  # no chance to save anything on the way out
    proc.wait()
    server()

    again = VersionedArtifact(S3Store("slmops", "team", endpoint_url=endpoint), "adapters", "bot")
    assert again.versions() == [version] and again.verify(version).ok
    assert again.read_file(version, "big.bin") == big
    after = again.store.head(f"adapters/bot/versions/{version}/big.bin")
    assert (after.etag, after.sha256, after.size) == (before.etag, before.sha256, before.size)
    assert again.resolve("champion").version == version
    assert not again.store.exists("scratch/tmp")  # a delete is kept too
    # Conditional writes still hold on restored objects.
    with pytest.raises(ObjectExistsError):
        again.store.put_bytes(f"adapters/bot/versions/{version}/small.bin", b"evil")
    with pytest.raises(ConflictError):
        again.store.compare_and_swap("adapters/bot/aliases/champion.json", b"{}", '"stale"')
    _, etag_now = again.store.read_versioned("adapters/bot/aliases/champion.json")
    assert etag_now == alias_etag
    again.store.compare_and_swap("adapters/bot/aliases/champion.json", b"{}", alias_etag)


def test_the_stack_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from infra.stack import StackError, require_stack_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "moto" else real(name, *a)
    )
    with pytest.raises(
        StackError, match=r"moto, from the 'stack' extra: pip install 'slmops\[stack\]'"
    ):
        require_stack_extra()
