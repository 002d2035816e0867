"""Errors slmops raises. Each message says what was wrong, where, and what to do."""

from __future__ import annotations


class SlmopsError(Exception):
    """Base class for every error slmops raises on purpose."""


class ConfigError(SlmopsError):
    """A setting or URI is malformed or points at something that does not exist."""


class StoreError(SlmopsError):
    """The artifact store could not do what was asked."""


class ObjectNotFoundError(StoreError, KeyError):
    """An object (or version, or alias) does not exist in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ObjectExistsError(StoreError):
    """An immutable object already exists; it is never overwritten."""


class ConflictError(StoreError):
    """A conditional write lost a race: another writer changed the object first."""


class IntegrityError(StoreError):
    """Stored content does not match the hash recorded for it."""
