"""Retrieval quality on a documentation corpus: slmops' index (dense, BM25, hybrid) against a
naive baseline, with the same embedding model, in one run.

    python -m benchmarks.retrieval_quality --corpus /usr/share/doc/python3.11/html --pages 250
    python -m benchmarks.retrieval_quality            # the bundled example, curated questions

The naive baseline is what a first RAG script does: each page's full text (every tag
stripped, chrome included) cut into 200-word windows, embedded, searched by vector.

Questions for an HTML corpus come from the pages themselves, independently of any extractor:
each page's <title>, and each h1-h3 heading that no other page has (a heading shared by pages,
"Examples" or a sidebar's "Navigation", names no one page), asked alone; the page is the answer.
For the bundled example: its curated questions. A second set is the one every index version is
evaluated on: "<title>: <section heading>" from slmops' own chunks (extraction-dependent).
Prints hit rate@k and MRR for each, and for hybrid each fusion mode and dense weight, so the
default is a measured choice.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from slmops.pipelines.ingest import run_ingest
from slmops.rag.embedder import get_embedder
from slmops.rag.evals import EvalQuestion, evaluate, generate_questions, load_questions
from slmops.rag.hybrid import FUSIONS
from slmops.rag.ingest_config import IngestConfig
from slmops.rag.retrieval import LoadedIndex
from slmops.store.local import LocalStore

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "support-bot"
WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def sample_pages(corpus: Path, pages: int, into: Path, seed: int = 11) -> list[Path]:
    files = sorted(p for p in corpus.rglob("*.htm*") if p.is_file() and "_sources" not in p.parts)
    random.Random(seed).shuffle(files)
    chosen = files[:pages] if pages else files
    for path in chosen:
        out = into / path.relative_to(corpus)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
    return [p.relative_to(corpus) for p in chosen]


def html_questions(folder: Path, limit: int, seed: int = 5) -> list[EvalQuestion]:
    from bs4 import BeautifulSoup

    asked: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.htm*")):
        soup = BeautifulSoup(path.read_bytes(), "html.parser")
        doc = path.relative_to(folder).as_posix()
        texts = [soup.title.get_text(" ", strip=True)] if soup.title else []
        texts += [h.get_text(" ", strip=True) for h in soup.find_all(["h1", "h2", "h3"])]
        for text in {re.sub(r"[\s¶]+", " ", t).strip(" #") for t in texts}:
            if len(text.split()) >= 2:
                asked.setdefault(text, []).append(doc)
    unique = [EvalQuestion(question=q, expected=d) for q, d in asked.items() if len(d) == 1]
    random.Random(seed).shuffle(unique)
    return unique[:limit]


class NaiveIndex:
    """Every tag stripped, 200-word windows, dense search."""

    def __init__(self, folder: Path, embedder: object):
        from bs4 import BeautifulSoup

        from slmops.rag.retrieval import Retrieved

        self.Retrieved = Retrieved
        self.embedder = embedder
        self.windows: list[tuple[str, str]] = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            raw = path.read_bytes()
            text = (
                BeautifulSoup(raw, "html.parser").get_text(" ")
                if path.suffix.startswith(".htm")
                else raw.decode("utf-8", "replace")
            )
            words = text.split()
            for start in range(0, max(1, len(words)), 200):
                piece = " ".join(words[start : start + 200])
                if piece:
                    self.windows.append((path.relative_to(folder).as_posix(), piece))
        self.vectors = embedder.encode([w for _, w in self.windows])  # type: ignore[attr-defined]

    def retrieve(self, query: str, k: int = 5) -> list[object]:
        q = self.embedder.encode([query])[0]  # type: ignore[attr-defined]
        scores = self.vectors @ q
        top = np.argsort(-scores)[:k]
        return [
            self.Retrieved(
                source=self.windows[i][0], title="", score=float(scores[i]), text="", chunk_id=""
            )
            for i in top
        ]


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, help="a folder of HTML pages (default: example)")
    parser.add_argument("--pages", type=int, default=250, help="pages sampled (0: all)")
    parser.add_argument("--questions", type=int, default=300, help="questions asked at most")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument(
        "--no-sweep",
        action="store_true",
        help="hybrid with the default fusion and weight only (for a held-out corpus: the "
        "defaults are chosen on other data)",
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="slmops-retrieval-"))
    try:
        if args.corpus:
            docs = work / "docs"
            sample_pages(args.corpus, args.pages, docs)
            questions = html_questions(docs, args.questions)
        else:
            docs = EXAMPLE / "docs"
            questions = load_questions(EXAMPLE / "retrieval-questions.jsonl")
        config = IngestConfig(embed_backend=args.backend)
        t = last = time.perf_counter()

        def progress(stage: str, done: int, of: int) -> None:
            nonlocal last
            if time.perf_counter() - last > 15 or done == of:
                last = time.perf_counter()
                print(f"  ingest: {stage} {done}/{of} ({last - t:.0f}s)", flush=True)

        report = run_ingest(
            str(docs),
            LocalStore(work / "store"),
            "q",
            config,
            workdir=work / "w",
            evaluate=False,
            on_stage=progress,
            on_progress=lambda done, of: progress("embedded", done, of),
        )
        print(
            f"corpus {args.corpus or docs}: {len(report.plan.added)} documents, "
            f"{report.chunks_total} chunks, ingested in {time.perf_counter() - t:.0f}s "
            f"({args.backend}); {len(questions)} questions, k={args.k}",
            flush=True,
        )
        embedder = get_embedder(backend=args.backend)
        index = LoadedIndex("q", "bench", work / "w" / "index", embedder)
        print(f"{len(generate_questions(index.nodes, limit=args.questions))} generated questions")
        results: dict[str, tuple[float, float]] = {}

        # slmops' own generated questions ("<title>: <section heading>" -> its page), the ones
        # every version is evaluated on, as a second set.
        generated = generate_questions(index.nodes, limit=args.questions)

        def row(name: str, target: object, **options: object) -> None:
            from slmops.config import get_settings

            get_settings.cache_clear()
            cells = []
            for label, asked in (("page headings", questions), ("generated", generated)):
                r = evaluate(target, asked, k=args.k, name=name, **options)  # type: ignore[arg-type]
                results[f"{name} / {label}"] = (r.hit_rate, r.mrr)
                cells.append(f"{label}: hit@{args.k} {r.hit_rate:.3f} MRR {r.mrr:.3f}")
            print(f"  {name:36s} " + "   ".join(cells), flush=True)

        t = time.perf_counter()
        naive = NaiveIndex(docs, embedder)
        print(f"naive baseline: {len(naive.windows)} windows in {time.perf_counter() - t:.0f}s")
        row("naive 200-word windows (dense)", naive)
        row("slmops dense", index, mode="dense")
        row("slmops bm25", index, mode="bm25")
        import os

        if args.no_sweep:
            row("slmops hybrid (defaults)", index, mode="hybrid")
            return results
        for fusion in FUSIONS:
            for weight in WEIGHTS if fusion != "reciprocal_rerank" else (0.5,):
                os.environ["SLMOPS_RETRIEVAL_FUSION"] = fusion
                os.environ["SLMOPS_RETRIEVAL_DENSE_WEIGHT"] = str(weight)
                label = f"slmops hybrid {fusion}" + (
                    f" w={weight}" if fusion != "reciprocal_rerank" else ""
                )
                row(label, index, mode="hybrid")
        os.environ.pop("SLMOPS_RETRIEVAL_FUSION")
        os.environ.pop("SLMOPS_RETRIEVAL_DENSE_WEIGHT")
        misses = Counter(q.expected[0].split("/")[0] for q in questions)
        print(f"questions by folder: {dict(misses.most_common(5))}")
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
