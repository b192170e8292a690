"""The Markdown subset that docs/_ext/mdinclude.py renders (READMEs, changelog)."""

import io
import os.path as osp
import sys

import pytest

docutils = pytest.importorskip("docutils")
from docutils.core import publish_doctree  # noqa: E402

sys.path.insert(0, osp.join(osp.dirname(__file__), "..", "..", "docs", "_ext"))
from mdinclude import markdown_to_rst  # noqa: E402

MD = """# Benchmarks

Measured on one **H100** with `python benchmarks/attention.py`
(see [the docs](https://example.org)).

## Table

| N | ours (ms) | sdpa (ms) |
|---:|---|---|
| 4,096 | 0.1 | 0.2 |
| 1,048,576 | 9.9 | |

- first item with `code|pipe`
  continued here
  - nested item
- second item

1. one
2. two

```bash
python benchmarks/attention.py --quick
```
"""


def parse(rst_lines):
    stream = io.StringIO()
    doctree = publish_doctree(
        "\n".join(rst_lines), settings_overrides={"warning_stream": stream, "report_level": 2}
    )
    return doctree, stream.getvalue()


def test_renders_without_warnings():
    doctree, warnings = parse(markdown_to_rst(MD, heading_level=0))
    assert warnings == ""
    text = doctree.astext()
    assert "Benchmarks" in text and "1,048,576" in text
    assert "python benchmarks/attention.py --quick" in text
    assert "code|pipe" in text


def test_structure():
    rst = markdown_to_rst(MD, heading_level=0)
    doctree, _ = parse(rst)
    tags = {node.tagname for node in doctree.findall()}
    assert {
        "table",
        "bullet_list",
        "enumerated_list",
        "literal_block",
        "reference",
        "strong",
        "literal",
    } <= tags
    table = next(n for n in doctree.findall() if n.tagname == "table")
    rows = [n for n in table.findall() if n.tagname == "row"]
    assert len(rows) == 3  # header + 2 rows, the empty cell kept


def test_markdown_text_that_looks_like_rst_lists():
    md = "- (a) ours: x\n- (b) ref\n\n| a | b |\n|---|---|\n| - | 1. |\n"
    doctree, warnings = parse(markdown_to_rst(md))
    assert warnings == ""
    assert len(list(doctree.findall(lambda n: n.tagname == "enumerated_list"))) == 0
    assert len(list(doctree.findall(lambda n: n.tagname == "bullet_list"))) == 1
    assert "(a) ours" in doctree.astext()


def test_code_span_followed_by_a_letter():
    doctree, warnings = parse(markdown_to_rst("many `custom_op`s here\n"))
    assert warnings == ""
    assert "custom_ops here" in doctree.astext()


def test_headings_become_rubrics_by_default():
    rst = markdown_to_rst("# Title\n\ntext\n")
    assert rst[0] == ".. rubric:: Title"
