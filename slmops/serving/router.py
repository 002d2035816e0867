"""The router in front of the vLLM replica sets: which set takes what share of the traffic.

A base-model release cannot be served by replicas of the old revision (adapters do not
transfer), so replicas are grouped in sets, one per base revision, and clients reach the
stable name through a router that splits requests between sets by weight. A new set starts
beside the old one with no traffic, gets the adapter, and takes the traffic by weight changes;
the old set keeps running until it has drained.

The router is HAProxy, driven through its runtime API (the admin socket): a weight change, a
new server or a drained one takes effect in the running process, with no reload, so no
connection is dropped (benchmarks/router_switch.py measures it against a reload and against
Caddy's admin API). A set is one HAProxy server per replica, named `<set>-<i>`, with an HTTP
health check on vLLM's /health: a replica that is down or not ready receives nothing whatever
its weight.

    from slmops.serving.router import HAProxyRuntime
    router = HAProxyRuntime("unix:/path/admin.sock")
    router.add_set("r2", ["http://127.0.0.1:8101"])        # weight 0: no traffic yet
    router.set_shares({"r1": 90, "r2": 10})
    router.shares()                                        # {"r1": 90.2, "r2": 9.8}
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from slmops.errors import ConfigError, SlmopsError, TransientError

BACKEND = "replica_sets"  # the HAProxy backend the stable name's requests go to
MAX_WEIGHT = 256  # HAProxy's largest server weight
_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_NOT_CHECKED = {"0", "1"}  # HAProxy HCHK_STATUS_UNKNOWN, HCHK_STATUS_INI
_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,40}$")


class RouterError(SlmopsError):
    """The router refused a change or answered something unexpected."""


class RouterUnavailableError(RouterError, TransientError):
    """The router's admin socket could not be reached."""


@dataclass(frozen=True)
class Server:
    """One replica as the router sees it."""

    name: str  # <set>-<i>
    address: str  # host:port
    weight: int  # 0..256
    up: bool  # its last health check passed and it is not in maintenance
    maint: bool  # taken out of rotation by an operator (or not enabled yet)

    @property
    def set(self) -> str:
        return self.name.rsplit("-", 1)[0]


def check_set_name(name: str) -> str:
    if not _SET_NAME.match(name):
        raise ConfigError(
            f"replica set name {name!r}: use letters, digits, '_' or '.' (at most 41 "
            "characters), e.g. r1 or tiny-llama's revision's first 12 hex digits"
        )
    return name


def server_weights(shares: Mapping[str, float], sizes: Mapping[str, int]) -> dict[str, int]:
    """Per-server weights that split traffic between sets as `shares` (percentages, summing
    to 100) say, each set's share spread evenly over its `sizes[set]` replicas. A set with a
    share above 0 gets at least weight 1 per server, so 1% canaries are not rounded away."""
    total = sum(shares.values())
    if any(v < 0 for v in shares.values()) or abs(total - 100) > 1e-6:
        raise ConfigError(
            f"set shares must be percentages of at least 0 that sum to 100, got {dict(shares)}"
        )
    missing = [s for s in shares if sizes.get(s, 0) < 1]
    if missing:
        raise RouterError(f"replica set(s) {', '.join(missing)} have no replica in the router")
    # The largest per-server weight gets MAX_WEIGHT; the others scale from it.
    per_server = {s: shares[s] / sizes[s] for s in shares}
    top = max(per_server.values())
    weights = {}
    for s, v in per_server.items():
        w = round(v / top * MAX_WEIGHT) if top else 0
        weights[s] = max(w, 1) if v > 0 else 0
    return weights


class HAProxyRuntime:
    """HAProxy's runtime API over its admin socket (`stats socket ... level admin`).

    `admin` is `unix:/path/to/admin.sock` or `tcp:host:port` (production routers are often
    reached over TCP on a private address)."""

    def __init__(self, admin: str, backend: str = BACKEND, timeout: float = 5.0):
        self.admin, self.backend, self.timeout = admin, backend, timeout

    # -- transport --------------------------------------------------------------------------
    def command(self, line: str) -> str:
        """Send one command, return HAProxy's answer."""
        if self.admin.startswith("unix:"):
            family, address = socket.AF_UNIX, self.admin[5:]
        elif self.admin.startswith("tcp:"):
            host, _, port = self.admin[4:].rpartition(":")
            family, address = socket.AF_INET, (host, int(port))  # type: ignore[assignment]
        else:
            raise ConfigError(
                f"router admin {self.admin!r}: write unix:/path/to/admin.sock or tcp:host:port"
            )
        try:
            with socket.socket(family, socket.SOCK_STREAM) as conn:
                conn.settimeout(self.timeout)
                conn.connect(address)
                conn.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise RouterUnavailableError(
                f"router admin socket {self.admin} is not reachable ({exc}): is HAProxy "
                "running with `stats socket ... level admin`?"
            ) from exc
        return b"".join(chunks).decode(errors="replace")

    def _ok(self, line: str, *accepted: str) -> str:
        answer = self.command(line).strip()
        if answer and not any(a in answer for a in accepted):
            raise RouterError(f"router refused `{line}`: {answer}")
        return answer

    # -- reading ----------------------------------------------------------------------------
    def servers(self) -> list[Server]:
        """Every replica of every set, with its weight and health."""
        text = self.command(f"show servers state {self.backend}")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines or not lines[0].startswith("1"):
            raise RouterError(
                f"router has no backend {self.backend!r} (`show servers state` said: "
                f"{text.strip()[:200]})"
            )
        header = next((ln for ln in lines if ln.startswith("#")), None)
        if header is None:
            raise RouterError(f"unexpected `show servers state` answer: {text[:200]!r}")
        cols = header.lstrip("# ").split()
        found = []
        for ln in lines[1:]:  # the first line is the format's version
            if ln.startswith("#"):
                continue
            row = dict(zip(cols, ln.split(), strict=False))
            if row.get("be_name") != self.backend:
                continue
            admin_state = int(row["srv_admin_state"])
            found.append(
                Server(
                    name=row["srv_name"],
                    address=f"{row['srv_addr']}:{row['srv_port']}",
                    weight=int(row["srv_uweight"]),
                    # srv_op_state 2 = running (HAProxy's own verdict: `fall` failed checks
                    # in a row take a server down, `rise` passed ones bring it back, so one
                    # slow answer from a busy replica does not); admin bits 0x01 0x02 0x04
                    # 0x20 0x40 = the kinds of maintenance (forced, inherited, config,
                    # resolution, health); srv_check_status 0/1 = unknown/initialising: not
                    # checked yet (a server is assumed running until its first check, so not
                    # counted as up before it). Not srv_check_result: it reads 0 (unknown)
                    # while any check is in flight, and a busy replica's slow /health would
                    # read as down most of the time.
                    up=row["srv_op_state"] == "2"
                    and not admin_state & _MAINT
                    and row["srv_check_status"] not in _NOT_CHECKED,
                    maint=bool(admin_state & _MAINT),
                )
            )
        return found

    def sets(self) -> dict[str, list[Server]]:
        grouped: dict[str, list[Server]] = {}
        for server in self.servers():
            grouped.setdefault(server.set, []).append(server)
        return grouped

    def shares(self, *, healthy_only: bool = True) -> dict[str, float]:
        """Each set's share of new requests now, in percent: healthy servers' weights only (a
        down replica takes nothing, whatever its weight); `healthy_only=False`: the shares
        the weights say, whatever the health checks found (what a change must restore)."""
        weights = {
            name: sum(s.weight for s in servers if s.up or not healthy_only)
            for name, servers in self.sets().items()
        }
        total = sum(weights.values())
        return {n: round(100 * w / total, 1) if total else 0.0 for n, w in weights.items()}

    def requests(self) -> dict[str, int]:
        """Requests each replica has been sent since the router started (`<set>-<i>` ->
        HAProxy's cumulative session count)."""
        return {name: sent for name, (sent, _) in self.counters().items()}

    def _stats(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend's servers, by server name."""
        text = self.command("show stat")
        lines = text.splitlines()
        if not lines or not lines[0].startswith("# "):
            raise RouterError(f"unexpected `show stat` answer: {text[:200]!r}")
        cols = lines[0][2:].split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(cols, line.split(","), strict=False))
            if row.get("pxname") == self.backend and row.get("svname") not in (
                None,
                "BACKEND",
                "FRONTEND",
            ):
                rows[row["svname"]] = row
        return rows

    def counters(self) -> dict[str, tuple[int, int]]:
        """Per replica since the router started: requests sent, and those that failed (a 5xx
        answer, a connection that could not be made, a response cut off)."""
        return {
            name: (
                int(row.get("stot") or 0),
                sum(int(row.get(k) or 0) for k in ("hrsp_5xx", "econ", "eresp")),
            )
            for name, row in self._stats().items()
        }

    def response_ms(self) -> dict[str, int]:
        """Per replica: the mean response time of its last 1,024 requests (HAProxy's rtime),
        in milliseconds; 0 before any."""
        return {name: int(row.get("rtime") or 0) for name, row in self._stats().items()}

    # -- changing ---------------------------------------------------------------------------
    def add_set(self, name: str, urls: Sequence[str], *, check_interval_ms: int = 1000) -> None:
        """Add a set's replicas with weight 0 (no traffic) and health checks on. Replicas
        already there (same name and address) are left alone."""
        check_set_name(name)
        present = {s.name: s for s in self.servers()}
        for i, url in enumerate(urls):
            server, address = f"{name}-{i}", replica_address(url)
            if server in present:
                if present[server].address != address:
                    raise RouterError(
                        f"router already has {server} at {present[server].address}, not "
                        f"{address}: remove set {name} first"
                    )
                continue
            self._ok(
                f"add server {self.backend}/{server} {address} weight 0 check inter "
                f"{check_interval_ms} fall 3 rise 1",
                "New server registered",
            )
            self._ok(f"enable health {self.backend}/{server}")
            self._ok(f"enable server {self.backend}/{server}")

    def wait_up(self, name: str, timeout: float = 30.0, poll: float = 0.25) -> list[Server]:
        """Wait until every replica of set `name` has passed a health check."""
        deadline = time.monotonic() + timeout
        while True:
            servers = self.sets().get(name, [])
            down = [s.name for s in servers if not s.up]
            if servers and not down:
                return servers
            if time.monotonic() >= deadline:
                raise RouterError(
                    f"replica set {name}: "
                    + (f"{', '.join(down)} not healthy" if servers else "not in the router")
                    + f" after {timeout:.0f}s (the router checks GET /health)"
                )
            time.sleep(poll)

    def set_shares(self, shares: Mapping[str, float]) -> dict[str, int]:
        """Split new requests between sets (percentages summing to 100). Requests in flight
        finish where they are. Sets not named get 0. A share for a set none of whose replicas
        is healthy is refused (it would take nothing, and the others would be short). Returns
        the per-server weights set."""
        grouped = self.sets()
        full = {name: float(shares.get(name, 0)) for name in grouped}
        unknown = set(shares) - set(grouped)
        if unknown:
            raise RouterError(f"router has no replica set {', '.join(sorted(unknown))}")
        dark = [n for n, v in full.items() if v > 0 and not any(s.up for s in grouped[n])]
        if dark:
            raise RouterError(
                f"replica set(s) {', '.join(dark)} have no healthy replica: no share moved"
            )
        weights = server_weights(full, {n: len(s) for n, s in grouped.items()})
        # Raise the receiving side first, then lower the other: the backend never has all
        # weights at 0 in between.
        order = sorted(grouped, key=lambda n: weights[n] == 0)
        for name in order:
            for server in grouped[name]:
                if server.weight != weights[name]:
                    self._ok(f"set weight {self.backend}/{server.name} {weights[name]}")
        return weights

    def remove_set(self, name: str) -> list[str]:
        """Take a set's replicas out of the router. Refused while the set has a share: shift
        its traffic away (and let it drain) first."""
        servers = self.sets().get(name, [])
        live = [s.name for s in servers if s.weight > 0 and not s.maint]
        if live:
            raise RouterError(
                f"replica set {name} still takes traffic ({', '.join(live)} weight > 0): "
                "shift its share to another set first"
            )
        removed = []
        for server in servers:
            self._ok(f"set server {self.backend}/{server.name} state maint")
            self._ok(f"del server {self.backend}/{server.name}", "Server deleted")
            removed.append(server.name)
        return removed


def config_text(
    port: int,
    admin_socket: Path | str,
    sets: Mapping[str, Sequence[str]] | None = None,
    shares: Mapping[str, float] | None = None,
    *,
    host: str = "127.0.0.1",
    check_interval_ms: int = 1000,
) -> str:
    """haproxy.cfg: the stable name's frontend on host:port, one backend whose servers are
    the replicas of every set (`<set>-<i>`), weighted by `shares`, health-checked on vLLM's
    /health. Timeouts suit LLM requests (minutes), connections are kept alive."""
    sets = dict(sets or {})
    weights = (
        server_weights(
            {s: float((shares or {}).get(s, 0)) for s in sets}, {s: len(u) for s, u in sets.items()}
        )
        if sets and shares
        else {s: 0 for s in sets}
    )
    lines = [
        "# Written by slmops: HAProxy, the router in front of the vLLM replica sets.",
        "# Sets and weights change at run time through the admin socket; this file is what a",
        "# restarted router starts with.",
        "global",
        _stats_socket(str(admin_socket)),
        "  maxconn 4096",
        "defaults",
        "  mode http",
        "  option httplog",
        "  option http-keep-alive",
        "  timeout connect 5s",
        "  timeout client 600s",
        "  timeout server 600s",  # a long completion is not a dead server
        "  timeout http-keep-alive 60s",
        # A busy replica answers /health slowly: 5 s, and 3 failed checks, before it is down.
        "  timeout check 5s",
        # A request that could not connect (a replica that just went away) is sent to another.
        "  retries 2",
        "  option redispatch 1",
        "frontend stable_name",
        f"  bind {host}:{port}",
        f"  default_backend {BACKEND}",
        f"backend {BACKEND}",
        "  balance roundrobin",
        "  option httpchk GET /health",
        "  http-check expect status 200",
        f"  default-server inter {check_interval_ms} fall 3 rise 1",
    ]
    for name, urls in sets.items():
        check_set_name(name)
        for i, url in enumerate(urls):
            lines.append(f"  server {name}-{i} {replica_address(url)} weight {weights[name]} check")
    return "\n".join(lines) + "\n"


def _stats_socket(admin: str) -> str:
    """The `stats socket` line for an admin address as RouterSettings.admin writes it
    (unix:/path or tcp:host:port) or a plain path."""
    if admin.startswith("tcp:"):
        return f"  stats socket ipv4@{admin[4:]} level admin"
    path = admin[5:] if admin.startswith("unix:") else admin
    return f"  stats socket {path} mode 600 level admin"


def replica_address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise ConfigError(f"replica url {url!r}: the router needs http://host:port")
    return f"{parts.hostname}:{parts.port}"
