"""Retrieval evaluation: hit rate@k and MRR of an index on question -> expected-source pairs.

Two question sets: a curated file (JSONL, one `{"question": ..., "expected": [paths]}` per
line) and pairs generated from the documents themselves (section headings as queries, their
document as the answer). Results are stored with the index version, so versions compare.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, Field

from slmops.errors import ConfigError

_HEADING = re.compile(r"^#{2,3}\s+(.+)$", re.MULTILINE)


class EvalQuestion(BaseModel):
    question: str = Field(min_length=1)
    expected: list[str] = Field(min_length=1, description="Source paths that answer it.")


class QuestionResult(BaseModel):
    question: str
    expected: list[str]
    rank: int | None = Field(description="1-based rank of the first expected document.")
    retrieved: list[str]


class EvalResult(BaseModel):
    name: str
    k: int
    questions: int
    hit_rate: float
    mrr: float
    misses: list[QuestionResult] = Field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            f"{self.name}.hit_rate@{self.k}": round(self.hit_rate, 4),
            f"{self.name}.mrr": round(self.mrr, 4),
            f"{self.name}.questions": self.questions,
        }


def load_questions(path: str | Path) -> list[EvalQuestion]:
    """Read a questions file; a bad line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"retrieval questions file {str(path)!r} does not exist")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            questions.append(EvalQuestion.model_validate_json(line))
        except ValueError as exc:
            first = str(exc).splitlines()
            detail = " ".join(first[1:3]).strip() if len(first) > 1 else str(exc)
            raise ConfigError(
                f"{path}:{number}: not a question line ({detail}); each line must be "
                '{"question": "...", "expected": ["path/in/source.md", ...]}'
            ) from None
    if not questions:
        raise ConfigError(f"retrieval questions file {path} has no questions")
    return questions


def generate_questions(nodes: list[dict[str, str]], limit: int = 200) -> list[EvalQuestion]:
    """Questions from the documents: "<title>: <section heading>" -> that document."""
    seen, out = set(), []
    for node in nodes:
        headings = _HEADING.findall(node["text"]) or ([""] if node["i"] == 0 else [])
        for heading in headings:
            query = f"{node['title']}: {heading.strip()}" if heading else node["title"]
            if query not in seen:
                seen.add(query)
                out.append(EvalQuestion(question=query, expected=[node["doc"]]))
    # Spread the sample over all documents, deterministically.
    step = max(1, len(out) // limit)
    return out[::step][:limit]


def evaluate(
    index: object, questions: list[EvalQuestion], *, k: int, name: str, mode: str | None = None
) -> EvalResult:
    """Rank documents by their best chunk for each question; score the expected ones.
    `mode`: dense, bm25 or hybrid (unset: the index's default, from the settings)."""
    results = []
    options = {"mode": mode} if mode else {}
    for q in questions:
        hits = index.retrieve(q.question, k=k * 3, **options)  # type: ignore[attr-defined]
        docs: list[str] = []
        for hit in hits:
            if hit.source not in docs:
                docs.append(hit.source)
        docs = docs[:k]
        rank = next((i + 1 for i, d in enumerate(docs) if d in q.expected), None)
        results.append(
            QuestionResult(question=q.question, expected=q.expected, rank=rank, retrieved=docs)
        )
    n = len(results) or 1
    return EvalResult(
        name=name,
        k=k,
        questions=len(results),
        hit_rate=sum(r.rank is not None for r in results) / n,
        mrr=sum(1 / r.rank for r in results if r.rank) / n,
        misses=[r for r in results if r.rank is None],
    )


MODES = ("dense", "bm25", "hybrid")


def by_mode(
    metrics: dict[str, float], k: int
) -> list[tuple[str, int, dict[str, tuple[float, float]]]]:
    """(question set, questions, {mode: (hit rate@k, MRR)}) per question set in `metrics`
    (keys as `evaluate_candidate` writes them, with or without the `retrieval.` prefix)."""
    plain = {key.removeprefix("retrieval."): value for key, value in metrics.items()}
    names = sorted({key.split(".")[0] for key in plain if key.endswith(".questions")})
    return [
        (
            name,
            int(plain[f"{name}.questions"]),
            {
                mode: (plain[f"{name}.{mode}.hit_rate@{k}"], plain[f"{name}.{mode}.mrr"])
                for mode in MODES
                if f"{name}.{mode}.mrr" in plain
            },
        )
        for name in names
    ]


def mode_table(metrics: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    """The modes side by side, for people: a header and one row per question set."""
    k = next((int(key.rsplit("@", 1)[1]) for key in metrics if "@" in key), 5)
    header = ["questions", *(f"{mode} hit@{k} / MRR" for mode in MODES)]
    rows = [
        [f"{name} ({asked})"] + [f"{s[m][0]:.3f} / {s[m][1]:.3f}" if m in s else "-" for m in MODES]
        for name, asked, s in by_mode(metrics, k)
    ]
    return header, rows


def write_report(results: list[EvalResult], path: Path) -> None:
    path.write_text(json.dumps([r.model_dump() for r in results], indent=1, ensure_ascii=False))
