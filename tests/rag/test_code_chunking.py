"""Code chunking (cAST over tree-sitter): whole definitions kept, large ones split, exact ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkcache.rag import chunk_document

SMALL_PY = [
    'def small_one(x):\n    """Return x plus one."""\n    return x + 1\n',
    "def small_two(values):\n    total = 0\n    for v in values:\n        total += v\n    return total\n",
    'class Greeter:\n    """Greets people."""\n\n    def __init__(self, name):\n        self.name = name\n\n'
    '    def greet(self):\n        return f"Hello, {self.name}!"\n',
]
HUGE_PY = "def huge_function(data):\n    result = []\n" + "".join(
    f"    step_{i} = data * {i} + len(result)  # accumulate step {i}\n    result.append(step_{i})\n"
    for i in range(40)
) + "    return result\n"
AFTER_PY = 'def after_huge():\n    return "tail"\n'
LONG_DOC_PY = 'NOTES = """\n' + "".join(f"Line {i} of a long module note.\n" for i in range(60)) + '"""\n'
PY_SOURCE = (
    '"""Sample module: caf\u00e9 \u2014 \u2713 non-ASCII text shifts byte offsets."""\n\nimport os\nimport sys\n\n'
    + "\n\n".join([*SMALL_PY, HUGE_PY, AFTER_PY])
    + "\n\n"
    + LONG_DOC_PY
)

SMALL_JS = [
    "function add(a, b) {\n  return a + b;\n}\n",
    "const multiply = (a, b) => {\n  return a * b;\n};\n",
    "class Stack {\n  constructor() { this.items = []; }\n  push(x) { this.items.push(x); }\n"
    "  pop() { return this.items.pop(); }\n}\n",
]
HUGE_JS = "function huge(input) {\n  let acc = 0;\n" + "".join(
    f"  acc += input * {i}; // step {i} of the accumulation\n" for i in range(60)
) + "  return acc;\n}\n"
JS_SOURCE = 'import { readFile } from "fs";\n\nconst LIMIT = 10;\n\n' + "\n".join(
    [*SMALL_JS, HUGE_JS, 'export function last() {\n  return "end";\n}\n']
)


def chunk_texts_containing(chunks, needle):
    return [c.text for c in chunks if needle in c.text]


def test_python_keeps_small_definitions_whole_and_splits_the_huge_one(count_tokens, check_chunks):
    chunks = chunk_document(Path("sample.py"), PY_SOURCE, count_tokens, max_tokens=96)
    check_chunks(PY_SOURCE, chunks, 96)
    for definition in [*SMALL_PY, AFTER_PY]:
        assert any(definition.strip() in c.text for c in chunks), definition
    huge = chunk_texts_containing(chunks, "step_")
    assert len(huge) >= 3
    assert huge[0].startswith("def huge_function(data):\n    result = []\n    step_0")  # header joins its body
    assert "step_" not in chunk_texts_containing(chunks, "def after_huge")[0]  # no gluing across definitions
    assert len(chunk_texts_containing(chunks, "of a long module note")) >= 2  # a huge string leaf, by lines


def test_split_code_breaks_at_line_starts_and_keeps_indentation(count_tokens):
    chunks = chunk_document(Path("sample.py"), PY_SOURCE, count_tokens, max_tokens=96)
    lines = PY_SOURCE.split("\n")
    for c in chunks:  # never mid-line (a trailing comment stays with its statement), never dedented
        assert c.text.split("\n")[0] == lines[c.start_line - 1], c.text[:60]
    assert sum(c.text.startswith("    ") for c in chunks) >= 2  # pieces from inside huge_function


def test_javascript_keeps_functions_whole_and_splits_the_huge_one(count_tokens, check_chunks):
    chunks = chunk_document(Path("app.js"), JS_SOURCE, count_tokens, max_tokens=80)
    check_chunks(JS_SOURCE, chunks, 80)
    for definition in SMALL_JS:
        assert any(definition.strip() in c.text for c in chunks), definition
    huge = chunk_texts_containing(chunks, "of the accumulation")
    assert len(huge) >= 3
    assert huge[0].startswith("function huge(input) {\n  let acc = 0;")
    assert huge[-1].endswith("return acc;\n}")
    assert 'export function last() {\n  return "end";\n}' in chunks[-1].text


def test_whole_file_within_budget_is_one_chunk(count_tokens, check_chunks):
    chunks = chunk_document(Path("app.js"), JS_SOURCE, count_tokens, max_tokens=4096)
    check_chunks(JS_SOURCE, chunks, 4096)
    assert len(chunks) == 1


def test_a_single_huge_line_is_split_within_budget(count_tokens, check_chunks):
    source = 'const blob = "' + " ".join(f"word{i}" for i in range(600)) + '";\nconst after = 1;\n'
    chunks = chunk_document(Path("bundle.min.js"), source, count_tokens, max_tokens=64)
    check_chunks(source, chunks, 64)
    assert len(chunks) > 10
    assert all(c.start_line == 1 for c in chunks[:-1])


SNIPPETS = {
    ".ts": "interface P { x: number }\n\nfunction f(p: P): number {\n  return p.x * 2;\n}\n\n"
    "export class C {\n  m(a: string): string {\n    return a.trim();\n  }\n}\n",
    ".go": "package main\n\nimport \"fmt\"\n\nfunc add(a int, b int) int {\n\treturn a + b\n}\n\n"
    "func main() {\n\tfmt.Println(add(1, 2))\n}\n",
    ".rs": "use std::fmt;\n\nfn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\n"
    "struct P { x: i32 }\n\nimpl P {\n    fn double(&self) -> i32 {\n        self.x * 2\n    }\n}\n",
    ".java": "package demo;\n\npublic class Demo {\n    int add(int a, int b) {\n        return a + b;\n    }\n\n"
    "    public static void main(String[] args) {\n        System.out.println(new Demo().add(1, 2));\n    }\n}\n",
    ".c": "#include <stdio.h>\n\nint add(int a, int b) {\n    return a + b;\n}\n\n"
    "int main(void) {\n    printf(\"%d\\n\", add(1, 2));\n    return 0;\n}\n",
    ".cpp": "#include <vector>\n\nnamespace demo {\nclass V {\n public:\n  int size() const { return n_; }\n"
    " private:\n  int n_ = 0;\n};\n}  // namespace demo\n\nint main() { return demo::V().size(); }\n",
    ".h": "#pragma once\n\ntypedef struct { int x; } point;\n\nint point_norm(point p);\n\n"
    "static inline int twice(int v) {\n    return 2 * v;\n}\n",
}


@pytest.mark.parametrize("suffix", sorted(SNIPPETS))
def test_every_supported_language_parses_offline_and_chunks(count_tokens, check_chunks, suffix):
    source = SNIPPETS[suffix]
    chunks = chunk_document(Path(f"snippet{suffix}"), source, count_tokens, max_tokens=24)
    check_chunks(source, chunks, 24)
    assert len(chunks) >= 2
