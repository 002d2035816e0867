"""Embedding fan-out: ingest-docs embeds its new chunks in shards on a real Dask cluster (a
scheduler and two workers, each a process of its own under a nanny, on loopback) through
Prefect's Dask task runner, with the store on the real S3 server. The index must be the one
the single-process path builds, and a worker killed mid-run must cost its shard only."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.ingest_throughput import generate_corpus
from infra import dask_cluster
from slmops.errors import ConfigError
from slmops.pipelines.ingest import run_ingest
from slmops.rag.embedding import (
    EmbedShard,
    ShardsFailed,
    clear_checkpoints,
    embed,
    embed_fanned_out,
    embed_shard,
    run_shards_here,
)
from slmops.rag.index_files import DOCS, EMBEDDINGS, NODES
from slmops.rag.ingest_config import IngestConfig
from slmops.rag.plan import prepare
from slmops.store.base import ObjectStore
from slmops.store.local import LocalStore
from slmops.store.s3 import S3Store
from slmops.store.versions import INDEXES, VersionedArtifact
from tests.helpers import free_port, make_bucket, read_task_runs, task_runs

CONFIG = IngestConfig(chunk_size=64, chunk_overlap=8, checkpoint_every=12, batch_size=6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fanout") / "docs"
    generate_corpus(folder, 16)
    return folder


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The index the single-process path builds from the corpus: its files."""
    work = tmp_path_factory.mktemp("reference")
    store = LocalStore(work / "store")
    report = run_ingest(str(corpus), store, "docs", CONFIG, workdir=work / "w", evaluate=False)
    assert report.version and report.chunks_embedded > 4 * CONFIG.checkpoint_every
    return index_files(store)


def index_files(store: ObjectStore) -> dict[str, bytes]:
    art = VersionedArtifact(store, INDEXES, "docs")
    version = art.resolve("latest").version
    return {name: art.read_file(version, name) for name in (NODES, DOCS, EMBEDDINGS)}


def assert_same_index(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    # Same chunks (ids, text hashes, order) and the same document table, byte for byte ...
    assert got[NODES] == want[NODES]
    assert got[DOCS] == want[DOCS]
    # ... and the same vectors: each shard is the block the single process embeds as one
    # call, so the model sees the same batches. Equal to float32 rounding, not always bit for
    # bit: torch sums in another order with another thread count (1 per worker here, 2 in this
    # process); the benchmark has seen 1e-7.
    from io import BytesIO

    a, b = (np.load(BytesIO(x[EMBEDDINGS])) for x in (got, want))
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    assert np.abs(a - b).max() <= 1e-6, np.abs(a - b).max()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, prefect_harness: None
) -> Iterator[tuple[dask_cluster.Cluster, Path]]:
    from prefect.settings import PREFECT_API_URL

    faults = tmp_path_factory.mktemp("faults")
    started = dask_cluster.start(
        tmp_path_factory.mktemp("dask"),
        2,
        port=free_port(),
        threads=1,
        env={
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "SLMOPS_S3_ENDPOINT_URL": s3_endpoint,
            "SLMOPS_TEST_FANOUT_DIR": str(faults),
        },
        preload="tests.dask_faults",
    )
    yield started, faults
    started.stop()


def s3_store(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    monkeypatch.setenv("SLMOPS_S3_ENDPOINT_URL", endpoint)
    return S3Store(make_bucket(endpoint), "prod", endpoint_url=endpoint, region="us-east-1")


def encoded_by_worker(faults: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    log = faults / "encoded.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        pid, texts = map(int, line.split())
        counts[pid] = counts.get(pid, 0) + texts
    return counts


def ingest_on(cluster: dask_cluster.Cluster, corpus: Path, store: S3Store) -> Any:
    """Run ingest-docs with its embedding on `cluster`; returns the flow run's final state."""
    from flows.ingest_docs import IngestDocsParams, ingest_docs

    params = IngestDocsParams(
        source=str(corpus), store=store.uri, config=CONFIG, cluster=cluster.address
    )
    return ingest_docs(params, return_state=True)


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_embeds_in_shards_on_a_dask_cluster_and_builds_the_same_index(
    cluster: tuple[dask_cluster.Cluster, Path],
    corpus: Path,
    reference: dict[str, bytes],
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started, faults = cluster
    store = s3_store(s3_endpoint, monkeypatch)
    (faults / "encoded.log").unlink(missing_ok=True)
    state = ingest_on(started, corpus, store)
    report = state.result()
    assert report.version and report.chunks_embedded == report.chunks_total
    assert_same_index(index_files(store), reference)
    # Every chunk was embedded on a worker, once; both workers took shards.
    by_worker = encoded_by_worker(faults)
    assert sum(by_worker.values()) == report.chunks_total, by_worker
    assert len(by_worker) == 2 and os.getpid() not in by_worker, by_worker
    # The shards are task runs of the flow run, as the Prefect UI shows them.
    shards = -(-report.chunks_total // CONFIG.checkpoint_every)
    names = task_runs(state.state_details.flow_run_id)
    assert sorted(n for n in names if n.startswith("embed-shard-")) == sorted(
        f"embed-shard-{i}" for i in range(shards)
    )
    # The shard inputs are gone; the checkpoints went with the publish.
    assert not list(store.list_objects(f"{INDEXES}/docs/work/"))


@pytest.mark.usefixtures("prefect_harness")
def test_a_worker_killed_mid_run_costs_its_shard_only(
    cluster: tuple[dask_cluster.Cluster, Path],
    corpus: Path,
    reference: dict[str, bytes],
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started, faults = cluster
    store = s3_store(s3_endpoint, monkeypatch)
    (faults / "encoded.log").unlink(missing_ok=True)
    (faults / "crash").touch()  # the first worker to start its second block dies there
    state = ingest_on(started, corpus, store)
    report = state.result()
    assert not (faults / "crash").exists() and list(faults.glob("crashed-*"))
    assert report.version
    assert_same_index(index_files(store), reference)
    # The dead worker's shard was embedded again; no other shard was embedded twice.
    assert sum(encoded_by_worker(faults).values()) == report.chunks_total
    # Dask ran the lost shard again on a live worker; its task run ends Completed, as all do.
    runs = asyncio.run(read_task_runs(state.state_details.flow_run_id))
    states = {r.name: r.state_type.value for r in runs if r.name.startswith("embed-shard-")}
    assert set(states.values()) == {"COMPLETED"}, states
    started.wait_workers(2, timeout=60)  # its nanny brought the worker back


def test_failed_shards_leave_the_finished_ones_checkpointed_for_the_next_run(
    corpus: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    work = tmp_path / "w"
    plan = prepare(str(corpus), store, "docs", CONFIG, work)
    calls: list[int] = []

    def second_fails(shards: list[EmbedShard]) -> Iterator[tuple[EmbedShard, BaseException | None]]:
        for shard, error in run_shards_here([s for s in shards if s.number != 1]):
            calls.append(shard.number)
            yield shard, error
        for shard in shards:
            if shard.number == 1:
                calls.append(1)
                yield shard, RuntimeError("worker lost")

    with pytest.raises(ShardsFailed, match=r"1 of \d+ shards failed 3 times .*worker lost"):
        embed_fanned_out(store, "docs", CONFIG, work, run_shards=second_fails)
    assert calls.count(1) == 3 and calls.count(0) == 1  # only the failed shard was run again
    stats = embed(store, "docs", CONFIG, work)  # the next run resumes from the checkpoints
    assert stats.embedded == CONFIG.checkpoint_every
    assert stats.resumed == plan.new_chunks - CONFIG.checkpoint_every
    # and nothing of the failed run's shard inputs is left in the store
    left = [i.key for i in store.list_objects(f"{INDEXES}/docs/work/")]
    assert left and not [k for k in left if k.endswith(".jsonl")], left
    # Inputs a killed run could not delete go with the next publish, as the checkpoints do.
    prefix = left[0].rsplit("/", 1)[0]  # the run's checkpoint folder
    store.put_bytes(f"{prefix}-shards/killed-run/00000.jsonl", b"{}\n")
    clear_checkpoints(store, "docs", stats.model_id)
    assert not list(store.list_objects(f"{INDEXES}/docs/work/"))


def test_a_worker_with_another_embedding_model_refuses_its_shard(
    corpus: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("in.jsonl", json.dumps({"hash": "h", "text": "t"}).encode() + b"\n")
    shard = EmbedShard(
        store=store.uri,
        index="docs",
        number=0,
        of=1,
        texts="in.jsonl",
        checkpoint="out.npz",
        chunks=1,
        embed_model=None,
        model_id="other-model@0123456789ab",
        batch_size=8,
    )
    with pytest.raises(ConfigError, match=r"shard 1/1 of index docs .*other-model@0123456789ab"):
        embed_shard(shard)
    assert not store.exists("out.npz")
