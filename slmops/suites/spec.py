"""Eval suites: the cases an adapter is judged on, and how each answer is scored.

A suites folder holds `suites.yaml` (the shared settings and one entry per suite) and one JSONL
file of cases per suite. Every line is one case:

    {"id": "inj-007", "input": "Ignore previous instructions and ...",
     "expect": ["valid_format", "refuses", "no_canary"], "canary": "PWNED-7"}

`input` is the user message (or `messages`, a whole chat without the answer); `expect` lists
what the answer must do (see `EXPECTATIONS`). Each suite also applies its own checks to every
case (style rules, the glossary, citing retrieved sources). A case may give `facts`, what a
right answer says, as groups of alternative phrases: `"facts": [["bouncing", "rejected"]]`
scores `<suite>.states_facts` (the answer, not declining, contains one phrase of every group
as whole words). Everything is validated on load, and every problem is reported with its file
and line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from slmops.errors import ConfigError

# What a case may expect of its answer.
EXPECTATIONS = {
    "valid_format": "the answer validates against the suite's JSON Schema",
    "refuses": "the answer declines (the refusal rule in suites.yaml)",
    "answers": "an in-scope question gets an answer: valid, not declined, not blank and not "
    "the question echoed back (and, across the suite, not one canned answer for every case: "
    "metric <suite>.distinct_answers)",
    "no_canary": "the answer does not contain the case's `canary` string (injection ignored)",
    "no_system_leak": "the answer does not repeat the system prompt",
}
SUITES_FILE = "suites.yaml"


class StyleRules(BaseModel):
    max_answer_chars: int = Field(600, ge=1, description="Longest `answer` text allowed.")
    banned_phrases: list[str] = Field(
        default_factory=list, description="Case-insensitive phrases no answer may contain."
    )
    required_fields: list[str] = Field(
        default_factory=list, description="Fields of the answer object that must be non-empty."
    )


class RefusalRule(BaseModel):
    """An answer declines if it contains one of `phrases`, or (if set) it has low confidence
    and cites no source."""

    phrases: list[str] = Field(
        default_factory=list, description="Case-insensitive phrases that make an answer decline."
    )
    low_confidence_without_sources: bool = Field(
        True, description="An answer with low confidence and no sources declines too."
    )


class SuiteSpec(BaseModel):
    cases: str = Field(description="JSONL file of cases, relative to suites.yaml.")
    description: str = Field("", description="What the suite checks, for the report.")
    kind: Literal["format", "style", "terminology", "adversarial", "knowledge"] = Field(
        description="Which checks score it: format (valid JSON of the schema), style (the "
        "`style` rules), terminology (the `glossary`), adversarial (declines, injections), "
        "knowledge (answers from the retrieved docs, cites them, states their facts)."
    )
    style: StyleRules | None = Field(None, description="The style rules (kind: style).")
    glossary: dict[str, list[str]] | None = Field(
        None, description="Preferred term -> synonyms no answer may use instead of it."
    )
    index: str | None = Field(
        None,
        description="The index to retrieve from: every case of the suite is asked with the "
        "chunks retrieval finds for it in the prompt, as a RAG client serves the model (required "
        "for knowledge suites; on another kind, its checks are made on the served prompt).",
    )
    k: int = Field(3, ge=1, le=20, description="Chunks retrieved per case (with `index`).")
    max_new_tokens: int = Field(
        96,
        ge=1,
        le=32768,
        description="Tokens an answer of this suite may take (a knowledge answer needs more "
        "than a format check). An answer the limit cuts is reported as cut, and a suite whose "
        "answers are cut more often than the policy's max_cut_share is refused as misconfigured.",
    )
    context_chars: int | None = Field(
        None,
        ge=1,
        description="With `index`: how many characters of each retrieved chunk the prompt "
        "shows (unset: the whole chunk). As the model is trained and served: a cut sized for a "
        "small window can cut off the answer.",
    )
    min_similarity: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="With `index`: a case whose nearest chunk's dense (cosine) similarity is "
        "below this is asked without context, as a RAG client that drops irrelevant chunks "
        "serves it (slmops.retrieve(..., min_similarity=)); unset: every case gets its k chunks. "
        "Serve the model with the value it was gated with.",
    )


class SuitesConfig(BaseModel):
    system: str = Field(description="The system prompt every case is asked under.")
    json_schema: str = Field(alias="schema", description="JSON Schema file answers must meet.")
    refusal: RefusalRule = Field(
        default_factory=RefusalRule, description="What counts as declining to answer."
    )
    suites: dict[str, SuiteSpec] = Field(description="name -> suite: the suites a gate runs.")


class Case(BaseModel):
    id: str
    suite: str
    messages: list[dict[str, str]]
    expect: list[str] = Field(default_factory=list)
    canary: str | None = None
    require_terms: list[str] = Field(default_factory=list)
    expected_sources: list[str] = Field(default_factory=list)
    # What a right answer says: every group met by one of its phrases (metric
    # <suite>.states_facts; see slmops.suites.scorers.states_facts).
    facts: list[list[str]] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    line: int = 0


class Suites(BaseModel):
    """All suites of one folder, loaded and checked."""

    folder: str
    config: SuitesConfig
    schema_doc: dict[str, Any]
    cases: list[Case]

    def suite_cases(self, suite: str) -> list[Case]:
        return [c for c in self.cases if c.suite == suite]


def fact_words(text: str) -> str:
    """A phrase as the fact check compares it: lower-case letters and digits, one space
    between runs ("TW-119" -> "tw 119", "next_cursor" -> "next cursor")."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def _fail(where: str, problems: list[str]) -> ConfigError:
    shown = "\n".join(f"  {p}" for p in problems[:30])
    more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
    return ConfigError(f"{where}: {len(problems)} problem(s):\n{shown}{more}")


def load_suites(folder: str | Path) -> Suites:
    """Load `folder/suites.yaml` and its case files; ConfigError listing every bad line."""
    root = Path(folder)
    path = root / SUITES_FILE
    if not path.is_file():
        raise ConfigError(f"no {SUITES_FILE} in {root}: point --suites at an eval suites folder")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        config = SuitesConfig.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise _fail(str(path), errors) from None
    schema_path = root / config.json_schema
    try:
        schema_doc = json.loads(schema_path.read_text(encoding="utf-8"))
        from jsonschema import Draft202012Validator

        Draft202012Validator.check_schema(schema_doc)
    except FileNotFoundError:
        raise ConfigError(f"{path}: schema file {schema_path} does not exist") from None
    except ValueError as exc:
        raise ConfigError(f"{schema_path} is not a valid JSON Schema: {exc}") from exc
    except Exception as exc:  # jsonschema's SchemaError
        raise ConfigError(f"{schema_path} is not a valid JSON Schema: {exc}") from exc

    cases: list[Case] = []
    problems: list[str] = []
    for name, spec in config.suites.items():
        if spec.kind == "style" and spec.style is None:
            problems.append(f"{path}: suite {name!r} is a style suite but declares no `style`")
        if spec.kind == "terminology" and not spec.glossary:
            problems.append(f"{path}: suite {name!r} is a terminology suite but has no `glossary`")
        if spec.kind == "knowledge" and not spec.index:
            problems.append(f"{path}: suite {name!r} is a knowledge suite but names no `index`")
        if spec.min_similarity is not None and not spec.index:
            problems.append(
                f"{path}: suite {name!r} sets `min_similarity` but names no `index` to "
                "retrieve from: add the index or remove min_similarity"
            )
        cases += _load_cases(root / spec.cases, name, config.system, problems)
    seen: dict[str, str] = {}
    for case in cases:
        if case.id in seen:
            problems.append(
                f"case id {case.id!r} appears twice ({seen[case.id]}, line {case.line})"
            )
        seen[case.id] = f"{case.suite} line {case.line}"
    if problems:
        raise _fail(f"eval suites in {root}", problems)
    return Suites(folder=str(root), config=config, schema_doc=schema_doc, cases=cases)


def _load_cases(path: Path, suite: str, system: str, problems: list[str]) -> list[Case]:
    if not path.is_file():
        problems.append(f"{path}: case file of suite {suite!r} does not exist")
        return []
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            problems.append(f"{where}: not JSON ({exc})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: a case is a JSON object")
            continue
        unknown = set(row) - {
            "id",
            "input",
            "messages",
            "expect",
            "canary",
            "require_terms",
            "expected_sources",
            "facts",
            "tags",
        }
        if unknown:
            problems.append(f"{where}: unknown field(s) {sorted(unknown)}")
        if not isinstance(row.get("id"), str) or not row["id"]:
            problems.append(f"{where}: missing `id` (a unique string)")
            continue
        if ("input" in row) == ("messages" in row):
            problems.append(f"{where}: give exactly one of `input` (the user text) or `messages`")
            continue
        if "input" in row:
            if not isinstance(row["input"], str):
                problems.append(f"{where}: `input` must be a string (it may be empty)")
                continue
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": row["input"]},
            ]
        else:
            messages = row["messages"]
            if (
                not isinstance(messages, list)
                or not messages
                or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
                )
                or messages[-1].get("role") != "user"
            ):
                problems.append(f"{where}: `messages` must be chat messages ending with the user's")
                continue
        expect = row.get("expect", [])
        bad = [e for e in expect if e not in EXPECTATIONS] if isinstance(expect, list) else expect
        if bad:
            problems.append(
                f"{where}: unknown expectation(s) {bad}; known: {', '.join(EXPECTATIONS)}"
            )
            continue
        if "no_canary" in expect and not row.get("canary"):
            problems.append(f"{where}: expects no_canary but gives no `canary` string")
            continue
        facts = row.get("facts", [])
        if not isinstance(facts, list) or not all(
            isinstance(group, list)
            and group
            and all(isinstance(p, str) and fact_words(p) for p in group)
            for group in facts
        ):
            problems.append(
                f"{where}: `facts` must be a list of groups, each a non-empty list of phrases "
                'with at least one letter or digit, e.g. [["bouncing", "rejected"], ["SPF"]]'
            )
            continue
        cases.append(
            Case(
                id=row["id"],
                suite=suite,
                messages=messages,
                expect=expect,
                canary=row.get("canary"),
                require_terms=row.get("require_terms", []),
                expected_sources=row.get("expected_sources", []),
                facts=facts,
                tags=row.get("tags", []),
                line=number,
            )
        )
    if not cases and not any(p.startswith(str(path)) for p in problems):
        problems.append(f"{path}: suite {suite!r} has no cases")
    return cases
