"""The report of a promotion or rollback, as a person reads it on the run's page: what clients
now get under the stable name, where, the smoke test per replica, the router's shares and the
timings."""

from __future__ import annotations

from slmops.serving.promotion import PromotionResult


def promotion_report(title: str, result: PromotionResult) -> str:
    """Markdown for a promotion or rollback's result."""
    rows = "\n".join(f"| {url} | {result.smoke.get(url, '-')} |" for url in result.replicas)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    where = "every replica of its base revision's set" if result.traffic else "every replica"
    traffic = ", ".join(f"set {n} {v:g}%" for n, v in result.traffic.items())
    return (
        f"## {title}: {result.adapter}@{result.version}\n\n"
        f"Clients call **`{result.adapter}`**; it now serves `{result.name}` on {where}. "
        f"Previous champion: `{result.previous or 'none'}` (kept loaded: rollback is one step).\n\n"
        + (f"Router: {traffic} of the requests.\n\n" if traffic else "")
        + f"| replica | smoke prompts passed |\n|---|---|\n{rows}\n\n"
        f"Timings: {timings}.\n\n"
        + (f"Unloaded after the drain: {', '.join(result.unloaded)}.\n" if result.unloaded else "")
    )
