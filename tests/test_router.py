"""The router in front of the replica sets: a real HAProxy (started in milliseconds), driven
through its admin socket. Upstreams here are small HTTP servers that answer like a replica's
/health; the same router in front of real vLLM replicas, under load, is in
test_vllm_promotion.py."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest

from infra import haproxy
from slmops.errors import ConfigError
from slmops.serving.router import (
    HAProxyRuntime,
    RouterError,
    RouterUnavailableError,
    server_weights,
)
from tests.helpers import free_port, invoke, validate_k8s


class _Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # health checks hang up early


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    failing: set[int] = set()  # ports whose POSTs answer 500 (their /health stays fine)
    slow: set[int] = set()  # ports whose POSTs take 0.3 s instead of 0.02 s
    slow_health: dict[int, float] = {}  # ports whose GETs (the health check) take this long

    def _answer(self, status: int) -> None:
        body = json.dumps({"port": cast(http.server.HTTPServer, self.server).server_port}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        time.sleep(self.slow_health.get(cast(http.server.HTTPServer, self.server).server_port, 0))
        self._answer(200)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        port = cast(http.server.HTTPServer, self.server).server_port
        time.sleep(0.3 if port in self.slow else 0.02)
        self._answer(500 if port in self.failing else 200)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstreams() -> Iterator[list[str]]:
    servers = [_Upstream(("127.0.0.1", 0), _Handler) for _ in range(3)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for s in servers:
        s.shutdown()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[haproxy.Router]:
    started = haproxy.start(tmp_path / "router", free_port())
    yield started
    started.stop()


def answered_by(url: str, n: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    with httpx.Client() as client:
        for _ in range(n):
            r = client.get(f"{url}/health")
            assert r.status_code == 200, r.text
            port = r.json()["port"]
            counts[port] = counts.get(port, 0) + 1
    return counts


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_weights_split_traffic_per_set_whatever_its_size() -> None:
    assert server_weights({"r1": 100, "r2": 0}, {"r1": 2, "r2": 1}) == {"r1": 256, "r2": 0}
    # 1% on a set of one against 99% on a set of two: the canary is not rounded away
    w = server_weights({"r1": 99, "r2": 1}, {"r1": 2, "r2": 1})
    assert w["r2"] >= 1 and abs(w["r2"] / (2 * w["r1"] + w["r2"]) - 0.01) < 0.005
    w = server_weights({"r1": 50, "r2": 50}, {"r1": 2, "r2": 1})
    assert 2 * w["r1"] == w["r2"]  # each set half the traffic
    with pytest.raises(ConfigError, match="sum to 100"):
        server_weights({"r1": 60, "r2": 60}, {"r1": 1, "r2": 1})
    with pytest.raises(RouterError, match="no replica"):
        server_weights({"r1": 100}, {"r1": 0})


def test_traffic_moves_between_sets_by_share_and_a_dark_set_gets_none(
    router: haproxy.Router, upstreams: list[str]
) -> None:
    rt = router.runtime
    blue, green, spare = upstreams
    rt.add_set("blue", [blue])
    rt.add_set("green", [green, spare])
    assert {s.weight for s in rt.servers()} == {0}  # added with no traffic
    rt.wait_up("blue", timeout=10)
    rt.wait_up("green", timeout=10)
    rt.set_shares({"blue": 100})
    assert rt.shares(healthy_only=False) == {"blue": 100.0, "green": 0.0}
    assert answered_by(router.url, 20) == {port_of(blue): 20}

    rt.set_shares({"blue": 50, "green": 50})
    counts = answered_by(router.url, 40)
    assert 15 <= counts[port_of(blue)] <= 25, counts  # half to blue, half to green's two replicas
    assert counts[port_of(green)] > 0 and counts[port_of(spare)] > 0, counts
    before = rt.requests()
    assert before["blue-0"] == 20 + counts[port_of(blue)]  # the router's own counters agree

    # A set still taking traffic cannot be removed; once its share is 0 it can.
    with pytest.raises(RouterError, match="still takes traffic"):
        rt.remove_set("green")
    rt.set_shares({"green": 100})
    assert answered_by(router.url, 10).keys() == {port_of(green), port_of(spare)}
    assert rt.requests()["blue-0"] == before["blue-0"]

    # A set whose replica does not answer its health check is never given a share.
    rt.add_set("dark", [f"http://127.0.0.1:{free_port()}"])
    with pytest.raises(RouterError, match="not healthy"):
        rt.wait_up("dark", timeout=3)
    with pytest.raises(RouterError, match="no healthy replica"):
        rt.set_shares({"green": 50, "dark": 50})
    assert rt.shares(healthy_only=False) == {"blue": 0.0, "green": 100.0, "dark": 0.0}
    assert rt.remove_set("dark") == ["dark-0"]
    assert rt.remove_set("blue") == ["blue-0"]
    assert set(rt.sets()) == {"green"}
    assert sum(answered_by(router.url, 6).values()) == 6


def test_a_busy_replica_whose_health_check_is_slow_stays_up_between_checks(
    router: haproxy.Router, upstreams: list[str]
) -> None:
    """A busy vLLM replica answers /health slowly. HAProxy reports no result while a check is in
    flight; that must not read as "down" (a canary step would refuse the set its share), while a
    replica not yet checked once still is not up."""
    rt = router.runtime
    busy, fresh, _ = upstreams
    _Handler.slow_health.update({port_of(busy): 0.4, port_of(fresh): 5.0})
    try:
        rt.add_set("busy", [busy], check_interval_ms=100)
        rt.wait_up("busy", timeout=10)
        rt.add_set("fresh", [fresh], check_interval_ms=100)
        reads = []
        deadline = time.monotonic() + 2.5  # several checks, each in flight 0.4 s of 0.5 s
        while time.monotonic() < deadline:
            reads.append({s.set: s.up for s in rt.servers()})
            time.sleep(0.02)
        assert len(reads) > 50
        assert all(r["busy"] for r in reads), sum(not r["busy"] for r in reads)
        assert not any(r["fresh"] for r in reads)  # its first check has not come back
        rt.set_shares({"busy": 100})
        with pytest.raises(RouterError, match="no healthy replica"):
            rt.set_shares({"busy": 50, "fresh": 50})
    finally:
        _Handler.slow_health.clear()


def test_bad_input_and_a_missing_router_are_named(
    router: haproxy.Router, upstreams: list[str], tmp_path: Path
) -> None:
    rt = router.runtime
    with pytest.raises(ConfigError, match="replica set name"):
        rt.add_set("blue-green", upstreams[:1])
    with pytest.raises(ConfigError, match="http://host:port"):
        rt.add_set("blue", ["http://127.0.0.1"])
    rt.add_set("blue", upstreams[:1])
    rt.add_set("blue", upstreams[:1])  # the same again: nothing to do
    with pytest.raises(RouterError, match="already has blue-0"):
        rt.add_set("blue", upstreams[1:2])
    with pytest.raises(RouterError, match="no replica set green"):
        rt.set_shares({"green": 100})
    with pytest.raises(ConfigError, match="unix:"):
        HAProxyRuntime("localhost:9999").servers()
    with pytest.raises(RouterUnavailableError, match="not reachable"):
        HAProxyRuntime(f"unix:{tmp_path / 'nothing.sock'}").servers()
    # A second router on the same port would share it silently (SO_REUSEPORT): refused.
    with pytest.raises(haproxy.RouterStartError, match="in use"):
        haproxy.start(tmp_path / "second", router.port)


def test_a_restarted_router_starts_with_the_sets_of_its_config(
    tmp_path: Path, upstreams: list[str]
) -> None:
    started = haproxy.start(
        tmp_path / "r", free_port(), {"blue": upstreams[:1], "green": upstreams[1:]}, {"green": 100}
    )
    try:
        started.runtime.wait_up("green", timeout=10)
        assert started.runtime.shares(healthy_only=False) == {"blue": 0.0, "green": 100.0}
        assert answered_by(started.url, 4).keys() <= {port_of(u) for u in upstreams[1:]}
    finally:
        started.stop()


def test_a_canary_that_fails_requests_gives_the_traffic_back(
    router: haproxy.Router, upstreams: list[str]
) -> None:
    """shift_traffic, as promotion runs it, against a set that passes its health check but
    answers 500 to requests (a fault a real vLLM replica cannot be made to produce on cue)."""
    from slmops.serving.canary import shift_traffic
    from slmops.serving.client import RouterSettings
    from slmops.serving.promotion import PromotionError

    rt = router.runtime
    rt.add_set("old", upstreams[:1])
    rt.add_set("bad", upstreams[2:])
    for name in ("old", "bad"):
        rt.wait_up(name, timeout=10)
    rt.set_shares({"old": 100})
    settings = RouterSettings(
        url=router.url, admin=rt.admin, canary=[10, 50, 100], step_s=0.6, max_error_rate=0.05
    )
    stop = threading.Event()

    def load() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                client.post(f"{router.url}/v1/chat/completions", json={})

    clients = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        said: list[str] = []
        # "new" is not in the router yet: its replicas as the serving config lists them join
        # with no traffic, pass their health check, then take it step by step.
        shifted = shift_traffic(settings, "new", said.append, urls=upstreams[1:2])
        assert shifted == {"old": 0, "bad": 0, "new": 100}
        assert [line.split(" takes ")[1] for line in said] == [
            "10% of the requests",
            "50% of the requests",
            "100% of the requests",
        ]
        _Handler.failing.add(port_of(upstreams[2]))
        with pytest.raises(PromotionError, match=r"bad failed \d+ of \d+ requests at 10%"):
            shift_traffic(settings, "bad", said.append)
        assert rt.shares(healthy_only=False) == {"old": 0.0, "new": 100.0, "bad": 0.0}
        # The same for a set that answers, but 15 times slower than the others.
        _Handler.failing.clear()
        _Handler.slow.add(port_of(upstreams[2]))
        slow = settings.model_copy(update={"max_latency_ratio": 3.0, "max_error_rate": 1.0})
        with pytest.raises(PromotionError, match=r"bad answered in \d+ ms on average at 10%"):
            shift_traffic(slow, "bad")
        assert rt.shares(healthy_only=False) == {"old": 0.0, "new": 100.0, "bad": 0.0}
        # A rollback moves everything at once, without watching.
        assert shift_traffic(settings, "old", instant=True)["old"] == 100.0
    finally:
        stop.set()
        for t in clients:
            t.join(10)
        _Handler.failing.clear()
        _Handler.slow.clear()
    with pytest.raises(PromotionError, match="not in the router"):
        shift_traffic(settings, "green")


def test_the_serving_config_groups_replicas_in_sets_and_finds_an_adapter_s_set(
    tmp_path: Path,
) -> None:
    from slmops.serving.client import ServingConfig, load_serving_config
    from slmops.serving.placement import base_mismatch, target_replicas, target_set
    from slmops.store.manifest import InputRef, Manifest

    def adapter(revision: str) -> Manifest:
        base = InputRef(kind="base-model", name="tiny", version=revision, sha256=f"w-{revision}")
        return Manifest(kind="adapter", name="bot", version="v1", inputs=[base])

    replicas = [
        {"url": "http://127.0.0.1:8100", "model": "tiny", "revision": "a" * 40},
        {"url": "http://127.0.0.1:8101", "model": "tiny", "revision": "a" * 40},
        {"url": "http://127.0.0.1:8102", "model": "tiny", "revision": "b" * 40, "set": "green"},
    ]
    router = {"url": "http://127.0.0.1:8000", "admin": "unix:/tmp/admin.sock"}
    config = ServingConfig.model_validate(
        {"replicas": replicas, "adapter_dir": "/tmp/a", "router": router}
    )
    assert {k: [r.url[-4:] for r in v] for k, v in config.sets().items()} == {
        "a" * 12: ["8100", "8101"],
        "green": ["8102"],
    }
    assert target_set(config, adapter("b" * 40)) == "green"
    assert [r.url for r in target_replicas(config, adapter("a" * 40))][-1].endswith("8101")
    why = base_mismatch(config, adapter("c" * 40), "bot@v1")
    assert why is not None and "no replica set behind the router serves it" in why
    assert f"green (tiny@{'b' * 12})" in why
    # Without a router, every replica must serve the adapter's base, as before.
    plain = config.model_copy(update={"router": None})
    assert target_set(plain, adapter("b" * 40)) is None
    assert "serves tiny@aaaaaaaaaaaa" in str(base_mismatch(plain, adapter("b" * 40), "bot@v1"))

    bad = tmp_path / "serving.yaml"
    for field, value, said in (
        ("canary", [10, 5, 100], "rising, ending at 100"),
        ("canary", [10, 50], "rising, ending at 100"),
        ("max_error_rate", 2, "router.max_error_rate"),
    ):
        doc = {"replicas": replicas, "adapter_dir": "/tmp/a", "router": {**router, field: value}}
        bad.write_text(json.dumps(doc))
        with pytest.raises(ConfigError, match=said) as info:
            load_serving_config(bad)
        assert str(bad) in str(info.value)
    doc = {"replicas": [{**replicas[0], "set": "blue-1"}], "adapter_dir": "/tmp/a"}
    bad.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="replica set name 'blue-1'"):
        load_serving_config(bad)


def test_retire_takes_out_only_a_set_without_traffic(
    router: haproxy.Router, upstreams: list[str], tmp_path: Path
) -> None:
    from slmops.serving.promotion import PromotionError
    from tests.helpers import invoke

    rt = router.runtime
    rt.add_set("old", upstreams[:1])
    rt.add_set("new", upstreams[1:2])
    rt.wait_up("old", timeout=10)
    rt.set_shares({"old": 100})
    replicas = [
        {"url": upstreams[0], "model": "tiny", "revision": "a" * 40, "set": "old"},
        {"url": upstreams[1], "model": "tiny", "revision": "b" * 40, "set": "new"},
    ]
    serving = tmp_path / "serving.yaml"
    router_cfg = {"url": router.url, "admin": rt.admin}
    doc = {"replicas": replicas, "adapter_dir": str(tmp_path), "router": router_cfg}
    serving.write_text(json.dumps(doc))
    cli = ("--serving", str(serving), "--store", str(tmp_path / "store"))
    with pytest.raises(PromotionError, match="still takes 100% of the requests"):
        invoke("serve", "retire", "old", *cli)
    with pytest.raises(PromotionError, match="no replica set gone"):
        invoke("serve", "retire", "gone", *cli)
    code, out = invoke("serve", "retire", "new", "--drain", "0.1", *cli)
    assert code == 0 and "new left the router (new-0)" in out, out
    assert set(rt.sets()) == {"old"}
    serving.write_text(json.dumps({"replicas": replicas, "adapter_dir": str(tmp_path)}))
    with pytest.raises(PromotionError, match="has no router"):
        invoke("serve", "retire", "old", *cli)


def test_router_config_for_a_router_run_by_hand_is_valid_haproxy(
    upstreams: list[str], tmp_path: Path
) -> None:
    import subprocess

    from tests.helpers import invoke

    replicas = [
        {"url": upstreams[0], "model": "tiny", "revision": "a" * 40, "set": "old"},
        {"url": upstreams[1], "model": "tiny", "revision": "b" * 40, "set": "new"},
        {"url": upstreams[2], "model": "tiny", "revision": "b" * 40, "set": "new"},
    ]
    port = free_port()
    sock = tmp_path / "admin.sock"
    router = {"url": f"http://127.0.0.1:{port}", "admin": f"unix:{sock}"}
    serving = tmp_path / "serving.yaml"
    serving.write_text(
        json.dumps({"replicas": replicas, "adapter_dir": str(tmp_path), "router": router})
    )
    cfg = tmp_path / "haproxy.cfg"
    code, out = invoke(
        "serve", "router-config", "--bind", f"127.0.0.1:{port}", "--out", str(cfg),
        "--serving", str(serving), "--store", str(tmp_path / "store"),
    )  # fmt: skip
    assert code == 0 and "set old takes the traffic" in out, out
    text = cfg.read_text()
    assert f"stats socket {sock} mode 600 level admin" in text
    assert "server old-0" in text and "weight 256" in text and "server new-1" in text
    check = subprocess.run([haproxy.binary(), "-c", "-f", str(cfg)], capture_output=True)
    assert check.returncode == 0, check.stdout
    # ... and a router started from it serves the old set and obeys the runtime API.
    proc = subprocess.Popen(haproxy.command(cfg), stderr=subprocess.DEVNULL)
    try:
        rt = HAProxyRuntime(f"unix:{sock}")
        for _ in range(50):
            if sock.exists():
                break
            time.sleep(0.1)
        rt.wait_up("old", timeout=10)
        assert answered_by(f"http://127.0.0.1:{port}", 4) == {port_of(upstreams[0]): 4}
    finally:
        proc.terminate()
        proc.wait(10)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        invoke("serve", "router-config", "--bind", "8000", "--serving", str(serving))


def test_the_promotion_report_says_where_the_traffic_went() -> None:
    from slmops.serving.promotion import PromotionResult
    from slmops.serving.report import promotion_report as _report

    result = PromotionResult(
        adapter="bot",
        version="v2",
        name="bot@abc",
        previous="v1",
        replicas=["http://127.0.0.1:8102"],
        smoke={"http://127.0.0.1:8102": 3},
        traffic={"r1": 0.0, "r2": 100.0},
    )
    text = _report("Promoted", result)
    assert "on every replica of its base revision's set" in text
    assert "Router: set r1 0%, set r2 100% of the requests." in text
    plain = _report("Promoted", result.model_copy(update={"traffic": {}}))
    assert "on every replica." in plain and "Router" not in plain


# -- the same sets as Kubernetes manifests behind a Gateway ---------------------------------------
K8S = Path(__file__).resolve().parent.parent / "infra" / "k8s"


def test_gateway_manifests_weight_the_sets_and_pass_the_gateway_api_schema(tmp_path: Path) -> None:
    """`slmops serve gateway-manifests`: a Service per replica set and an HTTPRoute whose
    weights split the stable name as the shares say, valid against the Kubernetes and Gateway
    API schemas; the manifests checked in under infra/k8s/ are what the command writes."""
    import yaml

    from slmops.serving.client import load_serving_config
    from slmops.serving.gateway import gateway_manifests

    config = load_serving_config(K8S / "serving.yaml")
    docs = gateway_manifests(config, {"r1": 90, "r2": 10}, name="support-bot", gateway="gw")
    code, out = validate_k8s(docs)
    assert code == 0, out
    assert out.split("\n")[:3] == [
        "valid Service support-bot-r1",
        "valid Service support-bot-r2",
        "valid HTTPRoute support-bot",
    ]
    route = docs[-1]
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [
        ("support-bot-r1", 900),
        ("support-bot-r2", 100),
    ]
    assert docs[0]["spec"]["selector"] == {"slmops.io/replica-set": "r1"}
    # the checked-in example is the command's output (the champion's set at 100%)
    code, text = invoke(
        "serve", "gateway-manifests", "--serving", str(K8S / "serving.yaml"), "--share", "r1=100"
    )
    assert code == 0 and text == (K8S / "gateway-support-bot.yaml").read_text()
    code, out = validate_k8s(list(yaml.safe_load_all(text)))
    assert code == 0, out
    # the validators do refuse what the schema does not allow
    broken = json.loads(json.dumps(docs))
    broken[-1]["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    broken[0]["spec"]["ports"][0]["port"] = "http"
    code, out = validate_k8s(broken)
    assert code == 1 and "weight must be >= 0" in out and "port must be integer" in out, out
    # bad input, named
    with pytest.raises(ConfigError, match="no replica set r3"):
        gateway_manifests(config, {"r3": 100}, name="support-bot", gateway="gw")
    with pytest.raises(ConfigError, match="sum to 100"):
        gateway_manifests(config, {"r1": 50}, name="support-bot", gateway="gw")
    with pytest.raises(ConfigError, match="not a Kubernetes name"):
        gateway_manifests(config, {"r1": 100}, name="Support_Bot-" + "x" * 60, gateway="gw")
    with pytest.raises(ConfigError, match="write SET=PERCENT"):
        invoke(
            "serve", "gateway-manifests", "--serving", str(K8S / "serving.yaml"), "--share", "r1"
        )
