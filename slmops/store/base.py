"""The object-store interface both backends implement."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from slmops.errors import IntegrityError, StoreError

# Names the local backend uses for its own bookkeeping; never valid as part of a key.
RESERVED_PREFIX = ".slmops-"


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object without reading it."""

    key: str
    size: int
    etag: str | None = None
    sha256: str | None = None
    last_modified: datetime | None = None


def check_key(key: str) -> str:
    """Return `key` if it is a valid relative object key, else raise a StoreError saying why."""
    if not key or key.startswith("/") or "\\" in key:
        raise StoreError(
            f"invalid object key {key!r}: keys are relative, '/'-separated paths "
            "such as 'adapters/support/versions/v1/manifest.json'"
        )
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise StoreError(f"invalid object key {key!r}: empty, '.' or '..' path segment")
        if part.startswith(RESERVED_PREFIX):
            raise StoreError(
                f"invalid object key {key!r}: segments may not start with "
                f"{RESERVED_PREFIX!r} (reserved for the store's own files)"
            )
    return key


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def verify_sha256(key: str, expected: str | None, actual: str, where: str) -> None:
    if expected is not None and expected != actual:
        raise IntegrityError(
            f"object {key!r} in {where} is corrupt: sha256 is {actual}, expected {expected}. "
            "The stored copy was altered or truncated; restore it from a backup or write a new "
            "version, and do not promote anything built from it."
        )


class ObjectStore(ABC):
    """Immutable objects under string keys, plus compare-and-swap for small mutable ones.

    Objects are written once: `put_*` refuses to replace an existing key unless asked to.
    The only mutable objects are pointers (aliases), written through `compare_and_swap`.
    """

    uri: str

    # -- bytes ------------------------------------------------------------------------------
    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = False) -> ObjectInfo:
        """Store `data` at `key`; ObjectExistsError if the key exists and not `overwrite`."""

    @abstractmethod
    def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        """Read `key`; IntegrityError if `sha256` is given (or recorded) and does not match."""

    # -- files ------------------------------------------------------------------------------
    @abstractmethod
    def put_file(self, key: str, path: str | Path, *, overwrite: bool = False) -> ObjectInfo:
        """Upload a file without loading it whole into memory (multipart on S3)."""

    @abstractmethod
    def get_file(self, key: str, path: str | Path, *, sha256: str | None = None) -> ObjectInfo:
        """Download `key` to `path` atomically; the file appears only once verified."""

    # -- listing ----------------------------------------------------------------------------
    @abstractmethod
    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, recursively, in key order."""

    @abstractmethod
    def list_dirs(self, prefix: str = "") -> list[str]:
        """The immediate 'sub-folders' under `prefix` (keys up to the next '/'), sorted."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Metadata of `key`; ObjectNotFoundError if it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key` if it exists. Only for scratch areas (checkpoints), never versions."""

    # -- mutable pointers -------------------------------------------------------------------
    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """Read `key` with an opaque etag to pass to `compare_and_swap`."""

    @abstractmethod
    def compare_and_swap(self, key: str, data: bytes, expected_etag: str | None) -> str:
        """Write `key` only if it is still at `expected_etag` (None: only if it does not exist).

        Raises ConflictError when another writer got there first. Returns the new etag.
        """

    # -- helpers shared by both backends ----------------------------------------------------
    def put_json(self, key: str, obj: Any, *, overwrite: bool = False) -> ObjectInfo:
        return self.put_bytes(key, dump_json(obj), overwrite=overwrite)

    def get_json(self, key: str, *, sha256: str | None = None) -> Any:
        data = self.get_bytes(key, sha256=sha256)
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(
                f"object {key!r} in {self.uri} is not valid JSON ({exc}); it was not written by "
                "slmops or is corrupt"
            ) from exc

    def put_dir(
        self, prefix: str, path: str | Path, *, overwrite: bool = False
    ) -> list[ObjectInfo]:
        """Upload every file under `path` to `prefix/<relative path>`, in a stable order."""
        root = Path(path)
        if not root.is_dir():
            raise StoreError(f"cannot upload {root}: not a directory")
        infos = []
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = file.relative_to(root).as_posix()
            infos.append(self.put_file(join_key(prefix, rel), file, overwrite=overwrite))
        return infos

    def get_dir(self, prefix: str, path: str | Path) -> list[ObjectInfo]:
        """Download every object under `prefix/` into `path`, keeping relative paths."""
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        infos = []
        for info in self.list_objects(prefix):
            rel = PurePosixPath(info.key[len(prefix) :])
            infos.append(self.get_file(info.key, Path(path, *rel.parts), sha256=info.sha256))
        return infos

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def dump_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
