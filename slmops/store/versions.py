"""Versioned artifacts and their aliases: the store's one guarantee.

A version is uploaded file by file, then its `manifest.json` is written (last, once), and only
then may an alias such as `latest` or `champion` point at it, flipped by compare-and-swap.
A version without a manifest is an orphan (a crashed write): readers never see it.

Layout under the store: `<collection>/<name>/versions/<version>/...` and
`<collection>/<name>/aliases/<alias>.json`.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from slmops.errors import (
    ConflictError,
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreError,
)
from slmops.store.audit import AuditLog
from slmops.store.base import ObjectStore, join_key
from slmops.store.hashing import sha256_bytes
from slmops.store.manifest import FileEntry, Manifest, Trigger

INDEXES, DATASETS, ADAPTERS, MODELS = "indexes", "datasets", "adapters", "models"
EVALS = "evals"
COLLECTIONS = (INDEXES, DATASETS, ADAPTERS, EVALS)
# The aliases the pipeline moves: `latest` (the newest version a step published: ingestion,
# datasets, training, assess), `challenger` (an adapter that passed the gate) and `champion`
# (the adapter production serves; promotion and rollback move it).
LATEST, CHALLENGER, CHAMPION = "latest", "challenger", "champion"
_SINGULAR = {
    INDEXES: "index",
    DATASETS: "dataset",
    ADAPTERS: "adapter",
    MODELS: "model",
    EVALS: "eval",
}
MANIFEST = "manifest.json"
ALIAS_HISTORY_LIMIT = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Unset:
    """Marks `expect` as not given (None is a meaningful value: 'alias must not exist')."""


_UNSET = _Unset()


def check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value or ""):
        raise StoreError(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def new_version_id(now: datetime | None = None) -> str:
    """A version id that sorts by creation time and never collides.

    e.g. 20261124T070102.123456Z-1a2b3c4d: UTC to the microsecond, then a random suffix.
    """
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}"


class AliasTarget(BaseModel):
    version: str
    set_at: datetime
    by: str | None = None
    reason: str | None = None


class Alias(BaseModel):
    """An alias object: where it points now and where it pointed before (newest last)."""

    alias: str
    target: AliasTarget
    history: list[AliasTarget] = Field(default_factory=list)

    @property
    def version(self) -> str:
        return self.target.version

    @property
    def previous(self) -> str | None:
        return self.history[-1].version if self.history else None


@dataclass
class VerifyReport:
    """What `verify` found for one version: empty `problems` means intact."""

    version: str
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class VersionedArtifact:
    """The versions and aliases of one named artifact, e.g. adapter `support-bot`."""

    def __init__(self, store: ObjectStore, collection: str, name: str):
        self.store = store
        self.collection = check_name(collection, "collection")
        self.name = check_name(name, f"{collection} name")
        self.prefix = f"{collection}/{name}"
        self.audit = AuditLog(store)

    def __repr__(self) -> str:
        return f"VersionedArtifact({self.store.uri!r}, {self.prefix!r})"

    @property
    def resource_id(self) -> str:
        """The Prefect-event resource id, e.g. `slmops.adapter.support-bot`."""
        kind = _SINGULAR.get(self.collection, self.collection)
        return f"slmops.{kind}.{self.name}"

    def version_prefix(self, version: str) -> str:
        return join_key(self.prefix, "versions", check_name(version, "version"))

    def _manifest_key(self, version: str) -> str:
        return join_key(self.version_prefix(version), MANIFEST)

    def _alias_key(self, alias: str) -> str:
        return join_key(self.prefix, "aliases", check_name(alias, "alias") + ".json")

    # -- writing ----------------------------------------------------------------------------
    def publish(
        self,
        manifest: Manifest,
        source: Path | str | Mapping[str, bytes],
        *,
        version: str | None = None,
        on_file: Callable[[FileEntry], None] | None = None,
        lookup: Mapping[str, str] | None = None,
    ) -> Manifest:
        """Upload a version's files (a folder, or {relative path: bytes}), then its manifest.

        Returns the manifest as stored, with `version` and `files` filled in. Until the
        manifest is written the version does not exist for readers; if anything fails
        before that, whatever was uploaded stays an invisible orphan.

        `lookup` ({kind: key}, e.g. {"training-key": "ab12..."}) writes a small pointer per
        entry after the manifest, so `find(kind, key)` answers with one read however many
        versions there are. The first version published under a key keeps it.
        """
        version = check_name(version or new_version_id(), "version")
        if self.store.exists(self._manifest_key(version)):
            raise ObjectExistsError(
                f"{self.prefix} version {version} already exists; versions are immutable"
            )
        base = self.version_prefix(version)
        entries: list[FileEntry] = []
        if isinstance(source, Mapping):
            items = sorted(source.items())
            for rel, data in items:
                self._check_rel(rel)
                info = self.store.put_bytes(join_key(base, rel), data)
                entries.append(
                    FileEntry(path=rel, sha256=info.sha256 or sha256_bytes(data), size=info.size)
                )
                if on_file:
                    on_file(entries[-1])
        else:
            root = Path(source)
            if not root.is_dir():
                raise StoreError(f"cannot publish {self.prefix}: {root} is not a directory")
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                rel = path.relative_to(root).as_posix()
                self._check_rel(rel)
                info = self.store.put_file(join_key(base, rel), path)
                assert info.sha256 is not None
                entries.append(FileEntry(path=rel, sha256=info.sha256, size=info.size))
                if on_file:
                    on_file(entries[-1])
        stored = manifest.model_copy(
            update={"version": version, "name": self.name, "files": entries}
        )
        self.store.put_json(join_key(base, MANIFEST), stored.model_dump(mode="json"))
        for kind, key in (lookup or {}).items():
            with contextlib.suppress(ObjectExistsError):  # an equal version was published first
                self.store.put_json(self._lookup_key(kind, key) + ".json", {"version": version})
        return stored

    def _lookup_key(self, kind: str, key: str) -> str:
        return join_key(
            self.prefix, "lookup", check_name(kind, "lookup kind"), check_name(key, "lookup key")
        )

    def find(self, kind: str, key: str) -> Manifest | None:
        """The version published with lookup `{kind: key}`, or None: one read, no scan."""
        try:
            pointer = self.store.get_json(self._lookup_key(kind, key) + ".json")
        except ObjectNotFoundError:
            return None
        try:
            return self.manifest(str(pointer["version"]))
        except ObjectNotFoundError:
            return None  # pointer to a version that was removed by hand: treat as unknown

    @staticmethod
    def _check_rel(rel: str) -> None:
        if rel == MANIFEST:
            raise StoreError(
                f"a version's own file may not be named {MANIFEST!r}: it is reserved "
                "for the manifest slmops writes last"
            )

    # -- reading ----------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Complete versions (those with a manifest), oldest first. Orphans are left out.

        One listing of the versions' objects (paginated), not one request per version."""
        base = join_key(self.prefix, "versions") + "/"
        found = []
        for info in self.store.list_objects(base):
            version, _, rest = info.key[len(base) :].partition("/")
            if rest == MANIFEST and _NAME_RE.match(version):
                found.append(version)
        return sorted(found)

    def manifest(self, version: str) -> Manifest:
        """The manifest of a complete version; ObjectNotFoundError if there is none."""
        key = self._manifest_key(version)
        try:
            data = self.store.get_json(key)
        except ObjectNotFoundError:
            raise ObjectNotFoundError(
                f"{self.prefix} has no complete version {version!r} in {self.store.uri} "
                f"(known: {', '.join(self.versions()[-5:]) or 'none'})"
            ) from None
        try:
            return Manifest.model_validate(data)
        except ValidationError as exc:
            raise StoreError(
                f"manifest {key!r} in {self.store.uri} is not a valid slmops manifest: {exc}"
            ) from exc

    def read_file(self, version: str, path: str) -> bytes:
        """One file of a version, checked against the manifest's hash."""
        entry = self._entry(version, path)
        return self.store.get_bytes(
            join_key(self.version_prefix(version), path), sha256=entry.sha256
        )

    def _entry(self, version: str, path: str) -> FileEntry:
        manifest = self.manifest(version)
        try:
            return manifest.file(path)
        except KeyError as exc:
            raise ObjectNotFoundError(str(exc.args[0])) from None

    def download(self, version: str, dest: Path | str) -> Manifest:
        """Download a version's files into `dest`, each checked against the manifest."""
        manifest = self.manifest(version)
        base = self.version_prefix(version)
        dest = Path(dest)
        for entry in manifest.files:
            self.store.get_file(join_key(base, entry.path), dest / entry.path, sha256=entry.sha256)
        return manifest

    def verify(self, version: str, *, deep: bool = True) -> VerifyReport:
        """Check every file the manifest lists: present, right size, and (deep) right sha256."""
        report = VerifyReport(version)
        try:
            manifest = self.manifest(version)
        except StoreError as exc:
            report.problems.append(str(exc))
            return report
        base = self.version_prefix(version)
        stored = {info.key: info for info in self.store.list_objects(base + "/")}
        for entry in manifest.files:
            key = join_key(base, entry.path)
            report.files += 1
            report.bytes += entry.size
            info = stored.get(key)
            if info is None:
                report.problems.append(f"{key}: missing")
            elif info.size != entry.size:
                report.problems.append(f"{key}: {info.size} bytes, manifest says {entry.size}")
            elif deep:
                try:
                    self.store.get_bytes(key, sha256=entry.sha256)
                except IntegrityError as exc:
                    report.problems.append(f"{key}: {exc}")
        return report

    # -- aliases ----------------------------------------------------------------------------
    def aliases(self) -> list[str]:
        keys = self.store.list_objects(join_key(self.prefix, "aliases") + "/")
        return [
            k.key.rsplit("/", 1)[-1].removesuffix(".json") for k in keys if k.key.endswith(".json")
        ]

    def _read_alias(self, alias: str) -> tuple[Alias | None, str | None]:
        key = self._alias_key(alias)
        try:
            data, etag = self.store.read_versioned(key)
        except ObjectNotFoundError:
            return None, None
        try:
            return Alias.model_validate(json.loads(data)), etag
        except (ValueError, ValidationError) as exc:
            raise StoreError(f"alias object {key!r} in {self.store.uri} is corrupt: {exc}") from exc

    def get_alias(self, alias: str) -> Alias | None:
        return self._read_alias(alias)[0]

    def version_of(self, ref: str) -> str:
        """The version id `ref` names: an alias (its version) or a version id (checked to be
        complete); ObjectNotFoundError naming the known versions otherwise."""
        record = self.get_alias(ref)
        if record is not None:
            return record.version
        try:
            return self.manifest(ref).version
        except ObjectNotFoundError:
            raise ObjectNotFoundError(
                f"{self.prefix} has no alias or complete version {ref!r} in {self.store.uri} "
                f"(aliases: {', '.join(self.aliases()) or 'none'}; newest versions: "
                f"{', '.join(self.versions()[-5:]) or 'none'})"
            ) from None

    def resolve(self, alias: str) -> Manifest:
        """The manifest of the version an alias points at."""
        record = self.get_alias(alias)
        if record is None:
            raise ObjectNotFoundError(
                f"{self.prefix} has no alias {alias!r} in {self.store.uri} "
                f"(aliases: {', '.join(self.aliases()) or 'none'})"
            )
        try:
            return self.manifest(record.version)
        except ObjectNotFoundError:
            raise StoreError(
                f"alias {alias!r} of {self.prefix} points at version {record.version}, which is "
                f"missing or incomplete in {self.store.uri}. Roll the alias back "
                f"(slmops alias rollback {self.collection} {self.name} {alias}) or set it to a "
                "complete version"
            ) from None

    def _check_complete(self, version: str) -> None:
        report = self.verify(version, deep=False)
        if not report.ok:
            raise StoreError(
                f"refusing to point an alias at {self.prefix} version {version}: "
                + "; ".join(report.problems)
            )

    def set_alias(
        self,
        alias: str,
        version: str,
        *,
        expect: str | _Unset | None = _UNSET,
        reason: str | None = None,
        trigger: Trigger | None = None,
    ) -> Alias:
        """Point `alias` at a complete `version`, keeping the old target in its history.

        `expect` makes the flip conditional on where the alias points now (a version, or None
        for 'must not exist yet'); left out, the alias is read now and swapped only if
        nobody changes it meanwhile. Either way a concurrent writer yields ConflictError.
        """
        self._check_complete(version)
        current, etag = self._read_alias(alias)
        if not isinstance(expect, _Unset):
            now_at = current.version if current else None
            if now_at != expect:
                raise ConflictError(
                    f"alias {alias!r} of {self.prefix} points at {now_at or 'nothing'}, not "
                    f"{expect or 'nothing'} as expected: another writer moved it; re-check "
                    "and retry"
                )
        history = [*current.history, current.target] if current else []
        return self._move(
            "alias.set", alias, version, history, etag, current, reason=reason, trigger=trigger
        )

    def rollback(
        self, alias: str, *, reason: str | None = None, trigger: Trigger | None = None
    ) -> Alias:
        """Point `alias` back at the version it pointed at before the last change."""
        current, etag = self._read_alias(alias)
        if current is None:
            raise ObjectNotFoundError(f"{self.prefix} has no alias {alias!r} to roll back")
        if not current.history:
            raise StoreError(
                f"alias {alias!r} of {self.prefix} has no earlier version to roll back to "
                f"(it has only ever pointed at {current.version})"
            )
        back = current.history[-1]
        self._check_complete(back.version)
        return self._move(
            "alias.rollback",
            alias,
            back.version,
            current.history[:-1],
            etag,
            current,
            reason=reason,
            trigger=trigger,
            default_reason="rollback",
        )

    def _move(
        self,
        event: str,
        alias: str,
        version: str,
        history: list[AliasTarget],
        etag: str | None,
        current: Alias | None,
        *,
        reason: str | None,
        trigger: Trigger | None,
        default_reason: str | None = None,
    ) -> Alias:
        """Swap the alias record (conditional on `etag`), then audit the move."""
        trigger = trigger or Trigger()
        target = AliasTarget(
            version=version,
            set_at=datetime.now(UTC),
            by=trigger.by or trigger.type,
            reason=reason or default_reason,
        )
        record = Alias(alias=alias, target=target, history=history[-ALIAS_HISTORY_LIMIT:])
        self._swap(alias, record, etag)
        self.audit.record(
            event,
            self.resource_id,
            trigger=trigger,
            alias=alias,
            version=version,
            previous=current.version if current else None,
            reason=reason,
        )
        return record

    def _swap(self, alias: str, record: Alias, etag: str | None) -> None:
        data = (record.model_dump_json(indent=2) + "\n").encode()
        self.store.compare_and_swap(self._alias_key(alias), data, etag)


def artifacts(store: ObjectStore, collection: str) -> list[VersionedArtifact]:
    """Every named artifact in a collection (e.g. all adapters)."""
    names = [d.rstrip("/").rsplit("/", 1)[-1] for d in store.list_dirs(collection)]
    return [VersionedArtifact(store, collection, n) for n in names if _NAME_RE.match(n)]


@dataclass
class ArtifactSummary:
    collection: str
    name: str
    versions: int
    newest: str | None
    aliases: dict[str, str]
    orphans: int


def summarize(store: ObjectStore) -> list[ArtifactSummary]:
    """One line per artifact in the store: versions, newest, aliases, orphaned writes."""
    rows = []
    for collection in COLLECTIONS:
        for art in artifacts(store, collection):
            complete = art.versions()
            started = store.list_dirs(join_key(art.prefix, "versions"))
            aliases = {}
            for alias in art.aliases():
                record = art.get_alias(alias)
                if record is not None:
                    aliases[alias] = record.version
            rows.append(
                ArtifactSummary(
                    collection,
                    art.name,
                    len(complete),
                    complete[-1] if complete else None,
                    aliases,
                    len(started) - len(complete),
                )
            )
    return rows
