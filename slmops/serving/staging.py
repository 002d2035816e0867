"""An adapter version staged for the replicas: its served files copied from the store to the
folder the replicas load from, each checked against the manifest's sha256, under a
content-addressed serving name (`support-bot@<sha of its weights>`) that means one set of
weights forever; and what vLLM would refuse checked before any replica is asked."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.errors import (
    PromotionError,
    StoreError,
)
from slmops.store.artifacts import ADAPTER_FILES
from slmops.store.base import ObjectStore
from slmops.store.hashing import sha256_bytes, sha256_file
from slmops.store.manifest import Manifest
from slmops.store.versions import ADAPTERS, VersionedArtifact


@dataclass
class Staged:
    """An adapter version copied to the shared folder the replicas load from."""

    version: str
    manifest: Manifest
    name: str
    path: Path
    rank: int
    # The gate's answers for this version that passed on the format suite (case id -> answer):
    # the smoke test's golden prompts. None: the verdict was stored without its answers.
    gated: dict[str, str] | None = None


def serving_name(adapter: str, manifest: Manifest) -> str:
    """`<adapter>@<10 hex>`: a hash of the served files' hashes, so a name means one set of
    weights forever (two versions with identical weights share it)."""
    hashes = []
    for path in ADAPTER_FILES:
        try:
            hashes.append(f"{path}:{manifest.file(path).sha256}")
        except KeyError:
            raise PromotionError(
                f"adapter {adapter} version {manifest.version} has no {path} in the store: it "
                "cannot be served (a PEFT adapter folder holds adapter_config.json and "
                "adapter_model.safetensors)"
            ) from None
    return f"{adapter}@{sha256_bytes(chr(10).join(hashes).encode())[:10]}"


def stage(store: ObjectStore, adapter: str, version: str, adapter_dir: str | Path) -> Staged:
    """Copy the served files of `adapter@version` to `<adapter_dir>/<serving name>/`, each
    checked against the manifest's sha256 (an existing copy is re-checked, and replaced whole
    if it differs), then check what vLLM would refuse."""
    art = VersionedArtifact(store, ADAPTERS, adapter)
    manifest = art.manifest(version)
    name = serving_name(adapter, manifest)
    root = Path(adapter_dir).expanduser().resolve()
    dest = root / name
    expected = {p: manifest.file(p).sha256 for p in ADAPTER_FILES}
    if not (dest.is_dir() and all(_same(dest / p, h) for p, h in expected.items())):
        tmp = root / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for rel in ADAPTER_FILES:
                store.get_file(
                    f"{art.version_prefix(version)}/{rel}", tmp / rel, sha256=expected[rel]
                )
        except StoreError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PromotionError(
                f"cannot copy {adapter}@{version} from {store.uri}: {exc}"
            ) from exc
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    rank = _check_servable(dest, f"{adapter}@{version}")
    return Staged(version=version, manifest=manifest, name=name, path=dest, rank=rank)


def _same(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def _check_servable(folder: Path, what: str) -> int:
    from safetensors import safe_open

    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("modules_to_save"):
        raise PromotionError(
            f"{what} trains modules_to_save {config['modules_to_save']}: vLLM cannot load those; "
            "retrain without modules_to_save"
        )
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as fh:
        whole = [k for k in fh.keys() if "lm_head" in k or "embed_tokens" in k]  # noqa: SIM118
    if whole:
        raise PromotionError(
            f"{what} carries full {whole[0].split('.')[-2]} weights ({len(whole)} tensors): vLLM "
            "serves LoRA matrices only; retrain with target_modules that exclude lm_head"
        )
    return lora_rank(config, what)


def lora_rank(config: dict[str, Any], what: str) -> int:
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise PromotionError(f"{what}: adapter_config.json has no valid rank 'r' ({rank!r})")
    return rank
