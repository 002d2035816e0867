"""Ingestion benchmark: slmops' full ingest against the raw embedder, measured in one run.

    python -m benchmarks.ingest_throughput --docs 2000

Prints:
- full ingest throughput (chunks/s: scan, read, hash, parse, split, embed, assemble with the
  BM25 side, publish) for each embedding backend (torch, onnx, onnx-int8) over raw PyTorch
  `SentenceTransformer.encode` of the same chunks with the same model and batch size; the raw
  run is timed before and after the ingests, and averaged; and each backend's retrieval
  metrics (dense, BM25, hybrid) on the bundled example's curated questions;
- re-ingest with nothing changed, as a fraction of the full ingest's time;
- one document changed: chunks re-embedded vs that document's chunk count (must be equal).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from slmops.pipelines.ingest import run_ingest
from slmops.rag.embedder import get_embedder
from slmops.rag.embedding import embed_text
from slmops.rag.ingest_config import IngestConfig
from slmops.rag.plan import prepare
from slmops.store.local import LocalStore

EXAMPLE_DOCS = Path(__file__).resolve().parent.parent / "examples" / "support-bot" / "docs"
WORDS = (
    "inlet berth current crew anchor beacon ledger sounding drift score tide harbor "
    "routing queue agent ticket reply escalation workspace policy"
).split()


def generate_corpus(folder: Path, count: int, seed: int = 7) -> None:
    """`count` documents made from the example pages, each with unique text."""
    rng = random.Random(seed)
    templates = sorted(p for p in EXAMPLE_DOCS.rglob("*") if p.suffix in (".md", ".html"))
    for i in range(count):
        template = templates[i % len(templates)]
        text = template.read_text(encoding="utf-8")
        extra = " ".join(rng.choice(WORDS) for _ in range(40))
        if template.suffix == ".md":
            text += (
                f"\n\n## Note {i}\n\nWorkspace W{i:05d} applies this page as follows: {extra}.\n"
            )
        else:
            text = text.replace("</main>", f"<p>Workspace W{i:05d}: {extra}.</p></main>")
            text = text.replace("</article>", f"<p>Workspace W{i:05d}: {extra}.</p></article>")
        out = folder / f"section-{i % 40:02d}" / f"{i:05d}-{template.name}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")


def retrieval_of(backend: str, work: Path) -> dict[str, float]:
    """The bundled example's retrieval metrics (curated questions) on an index of `backend`."""
    report = run_ingest(
        str(EXAMPLE_DOCS),
        LocalStore(work / f"example-{backend}"),
        "example",
        IngestConfig(embed_backend=backend),
        workdir=work / f"example-{backend}-w",
        questions=EXAMPLE_DOCS.parent / "retrieval-questions.jsonl",
    )
    return report.retrieval


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="generated corpus size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--backends",
        default="torch,onnx,onnx-int8",
        help="embedding backends whose full ingest is timed (comma-separated)",
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-"))
    try:
        corpus = work / "docs"
        generate_corpus(corpus, args.docs)
        embedder = get_embedder()  # loaded once; not part of either timing
        embedder.encode(["warm up"] * 8)
        for backend in backends:  # each backend's model load and ONNX export: not timed
            get_embedder(backend=backend).encode(["warm up"] * 8)

        def raw(texts: list[str]) -> float:
            t = time.perf_counter()
            embedder.model.encode(
                texts,
                batch_size=args.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return time.perf_counter() - t

        # The chunks the ingest will produce (parse and split only), for the raw baseline.
        config = IngestConfig(batch_size=args.batch_size)
        probe = prepare(str(corpus), LocalStore(work / "probe"), "probe", config, work / "probe-w")
        probe_lines = (work / "probe-w" / "new_chunks.jsonl").read_text().splitlines()
        texts = [embed_text(json.loads(line), config) for line in probe_lines]
        print(
            f"corpus: {args.docs} docs, {len(texts)} chunks, batch size {args.batch_size}, "
            f"model {embedder.model_id}",
            flush=True,
        )
        raw_before = raw(texts)
        print(f"raw PyTorch encode (before): {len(texts) / raw_before:8.1f} chunks/s", flush=True)

        full_s: dict[str, float] = {}
        reports = {}
        for backend in backends:
            cfg = IngestConfig(batch_size=args.batch_size, embed_backend=backend)
            t = time.perf_counter()
            reports[backend] = run_ingest(
                str(corpus),
                LocalStore(work / f"store-{backend}"),
                "bench",
                cfg,
                workdir=work / f"w1-{backend}",
                evaluate=False,
            )
            full_s[backend] = time.perf_counter() - t
            assert reports[backend].chunks_embedded == len(texts) == probe.new_chunks
            print(
                f"full ingest ({backend}): {len(texts) / full_s[backend]:8.1f} chunks/s", flush=True
            )
        raw_after = raw(texts)
        raw_s = (raw_before + raw_after) / 2
        raw_rate = len(texts) / raw_s

        store = LocalStore(work / f"store-{backends[0]}")
        first = IngestConfig(batch_size=args.batch_size, embed_backend=backends[0])
        t = time.perf_counter()
        again = run_ingest(str(corpus), store, "bench", first, workdir=work / "w2", evaluate=False)
        again_s = time.perf_counter() - t
        assert again.version is None and again.chunks_embedded == 0

        pages = sorted(corpus.rglob("*.md"))
        victim = pages[len(texts) % len(pages)]
        rel = victim.relative_to(corpus).as_posix()
        victim.write_text(victim.read_text() + "\n\nOne more paragraph about berths.\n")
        one = run_ingest(str(corpus), store, "bench", first, workdir=work / "w3", evaluate=False)
        nodes = (work / "w3" / "index" / "nodes.jsonl").read_text().splitlines()
        victim_chunks = sum(1 for line in nodes if json.loads(line)["doc"] == rel)

        print(
            f"raw PyTorch encode: {raw_rate:8.1f} chunks/s  ({raw_before:.1f}s before, "
            f"{raw_after:.1f}s after the ingests)"
        )
        ratios: dict[str, float] = {}
        for backend in backends:
            rate = len(texts) / full_s[backend]
            ratios[backend] = rate / raw_rate
            quality = retrieval_of(backend, work)
            print(
                f"slmops ingest, {backend:9s} {rate:8.1f} chunks/s = {ratios[backend]:.2f}x raw "
                f"PyTorch   (stages "
                + ", ".join(f"{k} {v:.1f}s" for k, v in reports[backend].timings.items())
                + ")"
            )
            print(
                "    bundled example, curated questions: "
                + "   ".join(
                    f"{mode} hit@5 {quality[f'curated.{mode}.hit_rate@5']:.3f} "
                    f"MRR {quality[f'curated.{mode}.mrr']:.3f}"
                    for mode in ("dense", "bm25", "hybrid")
                )
            )
        print("goals: torch >= 0.90x raw; onnx-int8 >= 1.5x raw at hit@5 within 0.01 of torch")
        print(
            f"re-ingest, nothing changed: {again_s:.3f}s = "
            f"{again_s / full_s[backends[0]]:.4f} of a full ingest   (goal < 0.03)"
        )
        print(
            f"one doc changed ({rel}): {one.chunks_embedded} chunks re-embedded, the doc has "
            f"{victim_chunks}   ({'exact' if one.chunks_embedded == victim_chunks else 'WRONG'})"
        )
        return ratios
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
