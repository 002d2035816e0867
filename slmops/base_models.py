"""Base-model sources and their revisions, and the watcher's record of what it has seen.

A source is one of:
  hf://org/name[@branch]   a Hugging Face Hub repo; revision = the commit sha (huggingface_hub;
                           with HF_HUB_OFFLINE=1, read from the local HF cache)
  s3://bucket/prefix       a save_pretrained folder in S3; revision = hash of its object list
  /path/or/relative        a local save_pretrained folder; revision = hash of its files
  gguf://path.gguf         a GGUF file, or gguf-package://name, a package that assembles one;
                           revision = the GGUF's sha256; converted once into a folder
                           (slmops.gguf_models)
A revision is a stable id: the same files give the same revision on every machine.

A revision's weights digest (`weights_digest`) hashes only what decides an adapter's weights
and how it is served: weights, config, tokenizer and chat template, not the model card or the
licence. Two revisions with one digest are the same model to train and to serve on: a
README-only release trains nothing and moves no replica.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from slmops import gguf_models
from slmops.errors import ConfigError, ConflictError, ObjectNotFoundError
from slmops.store import ObjectStore, open_store, parse_store_uri
from slmops.store.hashing import folder_sha256, sha256_file
from slmops.store.versions import MODELS, check_name

RELEASE_EVENT = "slmops.base-model.released"
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".gguf")


class WatchedModel(BaseModel):
    """A base model to follow: the name vLLM serves it under, and where releases appear."""

    name: str = Field(description="Model id as served (vLLM --served-model-name), e.g. tiny-llama.")
    source: str = Field(description="hf://org/name[@branch], s3://bucket/prefix, or a folder.")


class Revision(BaseModel):
    model: str
    revision: str
    source: str
    weights: str | None = Field(
        None, description="weights_digest of the revision's files (set once it is checked out)."
    )


# Files that describe a model and do not change what it computes.
_DOC_PREFIXES = ("readme", "license", "licence", "notice", "changelog", "use_policy", "model_card")
_DOC_SUFFIXES = (".md", ".html", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf")


def _is_doc(relative: Path) -> bool:
    name = relative.name.lower()
    return (
        name.startswith(_DOC_PREFIXES)
        or relative.suffix.lower() in _DOC_SUFFIXES
        or any(part.startswith(".") for part in relative.parts)
    )


def weights_digest(folder: Path) -> str:
    """Hash of the files of a model folder that decide what it computes (everything but the
    model card, licence, images and hidden files). A file the Hugging Face cache links to a
    blob is taken by the blob's name, a hash of its content (sha256 for LFS files, git's
    blob id for small ones): no 16 GB re-read. So two snapshots of one repo compare by
    content; a plain copy of one may hash differently, and then counts as other weights
    (it retrains: never the reverse)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = file.relative_to(folder)
        if _is_doc(relative):
            continue
        target = file.resolve()
        content = (
            target.name
            if file.is_symlink() and target.parent.name == "blobs"
            else sha256_file(file)
        )
        digest.update(f"{relative.as_posix()}\0{content}\n".encode())
    return digest.hexdigest()[:40]


def resource_id(model: str) -> str:
    return f"slmops.model.{model}"


def event_id(model: str, revision: str) -> uuid.UUID:
    """The same (model, revision) always gives the same event id: the server keeps one."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"slmops:{RELEASE_EVENT}:{model}:{revision}")


def _folder_revision(path: Path) -> str:
    files = [p for p in path.rglob("*") if p.is_file()]
    if not any(p.suffix in _WEIGHT_FILES for p in files) or not (path / "config.json").exists():
        raise ConfigError(
            f"{path} is not a model folder (needs config.json and weights, as "
            "written by save_pretrained)"
        )
    return folder_sha256(path)[:40]


def _hf_repo(source: str) -> tuple[str, str]:
    repo, _, branch = source.removeprefix("hf://").partition("@")
    if repo.count("/") != 1:
        raise ConfigError(f"model source {source!r}: write hf://org/name or hf://org/name@branch")
    return repo, branch or "main"


def current_revision(model: WatchedModel) -> Revision:
    """The revision a source offers now. Raises ConfigError if the source does not exist."""
    check_name(model.name, "model name")
    source = model.source
    if gguf_models.is_gguf_source(source):
        return Revision(model=model.name, revision=gguf_models.gguf_revision(source), source=source)
    if source.startswith("hf://"):
        repo, branch = _hf_repo(source)
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            path = hf_snapshot(source, branch)
            return Revision(model=model.name, revision=path.name, source=source)
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            sha = HfApi().model_info(repo, revision=branch).sha
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise ConfigError(f"model {repo}@{branch} not found on the Hub: {exc}") from exc
        return Revision(model=model.name, revision=str(sha), source=source)
    parsed = parse_store_uri(source)
    if parsed.scheme == "s3":
        store = open_store(source)
        listing = sorted((i.key, i.size, i.etag or "") for i in store.list_objects(""))
        if not any(k.endswith("config.json") for k, _, _ in listing):
            raise ConfigError(f"model source {source!r} holds no config.json: not a model")
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:40]
        return Revision(model=model.name, revision=digest, source=source)
    assert parsed.path is not None
    if not parsed.path.is_dir():
        raise ConfigError(f"model source {source!r} does not exist or is not a folder")
    return Revision(model=model.name, revision=_folder_revision(parsed.path), source=source)


def hf_snapshot(source: str, revision: str) -> Path:
    """The local snapshot folder of a Hub repo at a revision (downloaded if online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, _ = _hf_repo(source)
    try:
        return Path(
            snapshot_download(
                repo, revision=revision, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1"
            )
        )
    except LocalEntryNotFoundError as exc:
        raise ConfigError(
            f"{repo}@{revision} is not in the local Hugging Face cache and "
            "HF_HUB_OFFLINE=1 forbids downloading it"
        ) from exc


def materialize(source: str, revision: str, cache_dir: Path, *, superseded_ok: bool = True) -> Path:
    """A local folder holding the model at exactly `revision`.

    Folder and S3 sources hold only their current revision, so each revision used is kept in
    `cache_dir` (the champion's base stays usable for the gate and for rollback after a newer
    release replaced it at the source). A revision neither cached nor current is refused."""
    if source.startswith("hf://"):
        return hf_snapshot(source, revision)
    if gguf_models.is_gguf_source(source):
        return gguf_models.converted_folder(
            source,
            cache_dir,
            revision,
            finish=lambda folder: (folder / WEIGHTS_SIDECAR).write_text(weights_digest(folder)),
        )
    target = cache_dir / "models" / hashlib.sha256(source.encode()).hexdigest()[:12] / revision
    if (target / "config.json").exists():
        return target
    now = current_revision(WatchedModel(name="check", source=source))
    if now.revision != revision:
        raise ConfigError(
            f"model source {source!r} is now at revision {now.revision[:12]}, not the "
            f"requested {revision[:12]}"
            + (f", and no copy of that revision is cached in {cache_dir}" if superseded_ok else "")
            + ": a newer release superseded it (its own event trains it), or the folder was "
            "changed in place"
        )
    if (target / "config.json").exists():
        return target
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    parsed = parse_store_uri(source)
    if parsed.scheme == "file":
        assert parsed.path is not None
        shutil.copytree(parsed.path, partial)
        if folder_sha256(partial)[:40] != revision:  # changed while being copied
            shutil.rmtree(partial, ignore_errors=True)
            raise ConfigError(f"model folder {source!r} changed while it was being copied")
    else:
        open_store(source).get_dir("", partial)
    (partial / WEIGHTS_SIDECAR).write_text(weights_digest(partial))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(target)
    except OSError:  # another process cached it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def checkout(
    model: str,
    source: str,
    revision: str | None,
    cache_dir: Path,
    *,
    superseded_ok: bool = True,
) -> tuple[Revision, Path]:
    """The base model at `revision` (None: the source's current one) as a local folder."""
    rev = current_revision(WatchedModel(name=model, source=source))
    if revision:
        rev = rev.model_copy(update={"revision": revision})
    path = materialize(source, rev.revision, cache_dir, superseded_ok=superseded_ok)
    return rev.model_copy(update={"weights": snapshot_weights(path)}), path


WEIGHTS_SIDECAR = ".slmops-weights-sha256"  # hidden: no hash of the folder counts it


def snapshot_weights(path: Path) -> str:
    """weights_digest of a folder `materialize` returned: read from the note it keeps beside a
    cached copy (written once: a revision's files never change), else computed."""
    note = path / WEIGHTS_SIDECAR
    if note.is_file():
        return note.read_text().strip()
    return weights_digest(path)


class SeenRevisions(BaseModel):
    """What the watcher has seen of one model: `models/<name>/revisions.json`."""

    model: str
    revisions: list[dict[str, str]] = Field(default_factory=list)

    def has(self, revision: str) -> bool:
        return any(r["revision"] == revision for r in self.revisions)


def _seen_key(model: str) -> str:
    return f"{MODELS}/{check_name(model, 'model name')}/revisions.json"


def seen_revisions(store: ObjectStore, model: str) -> tuple[SeenRevisions, str | None]:
    try:
        data, etag = store.read_versioned(_seen_key(model))
    except ObjectNotFoundError:
        return SeenRevisions(model=model), None
    return SeenRevisions.model_validate_json(data), etag


def record_revision(
    store: ObjectStore, rev: Revision, etag: str | None, seen: SeenRevisions
) -> bool:
    """Add `rev` to the seen list with compare-and-swap; False if another watcher did first."""
    if seen.has(rev.revision):
        return False
    updated = seen.model_copy(deep=True)
    updated.revisions.append(
        {"revision": rev.revision, "source": rev.source, "seen_at": datetime.now(UTC).isoformat()}
    )
    try:
        store.compare_and_swap(
            _seen_key(rev.model), updated.model_dump_json(indent=1).encode(), etag
        )
    except ConflictError:
        return False
    return True
