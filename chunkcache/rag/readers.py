"""Find the documents to ingest and turn each one into plain text.

Ingestion must survive whatever a user points it at: a folder with images, a `.git` directory, an
empty file, a file in a legacy encoding. So readers never raise on bad content; they log one
warning line naming the file and the reason, and return ``None`` so the caller can count it as
skipped. A path that does not exist at all is a user error and raises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from bs4 import BeautifulSoup

log = logging.getLogger(__name__)

PROSE_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
CODE_SUFFIXES = frozenset(
    {".py", ".js", ".ts", ".go", ".rs", ".java", ".c", ".cpp", ".cc", ".h", ".hpp"}
)
SUPPORTED_SUFFIXES = PROSE_SUFFIXES | HTML_SUFFIXES | CODE_SUFFIXES

# Folders that hold tooling state, dependencies or caches rather than documents.
SKIPPED_DIRS = frozenset({"node_modules", "__pycache__"})


def require_paths(paths: list[Path]) -> None:
    """Raise one clear ``FileNotFoundError`` naming every path that does not exist."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"path does not exist: {', '.join(missing)}")


def iter_files(paths: list[Path]) -> Iterator[Path]:
    """Yield the supported files named by ``paths``, each once, in a deterministic order.

    A file named explicitly is yielded whatever its suffix (``read_document`` then says why it is
    skipped); inside folders only files with a supported suffix are yielded, and hidden files,
    hidden folders (``.git``, ``.venv``, ``.chunkcache``), ``node_modules`` and ``__pycache__`` are
    skipped. Folders are walked in sorted order so that ingestion order, and thus chunk ids, are
    reproducible. Every path is checked before anything is yielded, so a typo fails fast.
    """
    require_paths(paths)
    seen: set[Path] = set()
    for root in paths:
        for path in _walk(root):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                yield path


def _walk(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        yield root
        return
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS)
        for name in sorted(filenames):
            path = Path(folder) / name
            if not name.startswith(".") and path.suffix.lower() in SUPPORTED_SUFFIXES:
                yield path


def read_document(path: Path) -> str | None:
    """Return the text of the document at ``path``, or ``None`` (with a warning) if it is unusable."""
    try:
        data = path.read_bytes()
    except OSError as err:
        log.warning("skipping %s: cannot read it (%s)", path, err.strerror or err)
        return None
    return decode_document(path, data)


def decode_document(path: Path, data: bytes) -> str | None:
    """Turn the raw bytes of ``path`` into text; ``None`` (with a warning) if it is unusable.

    Separate from ``read_document`` so that ingestion can hash and decode one read of the file.
    Line endings are normalised to ``\\n`` so that chunk line numbers match what editors show and
    the LLM never sees carriage returns.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        log.warning("skipping %s: unsupported file type %r", path, suffix or "(no suffix)")
        return None
    if b"\x00" in data:
        log.warning("skipping %s: binary file (contains NUL bytes)", path)
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        log.warning("skipping %s: not valid UTF-8 (byte %d)", path, err.start)
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if suffix in HTML_SUFFIXES:
        text = html_to_text(text)
    if not text.strip():
        log.warning("skipping %s: empty document", path)
        return None
    return text


def html_to_text(html: str) -> str:
    """Visible text of an HTML page: scripts, styles and markup dropped, blocks kept apart.

    Block elements become paragraphs separated by one blank line (what the prose chunker splits
    on) while inline elements stay inside their sentence; ``<h1>``..``<h6>`` become Markdown
    headings so the chunker can split the page along its sections.
    """
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    for br in soup("br"):
        br.replace_with("\n")
    for level in range(1, 7):
        for heading in soup(f"h{level}"):
            heading.insert(0, "#" * level + " ")
    for block in soup(_HTML_BLOCKS):
        block.insert_before("\n\n")
        block.insert_after("\n\n")
    out: list[str] = []
    for line in soup.get_text().splitlines():
        line = line.strip()
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


_HTML_BLOCKS = [
    "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav",
    "ol", "p", "pre", "section", "table", "tr", "ul",
]  # fmt: skip
