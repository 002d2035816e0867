"""Ingestion benchmark: slmops' full ingest against the raw embedder, measured in one run.

    python -m benchmarks.ingest_throughput --docs 2000

Prints three ratios:
- full ingest throughput (chunks/s: scan, read, hash, parse, split, embed, assemble, publish)
  over raw `SentenceTransformer.encode` of the same chunks with the same model and batch size
  (the physical limit here); the raw run is timed before and after the ingest, and averaged;
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

from slmops.rag.embedder import get_embedder
from slmops.rag.ingest import IngestConfig, prepare, run_ingest
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="generated corpus size")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-"))
    try:
        corpus = work / "docs"
        generate_corpus(corpus, args.docs)
        config = IngestConfig(batch_size=args.batch_size)
        embedder = get_embedder()  # loaded once; not part of either timing
        embedder.encode(["warm up"] * 8)
        store = LocalStore(work / "store")

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
        probe = prepare(str(corpus), LocalStore(work / "probe"), "probe", config, work / "probe-w")
        probe_lines = (work / "probe-w" / "new_chunks.jsonl").read_text().splitlines()
        texts = [json.loads(line)["text"] for line in probe_lines]
        raw_before = raw(texts)

        t = time.perf_counter()
        full = run_ingest(str(corpus), store, "bench", config, workdir=work / "w1", evaluate=False)
        full_s = time.perf_counter() - t
        raw_after = raw(texts)
        raw_s = (raw_before + raw_after) / 2
        assert full.chunks_embedded == len(texts) == probe.new_chunks

        t = time.perf_counter()
        again = run_ingest(str(corpus), store, "bench", config, workdir=work / "w2", evaluate=False)
        again_s = time.perf_counter() - t
        assert again.version is None and again.chunks_embedded == 0

        pages = sorted(corpus.rglob("*.md"))
        victim = pages[len(texts) % len(pages)]
        rel = victim.relative_to(corpus).as_posix()
        victim.write_text(victim.read_text() + "\n\nOne more paragraph about berths.\n")
        one = run_ingest(str(corpus), store, "bench", config, workdir=work / "w3", evaluate=False)
        nodes = (work / "w3" / "index" / "nodes.jsonl").read_text().splitlines()
        victim_chunks = sum(1 for line in nodes if json.loads(line)["doc"] == rel)

        ingest_rate, raw_rate = len(texts) / full_s, len(texts) / raw_s
        print(
            f"corpus: {args.docs} docs, {len(texts)} chunks, batch size {args.batch_size}, "
            f"model {embedder.model_id}"
        )
        print(
            f"raw encode:        {raw_rate:8.1f} chunks/s  ({raw_before:.1f}s before, "
            f"{raw_after:.1f}s after the ingest)"
        )
        print(
            f"full ingest:       {ingest_rate:8.1f} chunks/s  ({full_s:.1f}s; stages "
            + ", ".join(f"{k} {v:.2f}s" for k, v in full.timings.items())
            + ")"
        )
        print(f"ratio ingest/raw:  {ingest_rate / raw_rate:8.3f}   (goal >= 0.90)")
        print(
            f"re-ingest, nothing changed: {again_s:.3f}s = {again_s / full_s:.4f} of a full "
            "ingest   (goal < 0.03)"
        )
        print(
            f"one doc changed ({rel}): {one.chunks_embedded} chunks re-embedded, the doc has "
            f"{victim_chunks}   ({'exact' if one.chunks_embedded == victim_chunks else 'WRONG'})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
