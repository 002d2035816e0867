"""Talking to vLLM replicas: the serving config, an HTTP client for vLLM's OpenAI-compatible
server with dynamic LoRA loading, and a `Generator` that answers through a served name.

    from slmops.serving.client import load_serving_config, VLLMClient
    config = load_serving_config(".slmops/stack/serving.yaml")
    client = VLLMClient(config.replicas[0])
    client.adapters()                      # served name -> folder it was loaded from

The servers must run with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`.
Requests are retried on transient failures only (refused or dropped connections, timeouts,
502/503/504); anything else is a `ServingError` carrying the server's own message.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import httpx
import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator

from slmops.errors import ConfigError, SlmopsError, TransientError, validation_problems
from slmops.generation import DEFAULT_MAX_NEW_TOKENS, Prompt, Reply


class ServingError(SlmopsError):
    """A replica answered, but refused or failed what was asked (a load, a request)."""


class ReplicaUnavailableError(ServingError, TransientError):
    """A replica could not be reached, timed out, or answered 502/503/504."""


class Replica(BaseModel):
    """One vLLM server, and what it serves (slmops cannot ask vLLM for all of it)."""

    url: str = Field(description="Base URL, e.g. http://10.0.0.5:8000 (no /v1).")
    model: str = Field(description="The served base model name (vLLM --served-model-name).")
    revision: str = Field(
        description="Base model revision the server runs: adapters trained on another "
        "revision are refused (they do not transfer)."
    )
    weights: str | None = Field(
        None,
        description="The revision's weights digest (slmops.base_models.weights_digest), when "
        "known: an adapter trained on another revision with the same digest (a release that "
        "changed only the model card) is served as if trained on this one.",
    )
    max_lora_rank: int = Field(16, ge=1, description="The server's --max-lora-rank.")
    dtype: str | None = Field(
        None,
        description="The server's --dtype (e.g. bfloat16): the numerics the model is served "
        "with, recorded with every answer the gate takes from it.",
    )
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the server's API key (vLLM "
        "--api-key). The key itself never goes into a config file.",
    )

    set: str | None = Field(
        None,
        description="The replica set it belongs to, behind the router (default: the first 12 "
        "characters of its revision: one set per base revision).",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} must start with http:// or https://")
        return url.rstrip("/")

    @field_validator("set")
    @classmethod
    def _check_set(cls, name: str | None) -> str | None:
        if name is not None:
            from slmops.serving.router import check_set_name

            try:
                check_set_name(name)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return name

    @property
    def set_name(self) -> str:
        return self.set or self.revision[:12]

    @property
    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"replica {self.url}: environment variable {self.api_key_env} (its API key) is "
                "not set"
            )
        return key


class RouterSettings(BaseModel):
    """The router in front of the replica sets (HAProxy, through its runtime API), and how a
    new set takes the traffic from the old one."""

    url: str = Field(description="Where clients call the stable name, e.g. http://10.0.0.4:8000.")
    admin: str = Field(
        description="HAProxy's admin socket (stats socket ... level admin): unix:/path/admin.sock "
        "or tcp:host:port."
    )
    canary: list[float] = Field(
        default_factory=lambda: [1.0, 5.0, 10.0, 50.0, 100.0],
        min_length=1,
        description="The new set's share of requests, in percent, step by step; the last must "
        "be 100.",
    )
    step_s: float = Field(
        30.0, ge=0, description="How long each canary step is watched before the next."
    )
    max_error_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="The share of the new set's requests that may fail (5xx, dropped) during a "
        "step; above it the traffic goes back to the old set and the promotion is undone.",
    )
    max_latency_ratio: float | None = Field(
        None,
        gt=0,
        description="The new set's mean response time (the router's, over each replica's "
        "last 1,024 requests) may be at most this many times the old set's; above it the "
        "traffic goes back. None: latency is not judged (CPU replicas are noisy).",
    )
    min_requests: int = Field(
        0,
        ge=0,
        description="Requests the new set must have answered during a step before its error "
        "rate is judged (0: judge whatever came; with no traffic, nothing failed).",
    )

    @field_validator("canary")
    @classmethod
    def _check_canary(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(steps) or steps[-1] != 100:
            raise ValueError(f"{steps}: shares in percent, rising, ending at 100")
        return steps


class ServingConfig(BaseModel):
    """The replicas one adapter is promoted to, and where they read adapter folders from."""

    replicas: list[Replica] = Field(min_length=1, description="Every vLLM server to serve on.")
    adapter_dir: str = Field(
        description="A directory every replica can read (shared volume): adapters are copied "
        "here from the store, one folder per served name (vLLM cannot read s3://)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per request to a replica.")
    smoke_cases: int = Field(
        5, ge=1, description="Golden prompts from the format suite each replica must pass."
    )
    drain_s: float = Field(
        30.0,
        ge=0,
        description="After a promotion, wait this long before unloading versions older than "
        "the previous champion (requests naming them may still be in flight).",
    )
    max_new_tokens: int = Field(96, ge=1, description="Tokens per smoke-test answer.")
    router: RouterSettings | None = Field(
        None,
        description="The router in front of the replicas: replicas are then grouped in sets, "
        "one per base revision, and an adapter trained on a new revision is promoted onto the "
        "set serving it, which then takes the traffic by router weights (blue/green). Without "
        "one, every replica must serve the adapter's base revision.",
    )
    _source: Path | None = PrivateAttr(None)

    def sets(self) -> dict[str, list[Replica]]:
        """Replicas by set name, in config order."""
        grouped: dict[str, list[Replica]] = {}
        for replica in self.replicas:
            grouped.setdefault(replica.set_name, []).append(replica)
        return grouped

    def current(self) -> ServingConfig:
        """This config with its replicas as its file says now. A serving operation calls it
        once it holds the adapter's serving claim: the file may have changed while it waited
        (a replica set started or retired), so what it read before it waited is not what it
        acts on. (Read from no file: itself.)"""
        if self._source is None:
            return self
        fresh = load_serving_config(self._source)
        return super().model_copy(update={"replicas": fresh.replicas})  # still read from the file

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; one given other replicas than its file's is read from no file any more
        (`current()` keeps the replicas it was given)."""
        copy = super().model_copy(update=update, deep=deep)
        if update and "replicas" in update:
            copy._source = None
        return copy


def resolve_serving_config(path: str | Path | None) -> ServingConfig:
    """The serving config at `path`, else at SLMOPS_SERVING; an error saying how to get one
    when neither is set."""
    from slmops.config import get_settings

    chosen = path or get_settings().serving
    if not chosen:
        raise ConfigError(
            "no serving config: pass one (--serving FILE, or the `serving` parameter: a YAML "
            "listing the vLLM replicas) or set SLMOPS_SERVING; `slmops stack up --vllm 2` "
            "starts local replicas and writes one"
        )
    return load_serving_config(chosen)


def load_serving_config(path: str | Path) -> ServingConfig:
    """Read a serving YAML; every problem names the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"serving config {path} does not exist: write one (docs/guides/serving.md) or "
            "start local replicas with `slmops stack up --vllm 2`"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"serving config {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"serving config {path}: expected a mapping with 'replicas'")
    try:
        config = ServingConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"serving config {path}: {validation_problems(exc)} "
            "(docs/reference/config.md#serving-config)"
        ) from None
    config._source = path
    return config


class VLLMClient:
    """One replica's HTTP API: health, served models, LoRA load/unload, chat completions."""

    def __init__(self, replica: Replica, *, timeout: float = 60.0, retries: int = 2):
        self.replica, self.url, self.retries = replica, replica.url, retries
        headers = {"Authorization": f"Bearer {replica.api_key}"} if replica.api_key_env else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VLLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                error: ServingError = ReplicaUnavailableError(
                    f"vLLM replica {self.url} unreachable ({type(exc).__name__}: {exc}) on "
                    f"{method} {path}"
                )
            else:
                if response.status_code < 400:
                    return response
                detail = _detail(response)
                if response.status_code in (502, 503, 504):
                    error = ReplicaUnavailableError(
                        f"vLLM replica {self.url} answered {response.status_code} to {method} "
                        f"{path}: {detail}"
                    )
                else:
                    raise ServingError(
                        f"vLLM replica {self.url} refused {method} {path} "
                        f"({response.status_code}): {detail}"
                    )
            if attempt == self.retries:
                raise error
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def health(self) -> None:
        """Raise ReplicaUnavailableError unless the server answers /health with 200."""
        self._request("GET", "/health")

    def models(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._request("GET", "/v1/models").json()["data"]
        return data

    def adapters(self) -> dict[str, str]:
        """Served LoRA names -> the folder each was loaded from (vLLM's `root`)."""
        return {m["id"]: m.get("root", "") for m in self.models() if m.get("parent")}

    def base_models(self) -> list[str]:
        return [m["id"] for m in self.models() if not m.get("parent")]

    def load(self, name: str, path: str | Path, *, inplace: bool = False) -> None:
        """Load the adapter folder `path` under `name`; `inplace` swaps an existing name's
        weights live (requests keep being answered)."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": str(path)}
        if inplace:
            body["load_inplace"] = True
        self._request("POST", "/v1/load_lora_adapter", json=body)

    def unload(self, name: str) -> None:
        self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})

    def version(self) -> str:
        """The server's vLLM version (GET /version)."""
        return str(self._request("GET", "/version").json().get("version", "unknown"))

    def chat(self, model: str, messages: Prompt, *, max_tokens: int = 96) -> Reply:
        """The reply of `model` (a base or LoRA name) to one chat, greedy (temperature 0);
        `cut` when the token limit stopped it (finish_reason "length")."""
        response = self._request(
            "POST",
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        )
        choice = response.json()["choices"][0]
        text = str(choice["message"]["content"] or "").strip()
        return Reply(text, cut=choice.get("finish_reason") == "length")

    def complete(self, model: str, prompt: list[int], *, max_tokens: int = 96) -> Reply:
        """The continuation of `model` to a prompt given as token ids, greedy (a chat the
        caller rendered and cut to the window itself)."""
        response = self._request(
            "POST",
            "/v1/completions",
            json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        )
        choice = response.json()["choices"][0]
        return Reply(str(choice["text"] or "").strip(), cut=choice.get("finish_reason") == "length")

    def window(self) -> int | None:
        """The served base model's context window (vLLM's max_model_len), if it says."""
        for model in self.models():
            if not model.get("parent") and model.get("max_model_len"):
                return int(model["max_model_len"])
        return None


def too_long(exc: ServingError) -> bool:
    """Did the replica refuse a prompt longer than its context window?"""
    text = str(exc)
    return "maximum context length" in text or "exceeds model's maximum context" in text


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("detail") or inner)[:300]
        return str(inner)[:300]
    return str(body)[:300]


class VLLMGenerator:
    """`Generator` over a served name: each prompt is one chat request, sent concurrently
    (vLLM batches them itself) and spread over the given replicas (each must serve `model`).

    A prompt longer than the replica's window is refused by vLLM; given the base model's
    folder (`tokenizer`), it is rendered here with the model's chat template, its middle cut
    as the transformers path cuts it (system prompt and question kept), and sent as token ids."""

    def __init__(
        self,
        client: VLLMClient | list[VLLMClient],
        model: str,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        workers: int = 8,
        dtype: str | None = None,
        tokenizer: str | Path | None = None,
        version: str | None = None,
    ):
        self.clients = client if isinstance(client, list) else [client]
        self.client, self.model = self.clients[0], model
        self.max_new_tokens, self.workers, self.dtype = max_new_tokens, workers, dtype
        self.version = version  # the servers' vLLM version, when the caller asked them
        self.tokenizer_path = tokenizer
        self._tokenizer: Any = None
        self._window: int | None = None
        self.cut = self.truncated = 0
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "vllm",
            "version": self.version,
            "url": ", ".join(c.url for c in self.clients),
            "model": self.model,
            "dtype": self.dtype,
            "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "replies_cut": self.cut,
            "prompts_truncated": self.truncated,
        }

    def _cut_to_window(self, client: VLLMClient, prompt: Prompt, limit: int) -> list[int]:
        with self._lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
                self._window = client.window()
            self.truncated += 1
        tokenizer: Any = self._tokenizer
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        ids: list[int] = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        room = max(16, (self._window or 4096) - limit)
        head = room // 2
        return ids[:head] + ids[-(room - head) :] if len(ids) > room else ids

    def generate(
        self,
        prompts: list[Prompt],
        on_progress: Callable[[int, int], None] | None = None,
        *,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        limit = max_new_tokens or self.max_new_tokens
        done = 0

        def one(item: tuple[int, Prompt]) -> str:
            nonlocal done
            i, prompt = item
            client = self.clients[i % len(self.clients)]
            try:
                reply = client.chat(self.model, prompt, max_tokens=limit)
            except ServingError as exc:
                if self.tokenizer_path is None or not too_long(exc):
                    raise
                ids = self._cut_to_window(client, prompt, limit)
                reply = client.complete(self.model, ids, max_tokens=limit)
            with self._lock:
                done += 1
                self.cut += reply.cut
                if on_progress:
                    on_progress(done, len(prompts))
            return reply

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(one, enumerate(prompts)))
