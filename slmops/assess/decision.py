"""The decision tree: prompt-only, RAG, fine-tuning or both, each branch with its evidence."""

from __future__ import annotations

from typing import Any

import numpy as np

from slmops.assess.results import ArmResult, CostEstimate, Interval, Step
from slmops.assess.task import BASELINE, BEHAVIOUR, BEHAVIOUR_KINDS, PROMPTING, AssessTask
from slmops.suites.spec import Suites


def _pct(iv: Interval) -> str:
    return f"{iv.rate:.1%} [{iv.low:.1%}, {iv.high:.1%}]"


def _vs(result: ArmResult, group: str) -> str:
    c = result.vs_prompt.get(group)
    return "" if c is None else f" ({c.diff:+.1%} vs prompt-only, [{c.low:+.1%}, {c.high:+.1%}])"


def _judgeable(result: ArmResult, suite: str) -> str:
    """Knowledge failures among the answers that held the format (others show nothing)."""
    n = result.failure[suite].n
    knowledge = round(result.failure[f"{suite}:knowledge"].rate * n)
    judged = n - round(result.failure[suite].rate * n) + knowledge
    if not judged:
        return f"no answer held the format, so none shows what it knows ({n} cases)"
    return (
        f"{knowledge} of {judged} answers that held the format cite no doc holding the answer "
        "or do not say what it says"
    )


def term_fertility(
    tokenizer: Any, glossary: dict[str, list[str]], plain: str
) -> tuple[float, float]:
    """Tokens per word of the glossary's preferred terms, and of plain text (the system prompt)."""

    def per_word(text: str) -> float:
        words = text.split()
        ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        return len(ids) / max(len(words), 1)

    terms = [per_word(t) for t in glossary]
    return (float(np.mean(terms)) if terms else 0.0), per_word(plain)


def decide(
    task: AssessTask,
    arms: dict[str, ArmResult],
    economy: CostEstimate,
    suites: Suites,
    fertility: tuple[float, float],
) -> tuple[str, str, list[Step]]:
    """Walk the decision tree; every branch keeps the figures it was decided on."""
    t, conf = task.threshold, task.confidence
    kinds = {name: spec.kind for name, spec in suites.config.suites.items()}
    prompt = arms[BASELINE]
    prompting = [arms[a] for a in PROMPTING if a in arms and arms[a].measured]
    best = min(prompting, key=lambda r: r.failure[BEHAVIOUR].rate)
    ft = arms.get("fine-tuned")
    ft_measured = ft is not None and ft.measured
    steps: list[Step] = []

    # 1. Knowledge the model lacks without the docs -> RAG. Judged on the arm without
    # retrieval that holds the format best: an answer that is not even valid cannot show
    # what it knows.
    knowledge_suites = [s for s, k in kinds.items() if k == "knowledge" and s in prompt.failure]
    no_rag = [arms[a] for a in ("prompt", "prompt+examples", "fine-tuned") if arms[a].measured]
    judge = min(no_rag, key=lambda r: r.failure[BEHAVIOUR].rate)
    needs_docs = any(judge.failure[f"{s}:knowledge"].low > t for s in knowledge_suites)
    evidence = []
    for s in knowledge_suites:
        evidence.append(
            f"suite {s}, {judge.arm} (no retrieval): answers that cite no doc holding the "
            f"answer or do not say what it says {_pct(judge.failure[f'{s}:knowledge'])}"
        )
        for arm in ("rag", "fine-tuned+rag"):
            if arms[arm].measured:
                evidence.append(f"suite {s}, {arm}: {_judgeable(arms[arm], s)}")
    evidence.append(
        f"the docs changed {max(economy.index_versions - 1, 0)} times in "
        f"{economy.history_days:.1f} days of history ({economy.index_versions} index versions): "
        "knowledge baked into weights would go stale; retrieval stays current"
    )
    if not knowledge_suites:
        evidence.append("no knowledge suite in the task: nothing measured here")
    steps.append(
        Step(
            question=f"Do answers lack the docs' knowledge, over {t:.0%} at {conf:.0%}?",
            taken=needs_docs,
            leads_to="RAG",
            evidence=evidence,
        )
    )

    # 2. Format/style/injection failing over the threshold even with the best prompt -> FT.
    behaviour_suites = [s for s, k in kinds.items() if k in BEHAVIOUR_KINDS and s in best.failure]
    bh = best.failure[BEHAVIOUR]
    needs_ft = bh.low > t
    evidence = [
        f"best prompting arm: {best.arm}, behaviour failures {_pct(bh)} "
        f"(lower bound {'above' if needs_ft else 'not above'} {t:.0%})"
    ]
    evidence += [f"suite {s} ({best.arm}): {_pct(best.failure[s])}" for s in behaviour_suites]
    if ft_measured and ft is not None:
        evidence.append(
            f"fine-tuned behaviour failures: {_pct(ft.failure[BEHAVIOUR])}{_vs(ft, BEHAVIOUR)}"
        )
    steps.append(
        Step(
            question=f"Do format, style or injection failures exceed {t:.0%} at {conf:.0%} "
            "with the best prompt?",
            taken=needs_ft,
            leads_to="fine-tuning",
            evidence=evidence,
        )
    )

    # 3. Vocabulary the base lacks -> fine-tuning on a domain corpus.
    term_suites = [s for s, k in kinds.items() if k == "terminology" and s in best.failure]
    term_fail = any(best.failure[s].low > t for s in term_suites)
    term_tok, plain_tok = fertility
    fragmented = plain_tok > 0 and term_tok > 1.5 * plain_tok
    evidence = [f"suite {s} ({best.arm}): {_pct(best.failure[s])}" for s in term_suites] or [
        "no terminology suite in the task"
    ]
    evidence.append(
        f"the base tokenizer splits the glossary's terms into {term_tok:.2f} tokens per word, "
        f"plain text into {plain_tok:.2f}"
        + (" (the terms are foreign to its vocabulary)" if fragmented else "")
    )
    steps.append(
        Step(
            question="Does the base lack the domain's vocabulary (terminology failing over "
            "the threshold and its terms split into many more tokens than plain words)?",
            taken=term_fail and fragmented,
            leads_to="fine-tuning on a domain corpus",
            evidence=evidence,
        )
    )

    # 4. A prompt meets the threshold, but the cheapest such prompt costs more than an
    # adapter at this volume -> compress the prompt into an adapter.
    costs = {c.arm: c for c in economy.costs}
    holding = [r for r in prompting if r.failure[BEHAVIOUR].high <= t and r.arm in costs]
    cheapest = min(holding, key=lambda r: costs[r.arm].total_usd_per_month, default=None)
    cheaper_ft = (
        cheapest is not None
        and ft_measured
        and "fine-tuned" in costs
        and costs["fine-tuned"].total_usd_per_month < costs[cheapest.arm].total_usd_per_month
    )
    evidence = []
    for arm in [*(r.arm for r in holding), "fine-tuned"]:
        if arm in costs:
            c = costs[arm]
            evidence.append(
                f"{arm}: {arms[arm].prompt_tokens:,.0f} prompt tokens/request, "
                f"${c.total_usd_per_month:,.2f}/month at {task.economics.requests_per_month:,} "
                f"requests (training ${c.training_usd_per_month:,.2f})"
            )
    if not holding:
        evidence.insert(0, f"no prompt keeps behaviour failures under {t:.0%}")
    if economy.break_even_requests_per_month is not None:
        evidence.append(
            f"break-even: fine-tuning costs less than the few-shot prompt above "
            f"{economy.break_even_requests_per_month:,.0f} requests/month"
        )
    steps.append(
        Step(
            question="Does a prompt meet the threshold, but cost more than an adapter at this "
            "volume?",
            taken=bool(cheaper_ft and not needs_ft),
            leads_to="fine-tuning (compress the prompt into an adapter)",
            evidence=evidence,
        )
    )

    parts: list[str] = []
    if steps[0].taken:
        parts.append("RAG")
    if steps[1].taken or steps[2].taken or steps[3].taken:
        parts.append("fine-tuning")
    recommendation = " + ".join(parts) if parts else "prompt engineering"
    final = {
        ("RAG", "fine-tuning"): "fine-tuned+rag",
        ("fine-tuning",): "fine-tuned",
        ("RAG",): "rag",
    }.get(tuple(parts), best.arm)
    steps.append(
        Step(
            question="Otherwise: does prompting alone stay under the threshold?",
            taken=not parts,
            leads_to="prompt engineering",
            evidence=[f"{best.arm}: all failures {_pct(best.failure['all'])}"],
        )
    )
    chosen = arms.get(final)
    if chosen is not None and chosen.measured:
        all_iv = chosen.failure["all"]
        meets = all_iv.high <= t
        fewest = min((r for r in arms.values() if r.measured), key=lambda r: r.failure["all"].rate)
        if meets:
            verdict = f"under the {t:.0%} threshold at {conf:.0%}."
        elif fewest.failure["all"].rate >= all_iv.rate:  # the chosen arm fails fewest
            verdict = (
                f"still over the {t:.0%} threshold: it is the best measured option, and not "
                "yet good enough (more training data, a larger base model, or both)."
            )
        else:  # the tree asks for this arm, and another one fails fewer cases today
            verdict = (
                f"still over the {t:.0%} threshold, and not the arm that fails fewest: "
                f"{fewest.arm} fails {_pct(fewest.failure['all'])}. The cases need "
                f"{recommendation}; this model does not deliver it yet (more training data, "
                "a larger base model, or both)."
            )
        summary = f"{recommendation}: the {final} arm fails {_pct(all_iv)} of the cases, {verdict}"
    else:
        why = chosen.why_not if chosen else "unknown arm"
        summary = f"{recommendation}: the {final} arm was not measured ({why})"
    return recommendation, summary, steps
