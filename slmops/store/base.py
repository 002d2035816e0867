"""The object-store interface both backends implement, and the URI that picks one."""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from slmops.errors import ConfigError, IntegrityError, StoreError

# Names the local backend uses for its own bookkeeping; never valid as part of a key.
RESERVED_PREFIX = ".slmops-"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object without reading it."""

    key: str
    size: int
    etag: str | None = None
    sha256: str | None = None
    last_modified: datetime | None = None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(path: Path) -> str:
    """Content hash of a folder: each file's relative path and sha256, in a stable order.

    Hidden files (.git, .DS_Store) are left out, so a copy anywhere hashes the same."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


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


@dataclass(frozen=True)
class StoreURI:
    scheme: str  # "s3" or "file"
    bucket: str | None
    prefix: str
    path: Path | None


def parse_store_uri(uri: str) -> StoreURI:
    """Parse `s3://bucket/prefix`, `file:///abs/dir` or a plain directory path."""
    if not uri or not uri.strip():
        raise ConfigError("empty store URI: set SLMOPS_STORE to s3://bucket/prefix or a directory")
    uri = uri.strip()
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if not bucket:
            raise ConfigError(f"store URI {uri!r} has no bucket: write it as s3://bucket/prefix")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise ConfigError(
                f"store URI {uri!r}: {bucket!r} is not a valid S3 bucket name (3-63 characters: "
                "lowercase letters, digits, '.', '-', starting and ending with a letter or digit)"
            )
        prefix = parsed.path.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except StoreError as exc:
                raise ConfigError(f"store URI {uri!r}: bad prefix: {exc}") from None
        return StoreURI("s3", bucket, prefix, None)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"store URI {uri!r}: file URIs take no host; write file:///abs/dir")
        return StoreURI("file", None, "", Path(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" style drive letters are paths
        raise ConfigError(
            f"store URI {uri!r}: unsupported scheme {parsed.scheme!r}; use s3://bucket/prefix, "
            "file:///abs/dir or a directory path"
        )
    return StoreURI("file", None, "", Path(uri).expanduser())


def open_store(uri: str | None = None, **s3_options: Any) -> ObjectStore:
    """Open the store a URI names; with no URI, the one in settings (SLMOPS_STORE).

    `s3_options` (endpoint_url, region) override the settings for S3 stores.
    """
    from slmops.config import get_settings

    settings = get_settings()
    parsed = parse_store_uri(uri if uri is not None else settings.store)
    if parsed.scheme == "s3":
        from slmops.store.s3 import S3Store

        assert parsed.bucket is not None
        return S3Store(
            parsed.bucket,
            parsed.prefix,
            endpoint_url=s3_options.get("endpoint_url", settings.s3_endpoint_url),
            region=s3_options.get("region", settings.s3_region),
            multipart_threshold=s3_options.get(
                "multipart_threshold", settings.s3_multipart_mb * 2**20
            ),
            part_size=s3_options.get("part_size", settings.s3_multipart_mb * 2**20),
        )
    from slmops.store.local import LocalStore

    assert parsed.path is not None
    return LocalStore(parsed.path)
