"""Store URIs, settings and secret redaction: bad input gets an error that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.config import Settings, get_settings
from slmops.errors import ConfigError, StoreError
from slmops.store import open_store, parse_store_uri
from slmops.store.local import LocalStore
from slmops.store.manifest import REDACTED, Manifest, redact
from slmops.store.s3 import S3Store


def test_s3_uri_picks_the_s3_backend_with_endpoint_from_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLMOPS_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("SLMOPS_S3_REGION", "eu-west-1")
    store = open_store("s3://my-bucket/team/prod/")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url, store.region) == (
        "my-bucket",
        "team/prod",
        "http://127.0.0.1:9000",
        "eu-west-1",
    )
    assert store.uri == "s3://my-bucket/team/prod"


def test_directory_and_file_uris_pick_the_local_backend(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    local = open_store(f"file://{tmp_path}/x")
    assert isinstance(local, LocalStore) and local.root == tmp_path / "x"


def test_default_store_comes_from_slmops_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLMOPS_STORE", str(tmp_path / "from-env"))
    assert open_store().uri == str(tmp_path / "from-env")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "empty store URI"),
        ("s3://", "has no bucket"),
        ("s3:///prefix", "has no bucket"),
        ("s3://B", "not a valid S3 bucket name"),
        ("s3://Upper_Case", "not a valid S3 bucket name"),
        ("s3://ok-bucket/a/../b", "invalid object key"),
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("file://host/x", "file URIs take no host"),
    ],
)
def test_malformed_store_uris_are_explained(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_store_uri(uri)


def test_bucket_that_does_not_exist_names_bucket_and_fix(s3_endpoint: str) -> None:
    store = open_store("s3://no-such-bucket-here/x", endpoint_url=s3_endpoint)
    with pytest.raises(ConfigError, match=r"bucket 'no-such-bucket-here' does not exist.*create"):
        store.get_bytes("anything")
    with pytest.raises(ConfigError, match="does not exist"):
        store.put_bytes("anything", b"x")


def test_unreachable_s3_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # boto3's own knob; retries are tested by boto3
    store = open_store("s3://some-bucket", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StoreError, match=r"cannot reach S3 at s3://some-bucket"):
        store.get_bytes("x")


def test_settings_read_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLMOPS_STORE", raising=False)
    (tmp_path / ".env").write_text(
        "SLMOPS_STORE=s3://from-dotenv/p\nSLMOPS_SERVING=/etc/slmops/serving.yaml\n"
    )
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.store == "s3://from-dotenv/p"
    assert settings.serving == "/etc/slmops/serving.yaml"


def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMOPS_S3_MULTIPART_MB", "1")
    with pytest.raises(ValueError, match=r"s3_multipart_mb[\s\S]*greater than or equal to 5"):
        Settings()


def test_secrets_never_reach_a_manifest() -> None:
    config = {
        "lr": 3e-3,
        "hf_token": "hf_abc",
        "nested": {"aws_secret_access_key": "SECRET", "endpoint": "http://me:pw@host:9000/x"},
        "headers": [{"Authorization": "Bearer t"}],
        "api_key": None,
    }
    cleaned = redact(config)
    assert cleaned["lr"] == 3e-3 and cleaned["api_key"] is None
    assert cleaned["hf_token"] == REDACTED
    assert cleaned["nested"]["aws_secret_access_key"] == REDACTED
    assert cleaned["nested"]["endpoint"] == "http://***@host:9000/x"
    assert cleaned["headers"][0]["Authorization"] == REDACTED
    dumped = Manifest(kind="adapter", name="x", config=config).model_dump_json()
    for secret in ("hf_abc", "SECRET", "me:pw", "Bearer t"):
        assert secret not in dumped


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("hf_token", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("apiKey", True),
        ("Authorization", True),
        ("db_password", True),
        ("max_tokens", False),
        ("tokens_seen", False),
        ("tokenizer", False),
        ("monkey", False),
    ],
)
def test_only_secret_looking_keys_are_masked(key: str, secret: bool) -> None:
    assert (redact({key: "value"})[key] == REDACTED) is secret
