"""The artifact store: one interface over S3 and a local directory, chosen by URI."""

from slmops.store.base import ObjectInfo, ObjectStore, open_store, parse_store_uri

__all__ = ["ObjectInfo", "ObjectStore", "open_store", "parse_store_uri"]
