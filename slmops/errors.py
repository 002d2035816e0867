"""Errors slmops raises. Each message says what was wrong, where, and what to do.

Retrying is decided by one rule, `is_transient`: only what may succeed if tried again (a
connection that failed, a timeout, a server-side 5xx) is retried. Bad input, damaged data, a
lost race and bugs fail the same way every time, so retrying them only delays the error or,
for a lost race, does harm.
"""

from __future__ import annotations

from typing import Any


class SlmopsError(Exception):
    """Base class for every error slmops raises on purpose."""


class TransientError(SlmopsError):
    """May succeed if tried again: a connection failure, a timeout, a 5xx from a server."""


class ConfigError(SlmopsError):
    """A setting or URI is malformed or points at something that does not exist."""


def validation_problems(exc: Exception) -> str:
    """A pydantic ValidationError as one line: `field.path: message; ...`."""
    errors: list[dict[str, Any]] = getattr(exc, "errors", list)()
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors)


class StoreError(SlmopsError):
    """The artifact store could not do what was asked (bad key, corrupt or missing data...)."""


class StoreUnavailableError(StoreError, TransientError):
    """The store could not be reached, timed out, or answered with a server error (5xx)."""


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


class ClaimHeldError(ConflictError):
    """Another live run holds the claim on this work (e.g. training one adapter key)."""


# Exception types from libraries that mean "the network failed", by qualified name so that
# checking needs none of them imported (botocore, requests, httpx, urllib3 are optional here).
_NETWORK_ERRORS = frozenset(
    {
        "botocore.exceptions.ConnectionError",  # EndpointConnectionError, ConnectTimeout, ...
        "botocore.exceptions.ReadTimeoutError",
        "botocore.exceptions.ConnectionClosedError",
        "requests.exceptions.ConnectionError",
        "requests.exceptions.Timeout",
        "httpx.TransportError",  # connect/read timeouts, refused connections
        "urllib3.exceptions.HTTPError",
    }
)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying `exc` may help: a TransientError, or a network failure or timeout
    raised by a library. Everything else (bad input, corrupt data, lost races, bugs) is not."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, SlmopsError):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return any(
        f"{cls.__module__}.{cls.__qualname__}" in _NETWORK_ERRORS for cls in type(exc).__mro__
    )


class PromotionError(SlmopsError):
    """A promotion or rollback was refused or undone; the message says why and where."""
