"""Embedding fan-out benchmark: the new chunks of a generated corpus embedded in one process
(today's path) and in shards on a real local Dask cluster (scheduler and workers as separate
processes on loopback, through Prefect's Dask task runner), measured in the same run.

    python -m benchmarks.embed_fanout --docs 300 --workers 1,2

For each worker count it prints chunks/s and the ratio to the single process, and whether the
vectors are identical to the single process's (they should be, bit for bit: each shard is the
block the single process embeds as one call). The cores are divided among the workers (torch
threads), so on one machine fan-out cannot beat the single process by much: what it shows is
the overhead of sharding, and that adding workers adds throughput where they bring cores.
The models load on every worker before the timing starts, as the single process's does.
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
from slmops.rag.ingest import IngestConfig, embed, embed_fanned_out, prepare
from slmops.store.local import LocalStore


def _warm() -> str:
    """Run on every worker before the timing: load the model (as the single process has)."""
    from slmops.rag.embedder import get_embedder

    get_embedder().encode(["warm up"] * 4)
    return f"{os.getpid()}: torch threads {__import__('torch').get_num_threads()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="generated corpus size")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--shard", type=int, default=256, help="chunks per shard (checkpoint)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]

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
        t = time.perf_counter()
        embed(store, "single", config, workdir("single"))
        single_s = time.perf_counter() - t
        reference = np.load(work / "single" / "new_embeddings.npy")
        rows = [("single process", single_s, True, 0.0)]
        print(f"single process: {chunks / single_s:.1f} chunks/s ({single_s:.1f}s)", flush=True)

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
                        client.run(_warm)
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

        print()
        print(f"{'path':<32} {'chunks/s':>9} {'seconds':>8} {'vs single':>10}  identical vectors")
        for label, seconds, same, diff in rows:
            print(
                f"{label:<32} {chunks / seconds:>9.1f} {seconds:>8.1f} "
                f"{single_s / seconds:>9.2f}x  {'yes' if same else f'NO (max diff {diff:.2e})'}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
