"""The gate's report for a person: a markdown table with the reasons, and a chart of candidate
vs champion per metric with confidence bars."""

from __future__ import annotations

import math
from pathlib import Path

from slmops.evaluation.gate import Verdict
from slmops.suites.stats import EXACT_BELOW


def _num(value: float | None) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def answers_reused(verdict: Verdict) -> str:
    """'candidate 355 generated; champion 355 reused (same weights, answers/...)', or '' when
    nothing was looked up in the stored answers."""
    parts = []
    for role, gen in verdict.generation.items():
        if "answers_reused" in gen:
            reused, made = gen["answers_reused"], gen["answers_generated"]
            parts.append(
                f"{role} {made} generated"
                + (f", {reused} reused from {gen['stored_answers']}" if reused else "")
            )
    return "; ".join(parts)


def generated_on(verdict: Verdict) -> str:
    """Where each model's answers came from: 'candidate: vllm 0.32.0 float32 (support-bot@1a2b
    at http://...); champion: ...'."""
    parts = []
    for role, gen in verdict.generation.items():
        backend = gen.get("backend", "?")
        where = " ".join(
            str(v) for v in (backend, gen.get("version"), gen.get("device"), gen.get("dtype")) if v
        )
        served = gen.get("model")
        if backend == "vllm" and served:
            where += f" (`{served}` at {gen.get('url')})"
        parts.append(f"{role}: {where}")
    return "; ".join(parts)


def markdown(verdict: Verdict, chart: str | None = None) -> str:
    """The verdict as markdown; `chart` is an image reference to embed (a path or data URI)."""
    mark = verdict.status.upper()
    against = {
        None: "no champion (floors and zero tolerance only)",
        "base": "the base model alone",
    }.get(verdict.champion, f"champion `{verdict.champion}`")
    policy = verdict.policy
    lines = [
        f"## Gate {mark}: `{verdict.adapter}` version `{verdict.version}`",
        "",
        f"- against: {against}",
        f"- cases: {verdict.cases}; confidence {policy['confidence']:.0%}, "
        f"{policy['bootstrap']} paired bootstrap resamples (seed {policy['seed']}; an exact "
        f"test for a pass/fail metric with under {EXACT_BELOW} discordant cases), "
        f"correction: {policy['correction']}; decoding: greedy",
    ]
    lines.append(f"- generated on: {generated_on(verdict)}")
    reuse = answers_reused(verdict)
    if reuse:
        lines.append(f"- answers: {reuse}")
    for suite, cut in verdict.cut.items():
        champ = "" if cut.champion is None else f", champion {cut.champion}"
        lines.append(
            f"- cut at {cut.limit} tokens in `{suite}`: candidate {cut.candidate} of "
            f"{cut.cases}{champ}"
        )
    if verdict.base_model:
        lines.append(
            f"- base model: `{verdict.base_model}` revision `{(verdict.base_revision or '')[:12]}`"
        )
    if verdict.index:
        lines.append(
            f"- index: `{verdict.index.get('name')}` version `{verdict.index.get('version')}`"
        )
    if verdict.reasons:
        lines += ["", "**Why it failed:**", ""] + [f"- {r}" for r in verdict.reasons]
    lines += declines_table(verdict)
    lines += [
        "",
        "| metric | n | candidate | champion | difference (interval) | rules |",
        "|---|---|---|---|---|---|",
    ]
    for m in verdict.metrics:
        diff = (
            "-"
            if m.diff is None or m.diff_ci is None
            else f"{m.diff:+.3f} ({m.diff_ci[0]:+.3f}..{m.diff_ci[1]:+.3f})"
        )
        rules = (
            "; ".join(f"{'ok' if c.passed else 'FAIL'} {c.rule}: {c.detail}" for c in m.checks)
            or "reported, not guarded"
        )
        lines.append(
            f"| {m.metric} | {m.n} | {_num(m.candidate)} | {_num(m.champion)} | {diff} | {rules} |"
        )
    if chart:
        lines += ["", f"![candidate vs champion per metric]({chart})"]
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in verdict.timings.items())
    lines += ["", f"Timings: {timings}."]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def declines_table(verdict: Verdict) -> list[str]:
    """Declined answers on in-scope and off-topic questions, candidate beside champion: a
    helpful adapter declines the second kind and not the first."""
    d = verdict.declines
    if d is None:
        return []
    rows = [
        ("candidate", d.candidate_in_scope, d.candidate_off_topic, d.candidate_served_off_topic)
    ]
    if verdict.champion is not None:
        rows.append(
            ("champion", d.champion_in_scope, d.champion_off_topic, d.champion_served_off_topic)
        )
    served = d.served_off_topic_n > 0
    head = (
        f"| declined | in-scope questions (n={d.in_scope_n}) | "
        f"off-topic questions, asked alone (n={d.off_topic_n}) |"
    )
    if served:
        head += f" off-topic, as served: with retrieval (n={d.served_off_topic_n}) |"
    return [
        "",
        head,
        "|---|---|---|" + ("---|" if served else ""),
        *(
            f"| {who} | {_pct(a)} | {_pct(b)} |" + (f" {_pct(c)} |" if served else "")
            for who, a, b, c in rows
        ),
    ]


def chart(verdict: Verdict, path: Path) -> Path:
    """Candidate and champion per metric, with their confidence intervals and the floors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in verdict.metrics if not math.isnan(m.candidate)]
    height = max(2.4, 0.42 * len(metrics) + 1.2)
    fig, ax = plt.subplots(figsize=(7.5, height), dpi=100)
    ys = list(range(len(metrics)))
    floors = {k: v for k, v in verdict.policy.get("floors", {}).items()}

    def bar(
        offset: float, values: list[float], cis: list[tuple[float, float]], label: str, color: str
    ) -> None:
        lows = [max(0.0, v - lo) for v, (lo, _) in zip(values, cis, strict=True)]
        highs = [max(0.0, hi - v) for v, (_, hi) in zip(values, cis, strict=True)]
        ax.barh(
            [y + offset for y in ys],
            values,
            height=0.36,
            color=color,
            label=label,
            xerr=[lows, highs],
            capsize=3,
            error_kw={"elinewidth": 1},
        )

    bar(
        -0.19,
        [m.candidate for m in metrics],
        [m.candidate_ci for m in metrics],
        "candidate",
        "#2f7ed8",
    )
    with_champion = [m for m in metrics if m.champion is not None and m.champion_ci is not None]
    if with_champion and len(with_champion) == len(metrics):
        bar(
            0.19,
            [float(m.champion or 0.0) for m in metrics],
            [m.champion_ci or (0.0, 0.0) for m in metrics],
            "champion",
            "#a0a0a0",
        )
    for y, m in zip(ys, metrics, strict=True):
        if m.metric in floors:
            ax.plot([floors[m.metric]] * 2, [y - 0.42, y + 0.42], color="#d9534f", linewidth=1.5)
        if not m.passed:
            ax.text(1.02, y, "FAIL", color="#d9534f", va="center", fontsize=8, fontweight="bold")
    ax.plot([], [], color="#d9534f", label="floor")
    ax.set_yticks(ys, [m.metric for m in metrics], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("mean score (bars: bootstrap confidence interval)")
    status = "passed" if verdict.passed else "FAILED"
    ax.set_title(f"gate {status}: {verdict.adapter}@{verdict.version[:24]}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.9 / height), ncol=3)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
