"""Publishes a version slowly, announcing each file, so a test can kill it mid-write."""

import sys
import time

from slmops.store import open_store
from slmops.store.manifest import Manifest
from slmops.store.versions import VersionedArtifact

store_uri, endpoint, version = sys.argv[1:4]
art = VersionedArtifact(open_store(store_uri, endpoint_url=endpoint or None), "indexes", "docs")
files = {f"chunk-{i:03d}.json": b"x" * 1000 for i in range(50)}


def announce(entry: object) -> None:
    print("uploaded", entry.path, flush=True)  # type: ignore[attr-defined]
    time.sleep(0.2)


stored = art.publish(Manifest(kind="index", name="docs"), files, version=version, on_file=announce)
art.set_alias("latest", stored.version)
print("done", flush=True)
