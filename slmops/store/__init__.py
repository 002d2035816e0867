"""The artifact store: one interface over S3 and a local directory, chosen by URI."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from slmops.errors import ConfigError, StoreError
from slmops.store.base import ObjectInfo, ObjectStore, check_key

__all__ = ["ObjectInfo", "ObjectStore", "StoreURI", "open_store", "parse_store_uri"]

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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
