"""The local stack's S3 server: moto's S3 (which holds the store's conditional-write guarantee:
If-None-Match and If-Match answer 412 as S3 does) with its buckets kept on disk.

moto keeps objects in memory; this server writes every object that a request creates, replaces
or deletes to a data folder before it answers, and loads the folder back when it starts. So
`slmops stack down` / `up`, or a crash of the server, loses nothing a client was told is stored.
ETags, user metadata (the sha256 slmops checks) and content types come back as they were.

Run it:  python -m infra.s3_server --port 9000 --data .slmops/stack/s3-data
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

REGION = "us-east-1"


def _backend_for(bucket: str) -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    partition, account = s3_backends.bucket_accounts.get(bucket, ("aws", DEFAULT_ACCOUNT_ID))
    return s3_backends[account][partition]


class DiskMirror:
    """Objects of every bucket as files: `<data>/<bucket>/<sha256 of key>.{bin,json}`.

    Flat names, because S3 keys `a` and `a/b` can both exist but a file system cannot hold a
    file and a folder of one name. The JSON holds the key, ETag, metadata and date."""

    def __init__(self, data: Path):
        self.data = data
        self.lock = threading.Lock()

    def _paths(self, bucket: str, key: str) -> tuple[Path, Path]:
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.data / bucket / f"{name}.bin", self.data / bucket / f"{name}.json"

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def sync_bucket(self, bucket: str) -> None:
        """Make the bucket's folder match the server: created, or removed with the bucket."""
        with self.lock:
            exists = bucket in _backend_for(bucket).buckets
            folder = self.data / bucket
            if exists:
                folder.mkdir(parents=True, exist_ok=True)
            elif folder.is_dir():
                for file in folder.iterdir():
                    file.unlink()
                folder.rmdir()

    def sync_key(self, bucket: str, key: str) -> None:
        """Write the object's current state (or its absence) to disk."""
        with self.lock:
            backend = _backend_for(bucket)
            found = backend.buckets.get(bucket)
            fake = found.keys.get(key) if found is not None else None
            value_path, meta_path = self._paths(bucket, key)
            if fake is None:
                meta_path.unlink(missing_ok=True)
                value_path.unlink(missing_ok=True)
                return
            value_path.parent.mkdir(parents=True, exist_ok=True)
            self._write(value_path, fake.value)
            meta = {
                "key": key,
                "etag": fake.etag.strip('"'),
                "metadata": dict(fake.metadata),
                "last_modified": fake.last_modified.isoformat(),
            }
            self._write(meta_path, json.dumps(meta).encode())

    def sync_all(self, bucket: str) -> None:
        """Re-mirror a whole bucket (after a multi-object delete)."""
        found = _backend_for(bucket).buckets.get(bucket)
        live = set(found.keys.keys()) if found is not None else set()
        folder = self.data / bucket
        on_disk = set()
        if folder.is_dir():
            for meta in folder.glob("*.json"):
                on_disk.add(json.loads(meta.read_text())["key"])
        for key in live | on_disk:
            self.sync_key(bucket, key)

    def restore(self) -> int:
        """Load every bucket and object from disk into the server; returns the object count."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        count = 0
        if not self.data.is_dir():
            return 0
        for folder in sorted(p for p in self.data.iterdir() if p.is_dir()):
            backend.create_bucket(folder.name, REGION)
            for meta_path in sorted(folder.glob("*.json")):
                meta = json.loads(meta_path.read_text())
                value = meta_path.with_suffix(".bin").read_bytes()
                fake = backend.put_object(
                    folder.name, meta["key"], value, etag=meta["etag"], disable_notification=True
                )
                fake.set_metadata(meta["metadata"], replace=True)
                fake.last_modified = datetime.fromisoformat(meta["last_modified"])
                count += 1
        return count


class Persisting:
    """WSGI middleware: after a successful write request, mirror what it changed to disk,
    before the client gets the answer."""

    def __init__(self, app: Callable[..., Iterable[bytes]], mirror: DiskMirror):
        self.app, self.mirror = app, mirror

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ["REQUEST_METHOD"]
        if method not in ("PUT", "POST", "DELETE"):
            return self.app(environ, start_response)
        seen: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            seen.update(status=status, headers=headers, exc_info=exc_info)

        body = b"".join(self.app(environ, capture))
        if int(seen["status"].split()[0]) < 300:
            self._mirror(method, environ)
        start_response(seen["status"], seen["headers"], seen["exc_info"])
        return [body]

    def _mirror(self, method: str, environ: dict[str, Any]) -> None:
        path = environ.get("PATH_INFO", "").lstrip("/")
        bucket, _, raw_key = path.partition("/")
        bucket = unquote(bucket)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if not bucket:
            return
        if not raw_key:
            if method == "POST" and "delete" in query:
                self.mirror.sync_all(bucket)
            elif method in ("PUT", "DELETE") and not (query.keys() - {""}):
                self.mirror.sync_bucket(bucket)
            return
        if "uploadId" in query and method == "PUT":
            return  # a part of a multipart upload: the object exists once it completes
        if "uploads" in query:
            return  # a multipart upload started: nothing stored yet
        self.mirror.sync_key(bucket, unquote(raw_key))


def make_app(data: Path) -> tuple[Any, int]:
    """moto's S3 app wrapped to persist into `data`; the number of objects restored."""
    from moto.moto_server.werkzeug_app import create_backend_app

    mirror = DiskMirror(data)
    data.mkdir(parents=True, exist_ok=True)
    restored = mirror.restore()
    return Persisting(create_backend_app("s3"), mirror), restored


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--data", type=Path, required=True, help="folder the buckets live in")
    args = parser.parse_args(argv)
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    app, restored = make_app(args.data)
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler
    )
    print(
        f"S3 server on http://{args.host}:{args.port}, data in {args.data} "
        f"({restored} objects restored)",
        flush=True,
    )
    # Every object is on disk before its request is answered: stopping at any point is safe.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
