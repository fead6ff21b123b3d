"""Reading documents: text formats, HTML extraction, unusable files, folder walking."""

from __future__ import annotations

import logging

import pytest

from chunkcache.rag import SUPPORTED_SUFFIXES, iter_files, read_document

HTML = """<!doctype html>
<html><head><title>Ignored title</title><style>body { color: red; }</style>
<script>var secret = "tracking-code";</script></head>
<body>
  <h1>Key rotation</h1>
  <p>Rotate keys with the <b>rotate</b> command
     every <a href="/x">ninety days</a>.</p>
  <ul><li>first step</li><li>second step</li></ul>
  <script>console.log("inline script")</script>
</body></html>
"""


def test_text_formats_are_read_verbatim(write):
    md = write("a.md", "# Title\n\nSome *markdown* text.\n")
    py = write("b.py", "def f():\n    return 1\n")
    assert read_document(md) == "# Title\n\nSome *markdown* text.\n"
    assert read_document(py) == "def f():\n    return 1\n"


def test_crlf_line_endings_are_normalised(write):
    path = write("win.txt", b"line one\r\nline two\r\n")
    assert read_document(path) == "line one\nline two\n"


def test_html_keeps_visible_text_and_drops_markup_scripts_styles(write):
    text = read_document(write("page.html", HTML))
    assert text is not None
    for gone in ("<", ">", "color: red", "tracking-code", "inline script", "href", "Ignored title"):
        assert gone not in text
    assert "# Key rotation" in text.splitlines()
    assert "Rotate keys with the rotate command" in text  # inline markup does not break the sentence
    assert "first step" in text and "second step" in text


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("blob.txt", b"header\x00\x01\x02binary", "binary"),
        ("latin1.md", "caf\u00e9 cr\u00e8me".encode("latin-1"), "UTF-8"),
        ("empty.md", b"", "empty"),
        ("blank.rst", b"  \n\n\t\n", "empty"),
        ("image.png", b"\x89PNG", "unsupported"),
    ],
)
def test_unusable_files_give_none_and_one_warning(write, caplog, name, content, reason):
    path = write(name, content)
    with caplog.at_level(logging.WARNING, logger="chunkcache.rag"):
        assert read_document(path) is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert str(path) in record.getMessage() and reason in record.getMessage()


def test_unreadable_file_gives_none_and_warning(tmp_path, caplog):
    folder_named_like_a_file = tmp_path / "dir.md"
    folder_named_like_a_file.mkdir()
    with caplog.at_level(logging.WARNING, logger="chunkcache.rag"):
        assert read_document(folder_named_like_a_file) is None
    assert "cannot read" in caplog.text


def test_iter_files_walks_sorted_and_skips_tooling_folders(tmp_path, write):
    for rel in [
        "docs/b.md", "docs/a.txt", "docs/sub/c.py", "docs/.hidden.md", "docs/photo.jpg",
        "docs/.git/config.md", "docs/.venv/lib.py", "docs/node_modules/m.js",
        "docs/__pycache__/x.py", "docs/.chunkcache/cache.md", "other.rst",
    ]:  # fmt: skip
        write(rel, "content")
    found = list(iter_files([tmp_path / "docs", tmp_path / "other.rst", tmp_path / "docs" / "b.md"]))
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["docs/a.txt", "docs/b.md", "docs/sub/c.py", "other.rst"]


def test_iter_files_yields_explicit_file_of_any_suffix(write):
    path = write("notes.xyz", "text")
    assert list(iter_files([path])) == [path]


def test_iter_files_missing_path_raises_before_yielding(tmp_path, write):
    write("ok.md", "fine")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        next(iter_files([tmp_path / "ok.md", tmp_path / "no_such_dir"]))


def test_supported_suffixes_cover_prose_html_and_code():
    assert {".txt", ".md", ".rst", ".html", ".htm", ".py", ".js", ".ts", ".go", ".rs", ".java",
            ".c", ".cpp", ".h", ".hpp", ".cc"} <= SUPPORTED_SUFFIXES  # fmt: skip
    assert ".png" not in SUPPORTED_SUFFIXES

