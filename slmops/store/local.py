"""The local-directory backend: the embedded default, with the same guarantees as S3."""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from slmops.errors import ConflictError, ObjectExistsError, ObjectNotFoundError, StoreError
from slmops.store.base import (
    RESERVED_PREFIX,
    ObjectInfo,
    ObjectStore,
    check_key,
    verify_sha256,
)
from slmops.store.hashing import HASH_CHUNK, sha256_bytes

_LOCK_DIR = RESERVED_PREFIX + "locks"


class LocalStore(ObjectStore):
    """Objects as files under a root directory.

    Every write goes to a temporary file in the target folder and is then linked (immutable
    objects: fails if the name exists) or renamed (pointers) into place, so a reader sees the
    whole object or none of it, and a crash leaves at most a stray temporary file.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {self.root} exists and is not a directory")

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _write_temp(self, target: Path, chunks: Iterator[bytes]) -> tuple[Path, int, str]:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{RESERVED_PREFIX}tmp-{uuid.uuid4().hex}-{target.name}"
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size, digest.hexdigest()

    def _publish(self, key: str, tmp: Path, target: Path, overwrite: bool) -> None:
        try:
            if overwrite:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)  # atomic create-if-absent
                except FileExistsError:
                    raise ObjectExistsError(
                        f"object {key!r} already exists in {self.uri}; stored objects are "
                        "immutable: write a new version instead"
                    ) from None
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = False) -> ObjectInfo:
        target = self._path(key)
        tmp, size, digest = self._write_temp(target, iter([data]))
        self._publish(key, tmp, target, overwrite)
        return ObjectInfo(key, size, etag=digest, sha256=digest)

    def put_file(self, key: str, path: str | Path, *, overwrite: bool = False) -> ObjectInfo:
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"cannot upload {src} to {key!r}: no such file")
        target = self._path(key)
        with open(src, "rb") as fh:
            tmp, size, digest = self._write_temp(target, iter(lambda: fh.read(HASH_CHUNK), b""))
        self._publish(key, tmp, target, overwrite)
        return ObjectInfo(key, size, etag=digest, sha256=digest)

    def _missing(self, key: str) -> ObjectNotFoundError:
        return ObjectNotFoundError(f"object {key!r} does not exist in {self.uri}")

    def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(key) from None
        verify_sha256(key, sha256, sha256_bytes(data), self.uri)
        return data

    def get_file(self, key: str, path: str | Path, *, sha256: str | None = None) -> ObjectInfo:
        src = self._path(key)
        if not src.is_file():
            raise self._missing(key)
        dest = Path(path)
        with open(src, "rb") as fh:
            tmp, size, digest = self._write_temp(dest, iter(lambda: fh.read(HASH_CHUNK), b""))
        try:
            verify_sha256(key, sha256, digest, self.uri)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return ObjectInfo(key, size, etag=digest, sha256=digest)

    def _info(self, key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(key, st.st_size, last_modified=datetime.fromtimestamp(st.st_mtime, UTC))

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise self._missing(key)
        return self._info(key, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        # Walk only the folder the prefix can live in, not the whole store.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base.split("/")) if base else self.root
        if not start.is_dir():
            return
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED_PREFIX)]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(RESERVED_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        for key in sorted(keys):
            try:
                yield self._info(key, self._path(key))
            except FileNotFoundError:  # removed while listing
                continue

    def list_dirs(self, prefix: str = "") -> list[str]:
        folder = (
            self.root.joinpath(*prefix.strip("/").split("/")) if prefix.strip("/") else self.root
        )
        if not folder.is_dir():
            return []
        base = prefix.strip("/")
        return sorted(
            f"{base}/{p.name}/" if base else f"{p.name}/"
            for p in folder.iterdir()
            if p.is_dir() and not p.name.startswith(RESERVED_PREFIX)
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    # -- pointers ---------------------------------------------------------------------------
    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        lock_dir = self.root / _LOCK_DIR
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock_path = lock_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
        with open(lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, sha256_bytes(data)

    def compare_and_swap(self, key: str, data: bytes, expected_etag: str | None) -> str:
        target = self._path(key)
        with self._lock(key):
            try:
                current = sha256_bytes(target.read_bytes())
            except FileNotFoundError:
                current = None
            if current != expected_etag:
                state = "was created" if expected_etag is None else "changed"
                raise ConflictError(
                    f"{key!r} in {self.uri} {state} by another writer since it was read; "
                    "read it again and retry"
                )
            tmp, _, digest = self._write_temp(target, iter([data]))
            self._publish(key, tmp, target, overwrite=True)
            return digest
