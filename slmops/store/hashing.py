"""Content hashes: of bytes, of a file (streamed), of a folder (stable across machines)."""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_CHUNK = 1024 * 1024


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
