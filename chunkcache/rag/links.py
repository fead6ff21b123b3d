"""Edges between retrieved chunks, for graph-structured prompts (strategies/graph.py, Graph-KV).

Two kinds of structure are read from the chunks' own text, so they can never disagree with the store:

* **Links** between documents: a chunk with a relative Markdown link (``[text](other.md)`` or
  ``[text](../dir/page.md#part)``) or an HTML ``href`` to another ingested document is the *target* of every
  retrieved chunk of that document (its sources): a page reads the pages it links to.
* **Definitions** in code: a code chunk that uses a name (``name(`` or ``name.``) defined in another
  retrieved chunk (``def``/``class``/``function``/``func``/``fn``/``struct``/``interface``/``type``
  ``name``) is the target of that chunk: a caller reads the definitions it uses.

Only edges among the chunks of one request matter, so nothing is stored at ingest.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

from chunkcache.rag.code import LANGUAGES
from chunkcache.rag.index import Hit

_MD_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HREF = re.compile(r"href\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_DEFINES = re.compile(
    r"^[ \t]*(?:export\s+)?(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?"
    r"(?:def|class|function|func|fn|struct|interface|type|trait|enum)\s+(?:\([^)]*\)\s*)?([A-Za-z_]\w{2,})",
    re.MULTILINE)


def linked_paths(hit: Hit) -> set[str]:
    """Absolute paths of the documents ``hit``'s text links to (relative links only; no URLs, no
    in-page anchors)."""
    base = os.path.dirname(hit.path)
    out = set()
    for m in [*_MD_LINK.finditer(hit.text), *_HREF.finditer(hit.text)]:
        target = m.group(1).split("#", 1)[0].split("?", 1)[0]
        if not target or _SCHEME.match(target) or target.startswith("//"):
            continue
        out.add(os.path.normpath(os.path.join(base, *PurePosixPath(target).parts)))
    return out - {hit.path}


def defined_names(hit: Hit) -> set[str]:
    """Names a code chunk defines (empty for anything that is not source code)."""
    if os.path.splitext(hit.path)[1] not in LANGUAGES:
        return set()
    return set(_DEFINES.findall(hit.text))


def chunk_edges(hits: list[Hit]) -> list[tuple[int, int]]:
    """(source, target) index pairs among ``hits`` (module docstring), sorted, without self-loops."""
    edges: set[tuple[int, int]] = set()
    by_path: dict[str, list[int]] = {}
    for i, h in enumerate(hits):
        by_path.setdefault(h.path, []).append(i)
    defines = [defined_names(h) for h in hits]
    for t, h in enumerate(hits):
        for path in linked_paths(h):
            edges.update((s, t) for s in by_path.get(path, []))
        if os.path.splitext(h.path)[1] not in LANGUAGES:
            continue
        for s, names in enumerate(defines):
            if s != t and any(re.search(rf"\b{re.escape(n)}\s*[(.]", h.text) and n not in defines[t]
                              for n in names):
                edges.add((s, t))
    return sorted(edges)
