"""Embedding fan-out benchmark: the new chunks of a generated corpus embedded in one process
(today's path) and in shards on a real local Dask cluster (scheduler and workers as separate
processes on loopback, through Prefect's Dask task runner), measured in the same run.

    python -m benchmarks.embed_fanout --docs 1000 --workers 1,2

For each worker count it prints chunks/s, the ratio to the single process, and how far its
vectors are from the single process's (each shard is the block the single process embeds as
one call, so the batches are the same; with another torch thread count the sums run in another
order, so expect equality to float32 rounding, ~1e-7, not always bit for bit). The cores are
divided among the workers (torch threads), so on one machine fan-out cannot beat the single
process by much: what it shows is the overhead of sharding, and that adding workers adds
throughput where they bring cores.
The models load on every worker before the timing starts, as the single process's does; the
single process is timed before and after the cluster runs (the machine's speed drifts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import free_port
from benchmarks.ingest_throughput import generate_corpus
from slmops.rag.embedding import embed, embed_fanned_out
from slmops.rag.ingest_config import IngestConfig
from slmops.rag.plan import prepare
from slmops.store.local import LocalStore


def _warm() -> str:
    """Run on every worker before the timing: load the model (as the single process has)."""
    from slmops.rag.embedder import get_embedder

    get_embedder().encode(["warm up"] * 4)
    return f"{os.getpid()}: torch threads {__import__('torch').get_num_threads()}"


def main(argv: list[str] | None = None) -> list[tuple[str, float, bool, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1000, help="generated corpus size")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--shard", type=int, default=128, help="chunks per shard (checkpoint)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import flow
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from infra import dask_cluster
    from slmops.rag.embedder import get_embedder
    from tasks.ingest import on_dask

    work = Path(tempfile.mkdtemp(prefix="slmops-fanout-"))
    config = IngestConfig(checkpoint_every=args.shard, batch_size=args.batch_size)
    store = LocalStore(work / "store")

    @flow(name="embed-fanout-benchmark")
    def fanned_out(name: str, workdir: Path, address: str) -> float:
        t = time.perf_counter()
        embed_fanned_out(store, name, config, workdir, run_shards=on_dask(address))
        return time.perf_counter() - t

    def workdir(name: str) -> Path:
        folder = work / name
        folder.mkdir()
        shutil.copy(work / "plan" / "new_chunks.jsonl", folder / "new_chunks.jsonl")
        return folder

    try:
        print(f"generating {args.docs} documents ...", flush=True)
        generate_corpus(work / "docs", args.docs)
        plan = prepare(str(work / "docs"), store, "plan", config, work / "plan")
        chunks = plan.new_chunks
        shards = -(-chunks // args.shard)
        embedder = get_embedder()
        embedder.encode(["warm up"] * 8)
        print(
            f"corpus: {args.docs} docs, {chunks} chunks, {shards} shards of up to {args.shard}, "
            f"batch size {args.batch_size}, {os.cpu_count()} cores, model {embedder.model_id}",
            flush=True,
        )

        def single(name: str) -> float:
            t = time.perf_counter()
            embed(store, name, config, workdir(name))
            seconds = time.perf_counter() - t
            print(f"single process: {chunks / seconds:.1f} chunks/s ({seconds:.1f}s)", flush=True)
            return seconds

        before = single("single")
        reference = np.load(work / "single" / "new_embeddings.npy")
        rows = []

        with prefect_test_harness(server_startup_timeout=120):
            api = str(PREFECT_API_URL.value())
            for n in counts:
                threads = dask_cluster.threads_per_worker(n)
                cluster = dask_cluster.start(
                    work / f"dask-{n}", n, port=free_port(), env={"PREFECT_API_URL": api}
                )
                try:
                    from distributed import Client

                    with Client(cluster.address) as client:
                        warm = client.run(_warm)
                    print("workers: " + "; ".join(warm.values()), flush=True)
                    name = f"fanout-{n}"
                    seconds = fanned_out(name, workdir(name), cluster.address)
                finally:
                    cluster.stop()
                got = np.load(work / name / "new_embeddings.npy")
                same = bool(np.array_equal(got, reference))
                diff = float(np.abs(got - reference).max()) if got.shape == reference.shape else -1
                label = f"dask, {n} worker(s) x {threads} torch thread(s)"
                rows.append((label, seconds, same, diff))
                print(f"{label}: {chunks / seconds:.1f} chunks/s ({seconds:.1f}s)", flush=True)

        after = single("single-after")  # this machine's speed drifts: the mean of both
        single_s = (before + after) / 2
        rows.insert(0, ("single process (mean of before/after)", single_s, True, 0.0))
        print()
        print(f"{'path':<42} {'chunks/s':>9} {'seconds':>8} {'vs single':>10}  vectors")
        for label, seconds, same, diff in rows:
            print(
                f"{label:<42} {chunks / seconds:>9.1f} {seconds:>8.1f} "
                f"{single_s / seconds:>9.2f}x  {'identical' if same else f'max |diff| {diff:.1e}'}"
            )
        return rows  # (path, seconds, identical, max abs diff)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
