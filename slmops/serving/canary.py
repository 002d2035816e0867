"""Traffic through the router: the stable name's requests moved onto a replica set in canary
steps, each watched for failed requests (and latency) before the next; the shares put back
when a step fails."""

from __future__ import annotations

import time
from typing import Any

from slmops.errors import (
    PromotionError,
    SlmopsError,
)
from slmops.progress import Log
from slmops.serving.client import (
    RouterSettings,
)


def shift_traffic(
    settings: RouterSettings,
    target: str,
    log: Log = lambda _: None,
    *,
    instant: bool = False,
    urls: list[str] | None = None,
) -> dict[str, float]:
    """Move the stable name's requests onto replica set `target` through the router: in the
    canary steps (or at once: `instant`, for a rollback), each watched for `step_s`; when the
    share of the target's requests that failed during a step exceeds `max_error_rate`, the
    shares go back to what they were and the error says so. `urls`: the set's replicas as the
    serving config lists them, added to the router (with no traffic) if it lacks them, so a
    new set needs no step of its own. Returns the shares afterwards."""
    from slmops.serving.router import HAProxyRuntime

    router = HAProxyRuntime(settings.admin)
    if urls:
        router.add_set(target, urls)
    start = router.shares(healthy_only=False)
    if target not in start:
        raise PromotionError(
            f"replica set {target} is not in the router ({settings.admin}; sets: "
            f"{', '.join(start) or 'none'}): add its replicas to the router first"
        )
    if start[target] >= 100:
        return start
    router.wait_up(target)
    others = {name: share for name, share in start.items() if name != target and share > 0}
    total = sum(others.values())
    steps = [100.0] if instant or not total else [s for s in settings.canary if s > start[target]]
    servers = [s.name for s in router.sets()[target]]
    try:
        _canary(router, settings, target, servers, start, others, steps, instant, log)
    except (SlmopsError, OSError):
        try:
            router.set_shares(start)
        except (SlmopsError, OSError) as exc:
            log(f"could not put the router's shares back ({exc}): `slmops serve sync` does it")
        raise
    return router.shares(healthy_only=False)


def _canary(
    router: Any,
    settings: RouterSettings,
    target: str,
    servers: list[str],
    start: dict[str, float],
    others: dict[str, float],
    steps: list[float],
    instant: bool,
    log: Log,
) -> None:
    total = sum(others.values())
    for share in steps:
        split = {target: share, **{n: (100 - share) * v / total for n, v in others.items()}}
        before = router.counters()
        router.set_shares(split)
        log(f"traffic: replica set {target} takes {share:g}% of the requests")
        if instant:
            break
        time.sleep(settings.step_s)
        after = router.counters()
        sent = sum(after[n][0] - before.get(n, (0, 0))[0] for n in servers)
        failed = sum(after[n][1] - before.get(n, (0, 0))[1] for n in servers)
        if sent >= max(settings.min_requests, 1) and failed / sent > settings.max_error_rate:
            raise PromotionError(
                f"replica set {target} failed {failed} of {sent} requests at {share:g}% of the "
                f"traffic (more than max_error_rate {settings.max_error_rate:g}): the traffic "
                f"went back to {', '.join(f'{n} {v:g}%' for n, v in start.items() if v)}"
            )
        if sent < settings.min_requests:
            raise PromotionError(
                f"replica set {target} answered {sent} requests at {share:g}% of the traffic, "
                f"fewer than min_requests {settings.min_requests} to judge it by: the traffic "
                "went back"
            )
        if settings.max_latency_ratio and sent:
            _judge_latency(router, settings.max_latency_ratio, target, servers, share)


def _judge_latency(
    router: Any, ratio: float, target: str, servers: list[str], share: float
) -> None:
    times = router.response_ms()
    new = [t for n, t in times.items() if n in servers and t]
    old = [t for n, t in times.items() if n not in servers and t]
    if new and old:
        new_ms, old_ms = sum(new) / len(new), sum(old) / len(old)
        if new_ms > ratio * old_ms:
            raise PromotionError(
                f"replica set {target} answered in {new_ms:.0f} ms on average at {share:g}% of "
                f"the traffic, more than max_latency_ratio {ratio:g} x the other sets' "
                f"{old_ms:.0f} ms: the traffic went back"
            )
