"""The retry rule: only transient failures (a connection refused, a timeout, a 5xx from S3)
are retried; bad input, damaged data, a lost race and bugs fail at once."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from slmops.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    ObjectNotFoundError,
    StoreError,
    StoreUnavailableError,
    is_transient,
)
from slmops.store.s3 import S3Store
from tests.helpers import free_port


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (StoreUnavailableError("S3 down"), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (StoreError("invalid object key"), False),
        (IntegrityError("corrupt"), False),
        (ConflictError("lost the race"), False),
        (ObjectNotFoundError("missing"), False),
        (ConfigError("bad setting"), False),
        (ValueError("bad input"), False),
        (KeyError("bug"), False),
        (TypeError("bug"), False),
        (OSError(28, "No space left on device"), False),
    ],
)
def test_only_transient_failures_count_as_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.mark.parametrize(
    ("raised", "calls"),
    [
        (StoreUnavailableError("S3 at http://127.0.0.1:1 did not answer"), 3),
        (ConnectionResetError("reset by peer"), 3),
        (IntegrityError("object is corrupt"), 1),
        (ConflictError("alias moved"), 1),
        (StoreError("invalid object key '/x'"), 1),
        (ValueError("a bug"), 1),
    ],
)
def test_tasks_retry_transient_failures_and_nothing_else(
    prefect_harness: None, raised: Exception, calls: int
) -> None:
    from prefect import flow, task

    from tasks.retries import RETRIES

    count = {"n": 0}

    @task(**{**RETRIES, "retry_delay_seconds": 0})
    def step() -> None:
        count["n"] += 1
        raise raised

    @flow
    def pipeline() -> None:
        step()

    state = pipeline(return_state=True)
    assert state.is_failed()
    assert count["n"] == calls  # 1 attempt + 2 retries for transient; 1 for everything else


def test_a_task_that_recovers_after_a_blip_succeeds(prefect_harness: None) -> None:
    from prefect import flow, task

    from tasks.retries import RETRIES

    count = {"n": 0}

    @task(**{**RETRIES, "retry_delay_seconds": 0})
    def step() -> int:
        count["n"] += 1
        if count["n"] == 1:
            raise StoreUnavailableError("S3 blipped")
        return 42

    @flow
    def pipeline() -> int:
        return step()

    assert pipeline() == 42 and count["n"] == 2


@pytest.fixture
def failing_s3() -> Iterator[dict[str, int]]:
    """An HTTP server answering every request with a chosen status, as a broken S3 would."""
    answer = {"status": 503, "port": free_port()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            code = "SlowDown" if answer["status"] == 503 else "AccessDenied"
            body = f"<Error><Code>{code}</Code><Message>no</Message></Error>".encode()
            self.send_response(answer["status"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_POST = _reply

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", answer["port"]), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield answer
    server.shutdown()


def test_s3_failures_map_to_transient_or_not(failing_s3: dict[str, int]) -> None:
    store = S3Store("slmops", endpoint_url=f"http://127.0.0.1:{failing_s3['port']}")
    with pytest.raises(StoreUnavailableError, match="SlowDown"):
        store.get_bytes("a/b")
    failing_s3["status"] = 403
    with pytest.raises(ConfigError, match="access denied") as denied:
        store.get_bytes("a/b")
    assert not is_transient(denied.value)
    closed = S3Store("slmops", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailableError, match="cannot reach S3"):
        closed.get_bytes("a/b")
