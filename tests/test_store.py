"""The object store's contract, run against both backends: local directory and real S3 server."""

from __future__ import annotations

import os
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from slmops.errors import ConflictError, IntegrityError, ObjectExistsError, ObjectNotFoundError
from slmops.store.base import ObjectStore
from slmops.store.hashing import sha256_bytes, sha256_file
from slmops.store.s3 import S3Store
from tests.helpers import corrupt


def test_bytes_and_json_round_trip(store: ObjectStore) -> None:
    info = store.put_bytes("a/b/c.txt", b"hello")
    assert info.sha256 == sha256_bytes(b"hello")
    assert store.get_bytes("a/b/c.txt") == b"hello"
    store.put_json("a/doc.json", {"x": [1, 2], "y": "z"})
    assert store.get_json("a/doc.json") == {"x": [1, 2], "y": "z"}
    assert store.exists("a/b/c.txt") and not store.exists("a/b/nope.txt")
    assert store.head("a/b/c.txt").size == 5


def test_objects_are_immutable(store: ObjectStore) -> None:
    store.put_bytes("k.txt", b"first")
    with pytest.raises(ObjectExistsError, match=r"k\.txt"):
        store.put_bytes("k.txt", b"second")
    with pytest.raises(ObjectExistsError):
        store.put_json("k.txt", {})
    assert store.get_bytes("k.txt") == b"first"


def test_missing_object_error_names_the_key(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError, match=r"no/such/key\.bin"):
        store.get_bytes("no/such/key.bin")
    with pytest.raises(ObjectNotFoundError, match="absent"):
        store.head("absent")
    with pytest.raises(ObjectNotFoundError):
        store.get_file("absent", Path("/tmp/never-written"))
    assert not Path("/tmp/never-written").exists()


def test_folders_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "nested" / "deeper" / "leaf.bin").write_bytes(os.urandom(1000))
    infos = store.put_dir("folder/v1", src)
    assert [i.key for i in infos] == ["folder/v1/nested/deeper/leaf.bin", "folder/v1/top.txt"]
    store.get_dir("folder/v1", tmp_path / "out")
    assert (tmp_path / "out" / "top.txt").read_text() == "top"
    assert sha256_file(tmp_path / "out/nested/deeper/leaf.bin") == sha256_file(
        src / "nested/deeper/leaf.bin"
    )


def test_listing_paginates_past_one_thousand_keys(store: ObjectStore) -> None:
    keys = [f"many/{i:05d}.txt" for i in range(1050)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put_bytes(k, k.encode()), keys))
    store.put_bytes("many-other/x.txt", b"not under many/")
    listed = [i.key for i in store.list_objects("many/")]
    assert listed == keys
    assert store.list_dirs("") == ["many-other/", "many/"]
    assert store.list_dirs("many") == []


def test_large_file_uploads_in_parts_without_loading_it_whole(
    store: ObjectStore, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    size = 24 * 2**20 + 123  # five parts of 5 MiB on S3 (threshold set to 5 MiB)
    with open(big, "wb") as fh:
        for _ in range(size // 2**20):
            fh.write(os.urandom(2**20))
        fh.write(os.urandom(size % 2**20))
    store.exists("warm-up")  # the S3 client's one-off set-up is not part of the upload
    tracemalloc.start()
    info = store.put_file("models/big.bin", big)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < size / 3, f"upload held {peak / 2**20:.1f} MiB of a {size / 2**20:.1f} MiB file"
    assert info.size == size and info.sha256 == sha256_file(big)
    if isinstance(store, S3Store):
        assert store.head("models/big.bin").etag.strip('"').endswith("-5")  # type: ignore[union-attr]
    with pytest.raises(ObjectExistsError):
        store.put_file("models/big.bin", big)
    store.get_file("models/big.bin", tmp_path / "back.bin", sha256=info.sha256)
    assert sha256_file(tmp_path / "back.bin") == info.sha256


def test_corrupt_object_is_refused_on_read(store: ObjectStore, tmp_path: Path) -> None:
    info = store.put_bytes("data/train.jsonl", b'{"a": 1}\n')
    corrupt(store, "data/train.jsonl", b'{"a": 2}\n')
    with pytest.raises(IntegrityError, match=r"data/train.jsonl.*corrupt"):
        store.get_bytes("data/train.jsonl", sha256=info.sha256)
    with pytest.raises(IntegrityError):
        store.get_file("data/train.jsonl", tmp_path / "t.jsonl", sha256=info.sha256)
    assert not (tmp_path / "t.jsonl").exists(), "a corrupt download must not appear"


def test_compare_and_swap_detects_stale_writers(store: ObjectStore) -> None:
    etag = store.compare_and_swap("ptr.json", b"v1", None)
    with pytest.raises(ConflictError):
        store.compare_and_swap("ptr.json", b"again", None)
    data, current = store.read_versioned("ptr.json")
    assert data == b"v1" and current == etag
    store.compare_and_swap("ptr.json", b"v2", etag)
    with pytest.raises(ConflictError):
        store.compare_and_swap("ptr.json", b"v3-stale", etag)
    assert store.get_bytes("ptr.json") == b"v2"


def test_concurrent_writers_on_one_pointer_exactly_one_wins(store: ObjectStore) -> None:
    store.compare_and_swap("alias.json", b"start", None)
    _, etag = store.read_versioned("alias.json")
    writers = 8
    barrier = threading.Barrier(writers)

    def write(i: int) -> str:
        barrier.wait()
        try:
            store.compare_and_swap("alias.json", f"writer-{i}".encode(), etag)
            return "won"
        except ConflictError:
            return "conflict"

    with ThreadPoolExecutor(writers) as pool:
        outcomes = list(pool.map(write, range(writers)))
    assert outcomes.count("won") == 1 and outcomes.count("conflict") == writers - 1
    winner = outcomes.index("won")
    assert store.get_bytes("alias.json") == f"writer-{winner}".encode()


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "a\\b", "x/.slmops-tmp-1"])
def test_invalid_keys_are_rejected(store: ObjectStore, key: str) -> None:
    from slmops.errors import StoreError

    with pytest.raises(StoreError, match="invalid object key"):
        store.put_bytes(key, b"x")
