"""Training datasets: validated row by row, normalised, split deterministically, versioned.

Rows are JSON Lines in either form:
  chat:               {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
  prompt/completion:  {"prompt": "...", "completion": "..."}
Both become chat rows ending with the assistant's answer (what the model learns to produce).
Every bad row is reported by line number and reason; the policy says whether one bad row fails
the dataset (`fail`) or is dropped and reported (`drop`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from slmops.errors import ConfigError, SlmopsError
from slmops.store.base import ObjectStore
from slmops.store.hashing import sha256_bytes
from slmops.store.manifest import InputRef, Manifest, Trigger
from slmops.store.versions import DATASETS, LATEST, VersionedArtifact

ROLES = ("system", "user", "assistant")
TRAIN, EVAL, REPORT = "train.jsonl", "eval.jsonl", "validation.json"


class DatasetError(SlmopsError):
    """A dataset that cannot be used; the message lists the bad rows by line."""


class DatasetConfig(BaseModel):
    """How a source file becomes a dataset version. Same source + same config = same version."""

    policy: Literal["fail", "drop"] = Field(
        "fail",
        description="fail: any bad row stops the run. drop: bad rows are left out and reported.",
    )
    eval_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of rows held out for evaluation, chosen by a hash of each row (stable).",
    )
    max_tokens: int = Field(
        512,
        ge=16,
        description="Longest allowed row, in the base "
        "model's tokens with its chat template applied.",
    )


class RowProblem(BaseModel):
    line: int
    reason: str


class ValidationReport(BaseModel):
    source: str
    rows: int = 0
    kept: int = 0
    problems: list[RowProblem] = Field(default_factory=list)

    def describe(self, limit: int = 20) -> str:
        shown = "\n".join(f"  {self.source}:{p.line}: {p.reason}" for p in self.problems[:limit])
        more = len(self.problems) - limit
        return shown + (f"\n  ... and {more} more" if more > 0 else "")


def _row_problem(row: Any) -> tuple[list[dict[str, str]] | None, str | None]:
    """The row as chat messages, or the reason it is not usable."""
    if not isinstance(row, dict):
        return None, f"a JSON {type(row).__name__}, not an object"
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            return None, "'messages' must be a non-empty list"
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                return None, f"messages[{i}] needs 'role' and 'content'"
            if msg["role"] not in ROLES:
                return None, f"messages[{i}] has role {msg['role']!r} (use {', '.join(ROLES)})"
            if not isinstance(msg["content"], str) or not msg["content"].strip():
                return None, f"messages[{i}] ({msg['role']}) has empty content"
        if messages[-1]["role"] != "assistant":
            return None, "the last message must be the assistant's answer"
        if not any(m["role"] == "user" for m in messages):
            return None, "no user message"
        return [{"role": m["role"], "content": m["content"]} for m in messages], None
    if "prompt" in row or "completion" in row:
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                return None, f"missing or empty '{key}'"
        return [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ], None
    return None, "neither 'messages' nor 'prompt'/'completion'"


def validate_rows(
    path: Path, config: DatasetConfig, count_tokens: Callable[[list[dict[str, str]]], int]
) -> tuple[list[list[dict[str, str]]], ValidationReport]:
    """Read a JSONL file; the good rows (as chat messages) and a report of the bad ones."""
    if not path.is_file():
        raise ConfigError(f"dataset {str(path)!r} does not exist")
    report = ValidationReport(source=str(path))
    rows: list[list[dict[str, str]]] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            report.rows += 1
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                report.problems.append(RowProblem(line=number, reason=f"invalid UTF-8 ({exc})"))
                continue
            except json.JSONDecodeError as exc:
                report.problems.append(
                    RowProblem(line=number, reason=f"not JSON: {exc.msg} at column {exc.colno}")
                )
                continue
            messages, problem = _row_problem(parsed)
            if messages is None:
                report.problems.append(RowProblem(line=number, reason=problem or "invalid"))
                continue
            key = sha256_bytes(json.dumps(messages, sort_keys=True).encode())
            if key in seen:
                report.problems.append(
                    RowProblem(line=number, reason=f"duplicate of line {seen[key]}")
                )
                continue
            tokens = count_tokens(messages)
            if tokens > config.max_tokens:
                report.problems.append(
                    RowProblem(
                        line=number, reason=f"{tokens} tokens, over max_tokens {config.max_tokens}"
                    )
                )
                continue
            seen[key] = number
            rows.append(messages)
    report.kept = len(rows)
    if report.rows == 0:
        raise DatasetError(f"dataset {path} has no rows")
    if report.problems and config.policy == "fail":
        raise DatasetError(
            f"dataset {path} has {len(report.problems)} bad rows of {report.rows} "
            f"(policy 'fail'; set policy to 'drop' to train on the rest):\n{report.describe()}"
        )
    if not rows:
        raise DatasetError(f"dataset {path}: no usable rows\n{report.describe()}")
    return rows, report


Rows = list[list[dict[str, str]]]


def split(rows: Rows, eval_fraction: float) -> tuple[Rows, Rows]:
    """Train/eval split by a hash of each row: the same row always lands on the same side."""
    train: Rows = []
    held_out: Rows = []
    for messages in rows:
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()
        bucket = int.from_bytes(digest[:4], "big") / 2**32
        (held_out if bucket < eval_fraction else train).append(messages)
    return train, held_out


def _jsonl(rows: list[list[dict[str, str]]]) -> bytes:
    return "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in rows).encode()


def chat_token_counter(base: str | Path) -> Callable[[list[dict[str, str]]], int]:
    """Tokens a chat row takes once the base model's chat template is applied."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)

    def count(messages: list[dict[str, str]]) -> int:
        # Template to text, then tokens: apply_chat_template(tokenize=True) returns a dict of
        # tensors in transformers 5, whose len() is its number of keys, not of tokens.
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


CONTENT_KEY = "content"  # lookup kind: hash of the source file + validation config -> version


def publish_dataset(
    store: ObjectStore,
    name: str,
    path: str | Path,
    config: DatasetConfig,
    count_tokens: Callable[[list[dict[str, str]]], int],
    *,
    trigger: Trigger | None = None,
) -> Manifest:
    """Validate `path` and store it as a dataset version (or return the existing identical one)."""
    path = Path(path)
    art = VersionedArtifact(store, DATASETS, name)
    if not path.is_file():
        raise ConfigError(f"dataset {str(path)!r} does not exist")
    source_hash = sha256_bytes(path.read_bytes())
    settings = config.model_dump()
    content_key = sha256_bytes(json.dumps([source_hash, settings], sort_keys=True).encode())[:40]
    existing = art.find(CONTENT_KEY, content_key)
    if existing is not None:
        return existing  # idempotent: this exact data was validated and stored before
    rows, report = validate_rows(path, config, count_tokens)
    train, held_out = split(rows, config.eval_fraction)
    if not train:
        raise DatasetError(
            f"dataset {path}: every row fell into the eval split; lower eval_fraction or add rows"
        )
    manifest = Manifest(
        kind="dataset",
        name=name,
        inputs=[InputRef(kind="file", name=path.name, uri=str(path), sha256=source_hash)],
        config=settings,
        metrics={
            "rows": report.rows,
            "kept": report.kept,
            "dropped": len(report.problems),
            "train_rows": len(train),
            "eval_rows": len(held_out),
        },
        trigger=trigger or Trigger(),
    )
    files = {
        TRAIN: _jsonl(train),
        EVAL: _jsonl(held_out),
        REPORT: (report.model_dump_json(indent=1) + "\n").encode(),
    }
    stored = art.publish(manifest, files, lookup={CONTENT_KEY: content_key})
    art.set_alias(
        LATEST, stored.version, reason=f"{report.kept} rows from {path.name}", trigger=trigger
    )
    return stored


def read_rows(store: ObjectStore, name: str, version: str, part: str = TRAIN) -> list[list[dict]]:
    data = VersionedArtifact(store, DATASETS, name).read_file(version, part).decode()
    return [json.loads(line)["messages"] for line in data.splitlines() if line.strip()]
