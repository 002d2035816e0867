"""The assessment for a person: the recommendation and the decision tree with its evidence,
failure rates per arm and suite with intervals, failure kinds, costs, and a chart."""

from __future__ import annotations

from pathlib import Path

from slmops.assess.results import Assessment
from slmops.assess.task import ARMS, BEHAVIOUR, KNOWLEDGE


def _iv(rate: float, low: float, high: float) -> str:
    return f"{rate:.1%} ({low:.0%}..{high:.0%})"


def markdown(result: Assessment, chart: str | None = None) -> str:
    """The assessment as markdown; `chart` is an image reference (a path or a data URI)."""
    conf = f"{result.confidence:.0%}"
    lines = [
        f"## Assessment `{result.task}`: **{result.recommendation}**",
        "",
        result.summary,
        "",
        f"- cases: {result.cases} ("
        + ", ".join(f"{s} {n}" for s, n in result.suites.items())
        + f"); threshold {result.threshold:.0%} failures, intervals at {conf} (bootstrap)",
        f"- base model `{result.base_model['name']}` revision "
        f"`{(result.base_model['revision'] or '')[:12]}`; fine-tuned arm: "
        f"`{result.adapter['name']}` champion `{result.adapter['version']}`",
    ]
    if result.index["name"]:
        lines.append(f"- RAG index `{result.index['name']}` version `{result.index['version']}`")
    lines += ["", "### Decision", ""]
    for n, step in enumerate(result.steps, 1):
        mark = f"yes -> **{step.leads_to}**" if step.taken else "no"
        lines.append(f"{n}. {step.question} {mark}")
        lines += [f"   - {e}" for e in step.evidence]
    arms = [a for a in result.arms if a.measured]
    suites = list(result.suites)
    lines += [
        "",
        f"### Failure rate per arm and suite ({conf} interval)",
        "",
        "| arm | all | " + " | ".join(suites) + " | behaviour (all) | knowledge (all) |",
        "|---|---|" + "---|" * len(suites) + "---|---|",
    ]
    for a in arms:
        cells = [a.failure[g] for g in ["all", *suites, BEHAVIOUR, KNOWLEDGE]]
        lines.append(f"| {a.arm} | " + " | ".join(_iv(c.rate, c.low, c.high) for c in cells) + " |")
    lines += [
        "",
        f"### Against prompt-only, case by case (difference in failure rate, {conf} interval)",
        "",
        "| arm | all | behaviour | knowledge |",
        "|---|---|---|---|",
    ]
    for a in arms:
        if not a.vs_prompt:
            continue
        diffs = [a.vs_prompt[g] for g in ("all", BEHAVIOUR, KNOWLEDGE)]
        lines.append(
            f"| {a.arm} | "
            + " | ".join(f"{d.diff:+.1%} ({d.low:+.0%}..{d.high:+.0%})" for d in diffs)
            + " |"
        )
    econ = result.economy
    lines += [
        "",
        "### Costs",
        "",
        "| arm | prompt tokens | answer tokens | $/request | serving $/month | training $/month "
        "| total $/month |",
        "|---|---|---|---|---|---|---|",
    ]
    tokens = {a.arm: a for a in arms}
    for c in econ.costs:
        a = tokens[c.arm]
        lines.append(
            f"| {c.arm} | {a.prompt_tokens:,.0f} | {a.answer_tokens:,.0f} | "
            f"{c.usd_per_request:.6f} | {c.serving_usd_per_month:,.2f} | "
            f"{c.training_usd_per_month:,.2f} | {c.total_usd_per_month:,.2f} |"
        )
    per_run = (
        "unknown" if econ.training_usd_per_run is None else f"${econ.training_usd_per_run:.4f}"
    )
    lines += [
        "",
        f"- training: {per_run} per run ({econ.training_cost_source}); "
        f"{econ.retrains_per_month:.1f} runs a month ({econ.cadence_source})",
    ]
    if econ.break_even_requests_per_month is not None:
        lines.append(
            f"- break-even: above {econ.break_even_requests_per_month:,.0f} requests a month the "
            "adapter costs less than the few-shot prompt it replaces"
        )
    else:
        lines.append("- break-even: none (the adapter does not save prompt tokens here)")
    skipped = [a for a in result.arms if not a.measured]
    if skipped:
        lines.append("- not measured: " + "; ".join(f"{a.arm} ({a.why_not})" for a in skipped))
    engines = {
        " ".join(str(v) for v in (g.get("backend"), g.get("version"), g.get("dtype")) if v)
        for g in result.generation.values()
    }
    if engines:
        lines.append("- generated on: " + "; ".join(sorted(engines)))
    cut = [f"{a.arm} {a.cut}" for a in arms if a.cut]
    if cut:
        lines.append("- answers cut by the token limit: " + ", ".join(cut))
    truncated = [f"{a.arm} {a.truncated}" for a in arms if a.truncated]
    if truncated:
        lines.append(
            "- prompts cut to the model's window (start and end kept): " + ", ".join(truncated)
        )
    if chart:
        lines += ["", f"![failure rate per arm and suite]({chart})"]
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in result.timings.items())
    lines += ["", f"Timings: {timings}."]
    return "\n".join(lines)


def chart(result: Assessment, path: Path) -> Path:
    """Left: failure rate per suite for every arm, with intervals and the threshold.
    Right: monthly cost against request volume, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = [a for a in result.arms if a.measured]
    groups = ["all", *result.suites]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 4.6), dpi=100, gridspec_kw={"width_ratios": [2, 1]}
    )
    width = 0.8 / max(len(arms), 1)
    xs = np.arange(len(groups))
    colors = dict(zip(ARMS, ["#9e9e9e", "#616161", "#42a5f5", "#ef6c00", "#2e7d32"], strict=True))
    for i, a in enumerate(arms):
        rates = [a.failure[g].rate for g in groups]
        err = [
            [a.failure[g].rate - a.failure[g].low for g in groups],
            [a.failure[g].high - a.failure[g].rate for g in groups],
        ]
        left.bar(
            xs + (i - (len(arms) - 1) / 2) * width,
            rates,
            width,
            yerr=err,
            capsize=2,
            label=a.arm,
            color=colors.get(a.arm),
        )
    left.axhline(result.threshold, color="#c62828", ls="--", lw=1)
    left.text(
        len(groups) - 0.5,
        result.threshold,
        " threshold",
        color="#c62828",
        va="bottom",
        ha="right",
        fontsize=8,
    )
    left.set_xticks(xs, groups, fontsize=8)
    left.set_ylim(0, 1.05)
    left.set_ylabel("failure rate")
    left.set_title(f"Failures per suite ({result.confidence:.0%} intervals)", fontsize=10)
    left.legend(fontsize=7, ncol=2)

    econ = result.economy
    volumes = np.logspace(2, 8, 60)
    for c in econ.costs:
        monthly = c.usd_per_request * volumes + c.training_usd_per_month
        right.plot(volumes, monthly, label=c.arm, color=colors.get(c.arm))
    if econ.break_even_requests_per_month:
        right.axvline(econ.break_even_requests_per_month, color="#555", ls=":", lw=1)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("requests per month")
    right.set_ylabel("USD per month")
    right.set_title("Cost against volume (training included)", fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
