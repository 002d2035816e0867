"""Manifests: what a stored version is, what it was made from, and how it was made."""

from __future__ import annotations

import getpass
import itertools
import os
import re
import socket
import subprocess
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from slmops.errors import ConfigError

SCHEMA_VERSION = 1

# A key is secret if one of its words (split on _ - . and case) is one of these, or it ends
# in a secret pair: "hf_token", "AWS_SECRET_ACCESS_KEY", "apiKey"; not "max_tokens".
_SECRET_WORDS = {
    "secret",
    "password",
    "passwd",
    "token",
    "apikey",
    "credential",
    "credentials",
    "auth",
    "authorization",
    "cookie",
    "signature",
}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key")}


def _is_secret_key(key: str) -> bool:
    words = [w.lower() for w in re.split(r"[_\-.\s]+|(?<=[a-z])(?=[A-Z])", key) if w]
    return bool(set(words) & _SECRET_WORDS) or any(
        pair in _SECRET_PAIRS for pair in itertools.pairwise(words)
    )


# Credentials embedded in URLs: scheme://user:password@host
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
REDACTED = "***"


def redact(value: Any) -> Any:
    """Copy of `value` with secrets masked: secret-named keys, SecretStr, URL credentials.

    Applied to everything that leaves the process as a record (manifests, audit events,
    Prefect artifacts), so a config that carries a token never lands in the store.
    """
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and _is_secret_key(k) and v not in (None, "")
                else redact(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(r"\g<scheme>***@", value)
    return value


class FileEntry(BaseModel):
    """One file of a version, relative to the version folder."""

    path: str
    sha256: str
    size: int


class InputRef(BaseModel):
    """Something a version was made from, pinned by version and/or content hash."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(description="index, dataset, docs, base-model, adapter, code...")
    name: str
    version: str | None = Field(None, description="Store version, or model revision.")
    sha256: str | None = None
    uri: str | None = None


class Trigger(BaseModel):
    """Who or what caused the run that made a version."""

    type: Literal["schedule", "manual", "event", "cli", "api", "test"] = "api"
    id: str | None = Field(None, description="Event id, schedule name or deployment id.")
    by: str | None = Field(None, description="User or service, when known.")
    flow_run_id: str | None = None

    @classmethod
    def from_cli(cls) -> Trigger:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = None
        return cls(type="cli", by=f"{user}@{socket.gethostname()}" if user else None)


class CodeVersion(BaseModel):
    package: str = "slmops"
    version: str
    git_commit: str | None = None
    git_dirty: bool | None = None


@lru_cache(maxsize=1)
def code_version() -> CodeVersion:
    """The installed slmops version and, when run from a git checkout, its commit."""
    import slmops
    from slmops import __version__

    root = Path(slmops.__file__).resolve().parent.parent  # the checkout, if it is one
    commit, dirty = None, None
    if (root / ".git").exists():
        try:
            commit = (
                subprocess.run(
                    ["git", "-C", str(root), "rev-parse", "HEAD"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=True,
                ).stdout.strip()
                or None
            )
            status = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            dirty = bool(status.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return CodeVersion(version=__version__, git_commit=commit, git_dirty=dirty)


def _now() -> datetime:
    return datetime.now(UTC)


class Manifest(BaseModel):
    """The record written beside every stored version, last, as `manifest.json`."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    kind: str = Field(description="index, dataset, adapter, eval-report, ...")
    name: str
    version: str = ""
    created_at: datetime = Field(default_factory=_now)
    files: list[FileEntry] = Field(default_factory=list)
    inputs: list[InputRef] = Field(default_factory=list)
    parent: str | None = Field(None, description="The version this one was derived from.")
    code: CodeVersion = Field(default_factory=code_version)
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")
    resources: dict[str, Any] = Field(default_factory=dict)
    trigger: Trigger = Field(default_factory=Trigger)
    host: str = Field(default_factory=lambda: os.uname().nodename)

    @field_validator("config", "metrics", "resources", mode="after")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = redact(value)
        return result

    def base_model(self) -> InputRef | None:
        """The base model (name, revision, weights digest) an adapter was trained on."""
        return next((i for i in self.inputs if i.kind == "base-model"), None)

    def trained_on(self) -> InputRef:
        """The base model an adapter was trained on, with its revision; ConfigError when the
        manifest records none (such an adapter can be neither gated nor served)."""
        base = self.base_model()
        if base is None or not base.version:
            raise ConfigError(
                f"adapter {self.name} version {self.version} records no base model and "
                "revision in its manifest: it cannot be evaluated or served"
            )
        return base

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(f"{path!r} is not a file of {self.kind} {self.name} version {self.version}")
