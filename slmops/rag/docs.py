"""Documentation sources and parsers: Markdown, plain text, HTML and PDF into clean text.

A source is a local folder or an S3 prefix. Documents are identified by their path relative
to the source (stable across machines and days) and the sha256 of their bytes. Anything that
cannot be used becomes a `SkippedDoc` with a reason a person can act on; it never stops a run.
"""

from __future__ import annotations

import copy
import io
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, Field

from slmops.errors import ConfigError, ObjectNotFoundError
from slmops.store import ObjectStore, open_store, parse_store_uri
from slmops.store.hashing import sha256_bytes

FORMATS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
# HTML elements that are page chrome, not content.
_HTML_CHROME = [
    "script",
    "style",
    "noscript",
    "nav",
    "header",
    "footer",
    "aside",
    "form",
    "button",
    "input",
    "select",
    "iframe",
    "svg",
    "template",
]
_HTML_CHROME_HINTS = re.compile(
    r"\b(nav|navbar|menu|sidebar|breadcrumbs?|toc|cookie|footer)\b", re.IGNORECASE
)
_HTML_BLOCKS = [
    "p",
    "div",
    "section",
    "article",
    "main",
    "li",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "table",
    "ul",
    "ol",
    "dd",
    "dt",
    "br",
]


class DocLimits(BaseModel):
    """Per-file limits; a file over a limit is skipped with the reason in the report."""

    max_file_mb: float = Field(20.0, gt=0, description="Skip files larger than this (MiB).")
    max_pdf_pages: int = Field(300, gt=0, description="Skip PDFs with more pages than this.")


class SkippedDoc(BaseModel):
    path: str
    reason: str


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the source, '/'-separated
    size: int


@dataclass(frozen=True)
class ParsedDoc:
    path: str
    sha256: str
    size: int
    format: str
    title: str
    text: str
    pages: int | None = None


class DocRejected(Exception):
    """A document that cannot be ingested; the message is the reason shown to people."""


class DocSource:
    """Documents under a local folder or an S3 prefix, read through the store interface."""

    def __init__(self, uri: str, *, endpoint_url: str | None = None):
        self.uri = uri
        parsed = parse_store_uri(uri)
        if parsed.scheme == "file":
            assert parsed.path is not None
            if not parsed.path.is_dir():
                raise ConfigError(
                    f"docs source {uri!r} does not exist or is not a folder: pass the folder "
                    "that holds your documentation (or an s3://bucket/prefix)"
                )
        options = {"endpoint_url": endpoint_url} if endpoint_url else {}
        self.store: ObjectStore = open_store(uri, **options)

    def scan(self, limits: DocLimits) -> tuple[list[SourceFile], list[SkippedDoc]]:
        """Every document file, plus the files skipped before reading (format, size)."""
        files, skipped = [], []
        max_bytes = limits.max_file_mb * 2**20
        for info in self.store.list_objects(""):
            parts = PurePosixPath(info.key).parts
            if any(p.startswith(".") for p in parts):  # .git, .DS_Store, editor swap files
                continue
            suffix = PurePosixPath(info.key).suffix.lower()
            if suffix not in FORMATS:
                skipped.append(
                    SkippedDoc(
                        path=info.key,
                        reason=f"unsupported format "
                        f"'{suffix or 'no extension'}' (supported: "
                        f"{', '.join(sorted(set(FORMATS)))})",
                    )
                )
            elif info.size > max_bytes:
                skipped.append(
                    SkippedDoc(
                        path=info.key,
                        reason=(
                            f"too large: {info.size / 2**20:.1f} MiB > "
                            f"{limits.max_file_mb:g} MiB limit (raise max_file_mb or split it)"
                        ),
                    )
                )
            else:
                files.append(SourceFile(info.key, info.size))
        return files, skipped

    def read(self, path: str) -> bytes:
        try:
            return self.store.get_bytes(path)
        except ObjectNotFoundError:
            raise DocRejected("disappeared during the run (deleted or moved)") from None


def parse_document(path: str, data: bytes, limits: DocLimits) -> ParsedDoc:
    """Clean text of one document, or DocRejected with the reason."""
    fmt = FORMATS.get(PurePosixPath(path).suffix.lower())
    if fmt is None:
        raise DocRejected("unsupported format")
    if not data.strip():
        raise DocRejected("empty file")
    pages = None
    if fmt == "pdf":
        text, title, pages = _parse_pdf(data, limits)
    elif fmt == "html":
        text, title = _parse_html(data)
    else:
        text = _decode_text(data)
        title = _markdown_title(text) if fmt == "markdown" else ""
    text = _normalise_whitespace(text)
    if not text:
        raise DocRejected("no text left after extraction")
    return ParsedDoc(
        path=path,
        sha256=sha256_bytes(data),
        size=len(data),
        format=fmt,
        title=title or Path(path).stem.replace("-", " "),
        text=text,
        pages=pages,
    )


def section_leads(text: str) -> list[tuple[str, str]]:
    """(heading, first sentence) of each `## ` section of a Markdown doc: the first sentence of
    its first prose paragraph, or of its first list item when it has no prose (a wrapped line
    or item is read whole, never from its continuation); sections of tables or code alone are
    left out. What a question about the section is answered with, when building training
    conversations from docs."""
    out = []
    item = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+", re.MULTILINE)
    for block in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        body = re.sub(r"^```.*?^```", "", body, flags=re.MULTILINE | re.DOTALL)
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
        paragraphs = [p for p in paragraphs if not p.startswith(("|", "<", "#"))]
        prose = [p for p in paragraphs if not item.match(p)]
        if prose:
            first = prose[0]
        elif paragraphs:
            first = item.split(paragraphs[0])[1]
        else:
            continue
        sentence = re.split(r"(?<=[.!?])\s", " ".join(first.split()))[0]
        out.append((heading.strip(), sentence.strip()))
    return out


def _decode_text(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise DocRejected("binary content, not text (NUL bytes): is it really a text file?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DocRejected(
            f"invalid UTF-8 at byte {exc.start} (line {line}): re-save the file as UTF-8"
        ) from None
    controls = sum(1 for ch in text[:8192] if ord(ch) < 32 and ch not in "\n\r\t\f")
    if controls > 0.01 * min(len(text), 8192):
        raise DocRejected("binary content, not text (control characters)")
    return text


def _markdown_title(text: str) -> str:
    match = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def _parse_html(data: bytes) -> tuple[str, str]:
    if b"\x00" in data[:8192]:
        raise DocRejected("binary content, not HTML (NUL bytes)")
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else ""
    heading = soup.find("h1")
    title = title or (heading.get_text(strip=True) if heading else "")
    return _main_text(soup), title


_PRE_NEWLINE = "\u23ce"  # stands for a line break inside <pre> while trafilatura reads the page
_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")


def extract_html_text(data: bytes, *, prefer: str = "auto") -> str:
    """The page's main content as text: headings, paragraphs, lists, tables (cells split by
    ' | ') and code blocks (line by line); page chrome (navigation, headers, footers,
    sidebars, breadcrumbs, "Prev | Up | Next" bars) left out.

    A page that marks its content (<main>, role="main", <article>) is read structurally from
    that element, chrome removed by tag, role and class names. Any other page is read by
    trafilatura, which finds the content by its text and link density; its Markdown escapes are
    undone and code blocks keep their lines. prefer="trafilatura" or "structural" forces one.
    """
    from bs4 import BeautifulSoup

    return _main_text(BeautifulSoup(data, "html.parser"), prefer=prefer)


def _main_text(soup: Any, prefer: str = "auto") -> str:
    marked = soup.find("main") or soup.find(role="main") or soup.find("article")
    if prefer == "structural" or (prefer == "auto" and marked is not None):
        return _strip_html(soup)
    structural = copy.copy(soup)
    for pre in soup.find_all("pre"):
        pre.string = pre.get_text().replace("\n", _PRE_NEWLINE)
    import trafilatura

    text = trafilatura.extract(
        str(soup),
        output_format="markdown",
        include_tables=True,
        include_formatting=True,
        include_links=False,
        include_images=False,
        favor_recall=True,
    )
    if not text:
        return _strip_html(structural)
    return _MD_ESCAPE.sub(r"\1", text.replace(_PRE_NEWLINE, "\n"))


def html_to_text(data: bytes) -> str:
    """The page's text with chrome removed by tag, role and class names only (no content
    detection): what slmops read from every page before main-content extraction."""
    from bs4 import BeautifulSoup

    return _strip_html(BeautifulSoup(data, "html.parser"))


def _strip_html(soup: Any) -> str:
    for tag in soup(_HTML_CHROME):
        tag.decompose()
    for tag in soup.find_all(role=re.compile("navigation|banner|contentinfo")):
        tag.decompose()
    for tag in soup.find_all(True):
        if tag.attrs is None:  # removed together with an ancestor above
            continue
        hints = " ".join(tag.get("class") or []) + " " + str(tag.get("id") or "")
        if _HTML_CHROME_HINTS.search(hints):
            tag.decompose()
    for permalink in soup.select("a.headerlink"):  # Sphinx's "¶" after each heading
        permalink.decompose()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    for tag in root.find_all(_HTML_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    for cell in root.find_all(["td", "th"]):
        cell.insert_after(" | ")
    return str(root.get_text())


def _parse_pdf(data: bytes, limits: DocLimits) -> tuple[str, str, int]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocRejected("encrypted PDF: export an unencrypted copy")
        count = len(reader.pages)
        if count > limits.max_pdf_pages:
            raise DocRejected(
                f"too many pages: {count} > {limits.max_pdf_pages} "
                "(raise max_pdf_pages or split the PDF)"
            )
        text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
        title = str(reader.metadata.get("/Title") or "") if reader.metadata else ""
    except DocRejected:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocRejected(f"PDF does not parse: {exc}") from None
    if not text.strip():
        raise DocRejected("PDF has no extractable text (scanned images? run OCR first)")
    return text, title, count


def _normalise_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
