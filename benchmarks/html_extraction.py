"""HTML main-content extraction: which extractor keeps the content and drops the chrome.

    python -m benchmarks.html_extraction [--corpus NAME=FOLDER:SELECTOR ...] [--pages 60]

Each extractor turns a page into the text slmops would chunk. Measured against the page's
known content (the element a CSS selector names: `main` on the bundled pages, Sphinx's
`div[role=main]`, asciidoc's `#content`), word by word:
- recall: the share of the content's words the output keeps;
- precision: the share of the output's words that are content (chrome lowers it);
- code lines: the share of `<pre>` lines that come out as a line of their own;
- chrome: pages whose output holds a navigation phrase (generated pages, where it is known).

Corpora: the bundled example's HTML, generated pages with navigation chrome in four styles
(semantic tags, DocBook's navheader tables, Sphinx's related bars and sidebar, div soup with
class names), and any folder given with --corpus (Debian's python3.11-doc and git-doc are
ones: /usr/share/doc/python3.11/html, /usr/share/doc/git-doc).
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLE_HTML = Path(__file__).resolve().parent.parent / "examples" / "support-bot" / "docs" / "html"
_WORD = re.compile(r"\w+")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")


@dataclass
class Page:
    name: str
    html: bytes
    content: str  # the known main content, as text with <pre> lines kept
    code_lines: list[str]
    chrome: list[str] = field(default_factory=list)  # phrases only the chrome holds


def extractors() -> dict[str, Callable[[bytes], str]]:
    from slmops.rag.docs import extract_html_text, html_to_text

    def current(html: bytes) -> str:
        return html_to_text(html)

    def trafilatura_md(html: bytes) -> str:
        import trafilatura

        return (
            trafilatura.extract(
                html,
                output_format="markdown",
                include_tables=True,
                include_formatting=True,
                favor_recall=True,
            )
            or ""
        )

    def readability(html: bytes) -> str:
        from readability import Document

        summary = Document(html.decode("utf-8", "replace")).summary(html_partial=True)
        return html_to_text(summary.encode())

    return {
        "slmops (main content)": extract_html_text,
        "trafilatura (slmops)": lambda html: extract_html_text(html, prefer="trafilatura"),
        "tag stripping (before)": current,
        "trafilatura": trafilatura_md,
        "readability-lxml": readability,
    }


def _content_of(html: bytes, selector: str) -> tuple[str, list[str]] | None:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    node = soup.select_one(selector)
    if node is None:
        return None
    for permalink in node.select("a.headerlink"):
        permalink.decompose()
    code = [
        line.strip()
        for pre in node.find_all("pre")
        for line in pre.get_text().splitlines()
        if len(line.strip()) > 3
    ]
    return node.get_text(" "), code


def load_corpus(folder: Path, selector: str, pages: int, seed: int = 3) -> list[Page]:
    files = sorted(p for p in folder.rglob("*.htm*") if p.is_file())
    random.Random(seed).shuffle(files)
    out = []
    for path in files:
        html = path.read_bytes()
        found = _content_of(html, selector)
        if found is None or len(_WORD.findall(found[0])) < 50:
            continue
        out.append(Page(path.relative_to(folder).as_posix(), html, found[0], found[1]))
        if len(out) == pages:
            break
    return out


_BODY = """<h1>Rotating webhook secrets</h1>
<p>Each webhook endpoint has a signing secret. Rotate it from Settings, then Webhooks,
then Rotate secret; the old secret stays valid for 24 hours so senders can switch.</p>
<h2>Verifying a signature</h2>
<pre>import hmac, hashlib
expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
assert hmac.compare_digest(expected, received)</pre>
<table><tr><th>Header</th><th>Meaning</th></tr>
<tr><td>X-Tidewell-Signature</td><td>HMAC-SHA256 of the raw body</td></tr>
<tr><td>X-Tidewell-Timestamp</td><td>Seconds since the epoch when sent</td></tr></table>
<p>Reject requests whose timestamp is more than five minutes old.</p>"""

_CHROME = {
    "semantic": (
        '<header><a href="/">Tidewell Help Centre</a></header><nav><a href="/a">Getting '
        'started guide</a> <a href="/b">Billing and invoices</a></nav><main>{body}</main>'
        '<footer>Copyright Harborlight Software. <a href="/p">Privacy notice</a></footer>',
        ["Tidewell Help Centre", "Billing and invoices", "Privacy notice"],
    ),
    "docbook": (
        '<div class="navheader"><table width="100%"><tr><th colspan="3">Chapter 9. Webhook '
        'administration</th></tr><tr><td><a accesskey="p" href="p.html">Prev</a> </td><th>'
        '</th><td><a accesskey="u" href="u.html">Up</a> <a accesskey="n" href="n.html">Next'
        '</a></td></tr></table><hr /></div><div class="sect1">{body}</div><div class="navfooter">'
        '<hr /><table width="100%"><tr><td><a href="p.html">Prev</a> </td><td><a href="u.html">'
        'Up</a></td><td> <a href="n.html">Next</a></td></tr><tr><td>9.3. Listing webhook '
        'deliveries </td><td><a href="index.html">Home</a></td><td> 9.5. Deleting an endpoint'
        "</td></tr></table></div>",
        ["Prev", "Home", "Listing webhook deliveries", "Deleting an endpoint"],
    ),
    "sphinx": (
        '<div class="related" role="navigation"><h3>Navigation</h3><ul><li><a href="g.html">'
        'general index</a></li><li><a href="m.html">modules reference</a> |</li></ul></div>'
        '<div class="document"><div class="body" role="main">{body}</div></div>'
        '<div class="sphinxsidebar" role="navigation"><h4>Previous topic</h4><p>Listing '
        "webhook deliveries</p><h3>This Page</h3><ul><li>Report a Bug</li><li>Show Source</li>"
        "</ul></div>",
        ["general index", "modules reference", "Previous topic", "Report a Bug", "Show Source"],
    ),
    "div soup": (
        '<div class="site-header"><div class="logo">Tidewell Help Centre</div><div class='
        '"breadcrumb">Home / Developers / Webhooks</div></div><div class="layout"><div class='
        '"left-menu"><ul><li>Getting started guide</li><li>Billing and invoices</li></ul></div>'
        '<div class="page-content">{body}</div></div><div class="site-footer">Was this page '
        "helpful? Yes No. Copyright Harborlight Software.</div>",
        ["Tidewell Help Centre", "Developers", "Was this page helpful", "Billing and invoices"],
    ),
}


def generated_pages() -> list[Page]:
    body = _content_of(f"<div id='x'>{_BODY}</div>".encode(), "#x")
    assert body is not None
    pages = []
    for style, (template, chrome) in _CHROME.items():
        html = (
            "<!DOCTYPE html><html><head><title>Rotating webhook secrets</title>"
            "<script>var t = 1;</script></head><body>"
            + template.format(body=_BODY)
            + "</body></html>"
        )
        pages.append(Page(f"generated ({style})", html.encode(), body[0], body[1], chrome))
    return pages


def bundled_pages() -> list[Page]:
    pages = []
    for path in sorted(EXAMPLE_HTML.glob("*.html")):
        html = path.read_bytes()
        found = _content_of(html, "main, article")
        assert found is not None, path
        chrome = ["Getting started", "Harborlight Software", "Privacy", "Was this article"]
        pages.append(Page(path.name, html, found[0], found[1], chrome))
    return pages


@dataclass
class Score:
    recall: float = 0.0
    precision: float = 0.0
    code_kept: int = 0
    code_total: int = 0
    chrome_pages: int = 0
    empty: int = 0
    seconds: float = 0.0
    pages: int = 0

    def add(self, page: Page, text: str, seconds: float) -> None:
        text = _ESCAPE.sub(r"\1", text)
        want = Counter(w.lower() for w in _WORD.findall(page.content))
        got = Counter(w.lower() for w in _WORD.findall(text))
        common = sum((want & got).values())
        self.recall += common / max(1, sum(want.values()))
        self.precision += common / max(1, sum(got.values())) if got else 0.0
        lines = {re.sub(r"\s+", " ", line.strip(" `|")) for line in text.splitlines()}
        self.code_total += len(page.code_lines)
        self.code_kept += sum(re.sub(r"\s+", " ", c) in lines for c in page.code_lines)
        self.chrome_pages += any(phrase in text for phrase in page.chrome)
        self.empty += not text.strip()
        self.seconds += seconds
        self.pages += 1

    def row(self, name: str) -> str:
        n = max(1, self.pages)
        recall, precision = self.recall / n, self.precision / n
        f1 = 2 * recall * precision / max(1e-9, recall + precision)
        code = f"{self.code_kept / self.code_total:.3f}" if self.code_total else "  -  "
        return (
            f"  {name:24s} recall {recall:.3f}  precision {precision:.3f}  F1 {f1:.3f}  "
            f"code lines {code}  chrome pages {self.chrome_pages}  empty {self.empty}  "
            f"{1000 * self.seconds / n:6.1f} ms/page"
        )


def measure(corpora: dict[str, list[Page]]) -> dict[str, dict[str, Score]]:
    table: dict[str, dict[str, Score]] = {}
    for corpus, pages in corpora.items():
        print(f"{corpus}: {len(pages)} pages", flush=True)
        table[corpus] = {}
        for name, extract in extractors().items():
            score = Score()
            for page in pages:
                t = time.perf_counter()
                try:
                    text = extract(page.html)
                except Exception:  # an extractor that fails on a page scores it empty
                    text = ""
                score.add(page, text, time.perf_counter() - t)
            table[corpus][name] = score
            print(score.row(name), flush=True)
    return table


def main(argv: list[str] | None = None) -> dict[str, dict[str, Score]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="NAME=FOLDER:SELECTOR",
        help="a folder of HTML pages and the CSS selector of their main content",
    )
    parser.add_argument("--pages", type=int, default=60, help="pages sampled per corpus")
    args = parser.parse_args(argv)
    corpora = {"bundled example": bundled_pages(), "generated chrome": generated_pages()}
    for spec in args.corpus:
        name, _, rest = spec.partition("=")
        folder, _, selector = rest.rpartition(":")
        if not Path(folder).is_dir():
            parser.error(f"--corpus {spec}: {folder} is not a folder")
        corpora[name] = load_corpus(Path(folder), selector, args.pages)
    return measure(corpora)


if __name__ == "__main__":
    main()
