"""Edges between retrieved chunks from Markdown/HTML links and code definitions (rag/links.py)."""

from __future__ import annotations

from chunkcache.rag.index import Hit
from chunkcache.rag.links import chunk_edges, defined_names, linked_paths


def hit(path: str, text: str) -> Hit:
    return Hit(0, 0.5, path, 1, 1, text, path)


def test_relative_markdown_and_html_links_resolve_to_documents():
    h = hit("/docs/guide/a.md", "See [the lead](../team/lead.md#who), [x](<b.md> \"title\"), "
            "[web](https://example.org/c.md), [mail](mailto:x@y.z), [here](#top), [self](a.md) and "
            "<a href=\"sub/c.html?q=1\">c</a>.")
    assert linked_paths(h) == {"/docs/team/lead.md", "/docs/guide/b.md", "/docs/guide/sub/c.html"}


def test_links_make_every_chunk_of_the_linked_document_a_source():
    hits = [hit("/d/falcon.md", "Falcon's rota: [Heron](teams/heron.md)."),
            hit("/d/teams/heron.md", "Heron pager 4471."),
            hit("/d/teams/heron.md", "Heron meets on Tuesdays."),
            hit("/d/other.md", "Nothing links here.")]
    assert chunk_edges(hits) == [(1, 0), (2, 0)]


def test_code_chunks_read_the_definitions_they_use():
    hits = [hit("/r/rows.py", "def parse_row(line):\n    return line.split(',')\n\nclass Table:\n    pass\n"),
            hit("/r/load.py", "def load(path):\n    return [parse_row(l) for l in open(path)]\n"),
            hit("/r/use.ts", "export function show(t) { return Table.render(t) }\n"),
            hit("/r/notes.md", "parse_row(x) is mentioned in prose, which is not code."),
            hit("/r/self.py", "def parse_row(x):\n    return parse_row(x[1:])\n")]
    assert defined_names(hits[0]) == {"parse_row", "Table"}
    assert defined_names(hits[3]) == set()
    # load.py uses parse_row (from rows.py and self.py); use.ts uses Table.; self.py defines its own parse_row
    assert chunk_edges(hits) == [(0, 1), (0, 2), (4, 1)]
