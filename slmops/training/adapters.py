"""Adapters in the store: idempotent lookup, resumable checkpoints, publishing with lineage.

An adapter version is the folder vLLM and peft load (adapter_config.json,
adapter_model.safetensors) plus `training/` (loss curve PNG, log) and the manifest. Its
identity for idempotency is a key over the base model and its weights digest (not its revision
id: a model-card-only release is the same base), the rows' content, and the training config's
weight-changing fields: the same key twice trains once.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slmops.errors import ConfigError
from slmops.store.base import ObjectStore
from slmops.store.claims import Claim, ClaimRecord, wait_for_claim
from slmops.store.hashing import sha256_bytes
from slmops.store.manifest import InputRef, Manifest, Trigger
from slmops.store.versions import ADAPTERS, CHAMPION, LATEST, VersionedArtifact
from slmops.training.trainer import TrainConfig, TrainResult


def training_key(
    model: str,
    weights: str,
    dataset: str,
    rows_sha256: str,
    config: TrainConfig,
    warm_start: str | None = None,
) -> str:
    """What an adapter is a function of: the base model's weights (`models.weights_digest`:
    by content, so a release that changes only the model card finds the adapter trained
    before it), the rows it trains on (by content, so two runs that stored the same data as
    two dataset versions agree), the config fields that change the weights
    (`TrainConfig.weight_fields`; not threads, prices), and, for a warm start, the adapter
    version it starts from and its steps."""
    basis: dict[str, object] = {
        "model": model,
        "weights": weights,
        "dataset": dataset,
        "rows_sha256": rows_sha256,
        "config": config.key_fields(),
    }
    if warm_start is not None:
        # The warmup follows from the fields above, but keys made before warm starts warmed up
        # (TrainConfig.warm_start_config) must not find adapters trained without one.
        basis["warm_start"] = {
            "from": warm_start,
            "steps": config.warm_start_steps,
            "warmup": config.warm_start_config().warmup_steps,
        }
    return sha256_bytes(json.dumps(basis, sort_keys=True).encode())[:24]


def warm_start_from(
    store: ObjectStore,
    adapter: str,
    model: str,
    revision: str,
    config: TrainConfig,
    weights: str | None = None,
) -> tuple[Manifest | None, str]:
    """The champion version a run on `model@revision` starts from (None: from scratch), and
    why, in words for the run's log.

    Only across a release that changed the weights: a champion on this same revision, or on
    a revision with the same `weights` digest (a model-card-only release), is what a run with
    unchanged data and config finds by its key, and one with new data trains from scratch."""
    if config.warm_start_steps is None:
        return None, "from scratch (warm_start_steps is not set)"
    art = VersionedArtifact(store, ADAPTERS, adapter)

    alias = art.get_alias(CHAMPION)
    if alias is None:
        return None, f"from scratch: {adapter} has no champion yet"
    champion = art.manifest(alias.version)
    base = next((i for i in champion.inputs if i.kind == "base-model"), None)
    if base is None or base.name != model:
        return None, f"from scratch: the champion {alias.version} is not trained on {model}"
    if base.version == revision:
        return None, f"from scratch: the champion {alias.version} is on this revision already"
    if weights is not None and base.sha256 == weights:
        return None, (
            f"from scratch: the champion {alias.version} was trained on the same weights "
            f"({model}@{(base.version or '')[:12]} differs from {revision[:12]} in its model "
            "card or licence only), so its training key is this run's"
        )
    # The shape the weights must have. Target modules are stored as peft resolved them:
    # compared here when the recipe names them; for "all-linear", loading the weights
    # checks that every one lands (and fails the run, naming the setting, if not).
    ours: dict[str, object] = {"rank": config.rank, "alpha": config.alpha}
    theirs = {k: champion.config.get(k) for k in ours}
    if config.target_modules != "all-linear":
        ours["target_modules"] = sorted(m.strip() for m in config.target_modules.split(","))
        theirs["target_modules"] = sorted(champion.config.get("target_modules") or [])
    if theirs != ours:
        return None, (
            f"from scratch: the champion {alias.version} is an adapter of another shape "
            f"({theirs}; this recipe: {ours})"
        )
    return champion, (
        f"warm start from the champion {alias.version} (trained on {model}@"
        f"{(base.version or '')[:12]}): {config.warm_start_steps} steps instead of "
        f"{config.max_steps}"
    )


def rows_sha256(dataset: Manifest) -> str:
    """Content hash of a dataset version's rows: its train and eval files, as stored."""
    return sha256_bytes(
        "".join(
            f"{f.path}:{f.sha256}\n"
            for f in sorted(dataset.files, key=lambda f: f.path)
            if f.path.endswith(".jsonl")
        ).encode()
    )


TRAINING_KEY = "training-key"  # lookup kind: training key -> adapter version
CLAIM_TTL_S = 600.0  # a claim not renewed for this long is taken over (its run has died)


def find_trained(store: ObjectStore, adapter: str, key: str) -> Manifest | None:
    """The adapter version already trained for `key`, if any (one read, however many exist)."""
    return VersionedArtifact(store, ADAPTERS, adapter).find(TRAINING_KEY, key)


def check_adapter_base(store: ObjectStore, adapter: str, model: str) -> None:
    """Refuse to train `adapter` on `model` if its versions were trained on another base model.

    An adapter serves one base model; a release of another model must train its own adapter
    (one refine-tune deployment per model -> adapter pair)."""
    art = VersionedArtifact(store, ADAPTERS, adapter)
    latest = art.get_alias(LATEST)
    if latest is None:
        return
    base = next((i for i in art.manifest(latest.version).inputs if i.kind == "base-model"), None)
    if base is not None and base.name != model:
        raise ConfigError(
            f"adapter {adapter!r} is trained on base model {base.name!r}, not {model!r}: an "
            "adapter does not transfer between base models. Give this model its own adapter "
            "name (one refine-tune deployment per model -> adapter pair in prefect.yaml)"
        )


def claim_training(
    store: ObjectStore,
    adapter: str,
    key: str,
    *,
    ttl: float = CLAIM_TTL_S,
    poll: float = 5.0,
    timeout: float | None = None,
    on_wait: Callable[[ClaimRecord], None] | None = None,
) -> tuple[Claim | None, Manifest | None]:
    """Claim the right to train `key`, so that of runs racing on it exactly one trains.

    Returns (claim, None): train, then publish while holding it; or (None, manifest): the
    adapter was trained meanwhile by the run that held the claim. Waits while another live run
    holds it; a claim its holder stopped renewing (crashed) is taken over after `ttl`."""
    claim, found = wait_for_claim(
        store,
        f"{ADAPTERS}/{adapter}/claims/{key}.json",
        f"training of adapter {adapter} key {key}",
        ttl=ttl,
        done=lambda: find_trained(store, adapter, key),
        poll=poll,
        timeout=timeout,
        on_wait=on_wait,
    )
    return claim, found if isinstance(found, Manifest) else None


def _checkpoint_prefix(adapter: str, key: str) -> str:
    return f"{ADAPTERS}/{adapter}/work/{key}"


def save_checkpoint(store: ObjectStore, adapter: str, key: str, folder: Path) -> None:
    """Copy a trainer checkpoint folder to the store (scratch area; replaced if re-saved)."""
    store.put_dir(f"{_checkpoint_prefix(adapter, key)}/{folder.name}", folder, overwrite=True)
    # Marks the checkpoint complete: a crash mid-upload leaves one without it, never used.
    store.put_bytes(f"{_checkpoint_prefix(adapter, key)}/{folder.name}.done", b"", overwrite=True)


def latest_checkpoint(store: ObjectStore, adapter: str, key: str, dest: Path) -> Path | None:
    """Download the newest complete checkpoint of a run, to resume from it."""
    prefix = _checkpoint_prefix(adapter, key)
    done = [i.key for i in store.list_objects(prefix + "/") if i.key.endswith(".done")]
    if not done:
        return None
    newest = max(done, key=lambda k: int(k.rsplit("-", 1)[-1].removesuffix(".done")))
    name = newest.rsplit("/", 1)[-1].removesuffix(".done")
    target = dest / name
    shutil.rmtree(target, ignore_errors=True)
    store.get_dir(f"{prefix}/{name}", target)
    return target


def clear_checkpoints(store: ObjectStore, adapter: str, key: str) -> None:
    for info in list(store.list_objects(_checkpoint_prefix(adapter, key) + "/")):
        store.delete(info.key)


def loss_plot(curve: list[tuple[int, float]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if curve:
        steps, losses = zip(*curve, strict=True)
        ax.plot(steps, losses, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Lineage:
    """What an adapter version was trained from, recorded as its manifest's inputs: the base
    model at one revision (its weights digest: the same weights make the same adapter), the
    dataset version and its content hash, the recipe and the training key over all of it,
    and the version of this adapter a warm start began from."""

    key: str
    base_model: str
    base_revision: str
    base_source: str
    dataset: str
    dataset_version: str
    dataset_sha: str
    config: TrainConfig
    base_weights: str | None = None
    warm_start: str | None = None


def publish_adapter(
    store: ObjectStore,
    adapter: str,
    adapter_dir: Path,
    result: TrainResult,
    lineage: Lineage,
    *,
    metrics: dict[str, float] | None = None,
    trigger: Trigger | None = None,
    claim: Claim | None = None,
) -> Manifest:
    """Store the adapter folder with its training report and its lineage; move alias
    `latest` to it.

    With the run's training `claim`, refuses to publish if another run took the claim over."""
    key, config, warm_start = lineage.key, lineage.config, lineage.warm_start
    base_model, base_revision = lineage.base_model, lineage.base_revision
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    training = adapter_dir / "training"
    loss_plot(
        result.loss_curve, training / "loss.png", f"{adapter} on {base_model}@{base_revision[:12]}"
    )
    (training / "result.json").write_text(result.model_dump_json(indent=1))
    manifest = Manifest(
        kind="adapter",
        name=adapter,
        inputs=[
            InputRef(
                kind="base-model",
                name=base_model,
                version=base_revision,
                sha256=lineage.base_weights,  # models.weights_digest: same weights, same adapter
                uri=lineage.base_source,
            ),
            InputRef(
                kind="dataset",
                name=lineage.dataset,
                version=lineage.dataset_version,
                sha256=lineage.dataset_sha,
            ),
            *([InputRef(kind="adapter", name=adapter, version=warm_start)] if warm_start else []),
        ],
        config={
            **config.model_dump(),
            "training_key": key,
            "rank": adapter_config["r"],
            "target_modules": adapter_config.get("target_modules"),
            "served_base_model": adapter_config["base_model_name_or_path"],
        },
        metrics={
            "final_loss": result.final_loss,
            "eval_loss": result.eval_loss,
            "tokens_seen": result.tokens_seen,
            "steps": result.steps,
            "tokens_per_second": round(result.tokens_per_second, 1),
            "loss_curve": result.loss_curve,
            **(metrics or {}),
        },
        timings={"train": result.train_seconds},
        resources={
            "method": result.method,
            "device": result.device,
            "cpu_seconds": round(result.cpu_seconds, 2),
            "gpu_seconds": round(result.gpu_seconds, 2),
            "peak_rss_mb": round(result.peak_rss_mb, 1),
            "peak_gpu_mb": result.peak_gpu_mb,
            "estimated_cost_usd": result.estimated_cost_usd,
            "resumed_from_step": result.resumed_from_step,
            "threads": result.threads,
            "threads_source": result.threads_source,
            "padding_free": result.padding_free,
            "memory_plan": (
                result.memory_plan.model_dump(mode="json") if result.memory_plan else None
            ),
        },
        trigger=trigger or Trigger(),
    )
    art = VersionedArtifact(store, ADAPTERS, adapter)
    if claim is not None:
        claim.check()
    stored = art.publish(manifest, adapter_dir, lookup={TRAINING_KEY: key})
    art.set_alias(
        LATEST,
        stored.version,
        reason=f"trained on {base_model}@{base_revision[:12]}",
        trigger=trigger,
    )
    clear_checkpoints(store, adapter, key)
    return stored
