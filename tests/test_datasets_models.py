"""Training data validation and versioning; base-model sources, revisions and the watcher record."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from slmops.base_models import (
    WEIGHTS_SIDECAR,
    Revision,
    WatchedModel,
    checkout,
    current_revision,
    event_id,
    materialize,
    record_revision,
    seen_revisions,
    weights_digest,
)
from slmops.errors import ConfigError
from slmops.store.base import ObjectStore
from slmops.store.hashing import folder_sha256, sha256_file
from slmops.store.versions import DATASETS, VersionedArtifact
from slmops.training.datasets import DatasetConfig, DatasetError, publish_dataset, read_rows

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-bot"


def words(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)


def chat(q: str, a: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    )


BAD_FILE = (
    "\n".join(
        [
            chat("How do I add a berth?", '{"answer": "Settings > Berths"}'),  # 1 ok
            "{not json",  # 2
            json.dumps({"messages": [{"role": "user", "content": "hi"}]}),  # 3 no answer
            json.dumps(
                {
                    "messages": [
                        {"role": "robot", "content": "x"},
                        {"role": "assistant", "content": "y"},
                    ]
                }
            ),  # 4 bad role
            chat("empty answer", "   "),  # 5 empty content
            chat("How do I add a berth?", '{"answer": "Settings > Berths"}'),  # 6 duplicate of 1
            json.dumps(
                {"prompt": "Reset 2FA?", "completion": '{"answer": "Ask an admin"}'}
            ),  # 7 ok
            json.dumps({"prompt": "long " * 300, "completion": "x"}),  # 8 too long
            json.dumps(["a", "list"]),  # 9 not an object
            json.dumps({"text": "plain"}),  # 10 unknown form
        ]
    )
    + "\n"
)


def test_every_bad_row_is_reported_by_line(store: ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(BAD_FILE)
    with pytest.raises(DatasetError) as err:
        publish_dataset(store, "support", path, DatasetConfig(max_tokens=100), words)
    message = str(err.value)
    for line, reason in [
        (2, "not JSON"),
        (3, "last message must be the assistant"),
        (4, "role 'robot'"),
        (5, "empty content"),
        (6, "duplicate of line 1"),
        (8, "over max_tokens 100"),
        (9, "not an object"),
        (10, "neither 'messages' nor 'prompt'"),
    ]:
        assert f"train.jsonl:{line}: " in message and reason in message, (line, message)
    assert "8 bad rows of 10" in message and "policy 'fail'" in message
    assert VersionedArtifact(store, DATASETS, "support").versions() == []


def test_drop_policy_keeps_good_rows_and_reports_the_rest(
    store: ObjectStore, tmp_path: Path
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(BAD_FILE)
    config = DatasetConfig(policy="drop", max_tokens=100, eval_fraction=0.0)
    manifest = publish_dataset(store, "support", path, config, words)
    assert manifest.metrics == {
        "rows": 10,
        "kept": 2,
        "dropped": 8,
        "train_rows": 2,
        "eval_rows": 0,
    }
    rows = read_rows(store, "support", manifest.version)
    assert rows[1] == [
        {"role": "user", "content": "Reset 2FA?"},
        {"role": "assistant", "content": '{"answer": "Ask an admin"}'},
    ]
    report = json.loads(
        VersionedArtifact(store, DATASETS, "support").read_file(manifest.version, "validation.json")
    )
    assert [p["line"] for p in report["problems"]] == [2, 3, 4, 5, 6, 8, 9, 10]


def test_dataset_versions_are_idempotent_and_the_split_is_stable(
    store: ObjectStore, tmp_path: Path
) -> None:
    first = publish_dataset(store, "support", EXAMPLE / "train.jsonl", DatasetConfig(), words)
    again = publish_dataset(store, "support", EXAMPLE / "train.jsonl", DatasetConfig(), words)
    assert again.version == first.version
    shuffled = tmp_path / "shuffled.jsonl"
    lines = (EXAMPLE / "train.jsonl").read_text().splitlines()
    shuffled.write_text("\n".join(reversed(lines)) + "\n")
    other = publish_dataset(store, "support", shuffled, DatasetConfig(), words)
    assert other.version != first.version  # different file, so a new version...
    held_out = {json.dumps(r) for r in read_rows(store, "support", first.version, "eval.jsonl")}
    assert held_out == {
        json.dumps(r) for r in read_rows(store, "support", other.version, "eval.jsonl")
    }  # ...same split
    assert 0 < len(held_out) < len(lines) / 4


def test_a_missing_dataset_is_a_clear_error(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        publish_dataset(store, "support", tmp_path / "nope.jsonl", DatasetConfig(), words)


def test_a_folder_revision_is_its_content(tiny_base: Path, tmp_path: Path) -> None:
    rev = current_revision(WatchedModel(name="tiny-llama", source=str(tiny_base)))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_base, copy)
    assert current_revision(WatchedModel(name="tiny-llama", source=str(copy))).revision == (
        rev.revision
    )
    (copy / "generation_config.json").write_text("{}")
    assert current_revision(WatchedModel(name="tiny-llama", source=str(copy))).revision != (
        rev.revision
    )
    with pytest.raises(ConfigError, match="not the requested"):
        materialize(str(copy), rev.revision, tmp_path / "cache")


def test_the_weights_digest_ignores_the_model_card_and_nothing_else(
    tiny_base: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_base, copy)
    digest = weights_digest(copy)
    assert digest == weights_digest(tiny_base)  # by content, wherever it lies
    (copy / "README.md").write_text("# tiny-llama\nRelease 2: a typo fixed in the card.\n")
    (copy / "LICENSE").write_text("Apache-2.0\n")
    (copy / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    # A new revision for the watcher, the same model to train and to serve on.
    assert current_revision(WatchedModel(name="t", source=str(copy))).revision != (
        current_revision(WatchedModel(name="t", source=str(tiny_base))).revision
    )
    assert weights_digest(copy) == digest
    # A cached copy keeps its digest beside it (hidden): read, not recomputed.
    rev, snapshot = checkout("t", str(copy), None, tmp_path / "cache")
    assert rev.weights == digest and snapshot != copy
    (snapshot / WEIGHTS_SIDECAR).write_text("noted")
    assert checkout("t", str(copy), None, tmp_path / "cache")[0].weights == "noted"
    for changed, text in [
        ("tokenizer_config.json", None),  # the chat template lives here
        ("generation_config.json", '{"temperature": 0.1}'),
        ("config.json", None),
    ]:
        edited = tmp_path / changed
        shutil.copytree(copy, edited)
        path = edited / changed
        path.write_text(text or path.read_text().replace("}", ', "edited": true}', 1))
        assert weights_digest(edited) != digest, changed
    # The Hugging Face cache links each file to a blob named by its hash: taken as is.
    blobs, snap = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for file in sorted(copy.iterdir()):
        if file.is_file():
            blob = blobs / sha256_file(file)
            shutil.copy(file, blob)
            (snap / file.name).symlink_to(blob)
    assert weights_digest(snap) == digest


def test_a_folder_revision_stays_usable_after_the_folder_moves_on(
    tiny_base: Path, tmp_path: Path
) -> None:
    """The gate compares a new release's adapter with the champion on the revision before."""
    source = tmp_path / "model"
    shutil.copytree(tiny_base, source)
    old = current_revision(WatchedModel(name="tiny-llama", source=str(source))).revision
    first = materialize(str(source), old, tmp_path / "cache")
    assert first != source and folder_sha256(first)[:40] == old
    (source / "generation_config.json").write_text('{"release": 2}')  # a new revision in place
    assert materialize(str(source), old, tmp_path / "cache") == first
    assert folder_sha256(first)[:40] == old
    new = current_revision(WatchedModel(name="tiny-llama", source=str(source))).revision
    assert folder_sha256(materialize(str(source), new, tmp_path / "cache"))[:40] == new
    with pytest.raises(ConfigError, match="no copy of that revision is cached"):
        materialize(str(source), "0" * 40, tmp_path / "cache")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/no/such/model", "does not exist"),
        ("hf://just-a-name", "hf://org/name"),
    ],
)
def test_unknown_model_sources_are_refused(source: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        current_revision(WatchedModel(name="m", source=source))


def test_a_folder_without_weights_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a model folder"):
        current_revision(WatchedModel(name="m", source=str(tmp_path)))


def test_hub_revisions_come_from_the_commit_sha_offline(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hub path through huggingface_hub's own cache layout, with the network off."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    shutil.copytree(tiny_base, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    rev = current_revision(WatchedModel(name="tiny-llama", source="hf://acme/tiny-llama"))
    assert rev.revision == sha
    assert materialize("hf://acme/tiny-llama", sha, tmp_path) == repo / "snapshots" / sha
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        materialize("hf://acme/tiny-llama", "f" * 40, tmp_path)


def test_s3_model_sources_have_revisions_too(
    tiny_base: Path, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slmops.config import get_settings
    from slmops.store.s3 import S3Store
    from tests.helpers import make_bucket

    bucket = make_bucket(s3_endpoint)
    S3Store(bucket, endpoint_url=s3_endpoint).put_dir("models/tiny", tiny_base)
    monkeypatch.setenv("SLMOPS_S3_ENDPOINT_URL", s3_endpoint)
    get_settings.cache_clear()
    source = f"s3://{bucket}/models/tiny"
    rev = current_revision(WatchedModel(name="tiny-llama", source=source))
    local = materialize(source, rev.revision, tmp_path)
    assert (local / "model.safetensors").stat().st_size == (
        tiny_base / "model.safetensors"
    ).stat().st_size


def test_each_revision_is_recorded_once_even_by_racing_watchers(store: ObjectStore) -> None:
    rev = Revision(model="tiny-llama", revision="abc123", source="/models/tiny")
    seen, etag = seen_revisions(store, "tiny-llama")
    barrier = threading.Barrier(4)
    wins = []

    def watcher() -> None:
        barrier.wait()
        wins.append(record_revision(store, rev, etag, seen))

    threads = [threading.Thread(target=watcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]
    seen, _ = seen_revisions(store, "tiny-llama")
    assert seen.has("abc123") and len(seen.revisions) == 1
    assert event_id("tiny-llama", "abc123") == event_id("tiny-llama", "abc123")
    assert event_id("tiny-llama", "abc123") != event_id("tiny-llama", "abc124")


def test_rows_are_measured_in_tokens_of_the_chat_template(tiny_base: Path) -> None:
    from slmops.training.datasets import chat_token_counter

    count = chat_token_counter(tiny_base)
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    long = [{"role": "user", "content": "hi " * 300}, {"role": "assistant", "content": "ok"}]
    assert 4 < count(short) < 20  # the template's tags and the words, not a dict's keys
    assert count(long) > 300
