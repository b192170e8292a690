"""``.. mdinclude:: path`` -- include a Markdown file of the repository.

The benchmark and example READMEs and the changelog are Markdown (they are read
on GitHub too); this small directive renders the subset of Markdown they use --
ATX headings, paragraphs, bullet lists, pipe tables, fenced code, inline code,
bold, italics and links -- by translating it to reStructuredText, so the
documentation needs no Markdown parser package.

Options:

``:start-after: TEXT``  include only what follows the first line containing TEXT.
``:start-at: TEXT``     include from the first line containing TEXT on.
``:end-before: TEXT``   stop before the first (later) line containing TEXT.
``:heading-level: N``   ``#`` becomes a heading of level N (0 = the page title,
                        1 = the page's sections, ...); headings deeper than
                        four levels become rubrics.  Default: rubrics only.
``:optional:``          a missing file gives a short note instead of an error.
``:newest-first:``      in a log whose dated sections (a ``YYYY-MM-DD`` in the heading)
                        were appended oldest first, show each run of sibling dated
                        sections newest first; a run already newest first stays (a
                        run whose dates are all equal is taken as appended).

Tables whose cells are all short (numbers, labels) get the class ``md-table-compact``:
their cells do not wrap, and the table scrolls sideways when it is wider than the page
(docs/_static/custom.css).
"""

import os
import re

from docutils import nodes
from docutils.parsers.rst import Directive, directives

_UNDERLINES = ["=", "-", "~", "^", '"']
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")
# a table whose longest cell is at most this long does not wrap its cells
_COMPACT_CELL = 40


def _sections(lines):
    """Split Markdown lines into ``(depth, heading_line, body_lines)`` blocks; the text
    before the first heading is a block of depth 0.  Fenced code is never a heading."""
    blocks = [[0, None, []]]
    fenced = False
    for line in lines:
        if line.strip().startswith("```"):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            blocks.append([len(m.group(1)), line, []])
        else:
            blocks[-1][2].append(line)
    return blocks


def newest_first(md: str) -> str:
    """Reverse each run of consecutive sibling sections that carry a date in their
    heading, if the run is in ascending date order (a log appended oldest first).
    A section's subsections move with it."""

    def flatten(tree):
        out = []
        for node in tree:
            if node["heading"] is not None:
                out.append(node["heading"])
            out += node["body"]
            out += flatten(node["children"])
        return out

    # build a tree of sections
    root = {"depth": 0, "heading": None, "body": [], "children": []}
    stack = [root]
    for depth, heading, body in _sections(md.splitlines()):
        if heading is None:
            root["body"] = body
            continue
        node = {"depth": depth, "heading": heading, "body": body, "children": []}
        while stack[-1]["depth"] >= depth:
            stack.pop()
        stack[-1]["children"].append(node)
        stack.append(node)

    def reorder(node):
        kids = node["children"]
        for kid in kids:
            reorder(kid)
        out, i = [], 0
        while i < len(kids):
            j = i
            while j < len(kids) and _DATE.search(kids[j]["heading"]):
                j += 1
            if j == i:
                out.append(kids[i])
                i += 1
                continue
            run = kids[i:j]
            dates = [_DATE.search(k["heading"]).group(1) for k in run]
            out += run[::-1] if dates[0] <= dates[-1] and len(run) > 1 else run
            i = j
        node["children"] = out

    reorder(root)
    return "\n".join(root["body"] + flatten(root["children"])) + "\n"


def _inline(text: str) -> str:
    # protect code spans first
    spans = []

    def keep(m):
        spans.append(m.group(1))
        return f"\x00{len(spans) - 1}\x00"

    text = re.sub(r"`([^`]+)`", keep, text)
    text = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r"\1", text)  # images: alt text
    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", lambda m: f"`{m.group(1)} <{m.group(2)}>`__", text)
    text = re.sub(r"(?<![\w*])\*\*([^*]+)\*\*(?![\w*])", r"**\1**", text)
    text = re.sub(r"(?<![\w*])__([^_]+)__(?![\w_])", r"**\1**", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"*\1*", text)
    # escape characters that are markup in rST but plain text in Markdown
    text = re.sub(r"(?<![\w`])_(?=\w)", r"\\_", text)
    text = text.replace("|", r"\|")

    # rST needs inline literals to be delimited by non-word characters
    # (Markdown's `custom_op`s): join such neighbours with an escaped space
    text = re.sub("(?<=\\w)(\x00\\d+\x00)", r"\\ \1", text)
    text = re.sub("(\x00\\d+\x00)(?=\\w)", r"\1\\ ", text)

    def restore(m):
        code = spans[int(m.group(1))]
        return f"``{code}``" if "``" not in code else code

    return re.sub("\x00(\\d+)\x00", restore, text)


def _block(text: str) -> str:
    """Inline markup for text that starts a body element (a list item or a
    table cell): a leading ``-``, ``(a)``, ``1.`` ... is text in Markdown,
    but would open a nested list in reStructuredText."""
    text = _inline(text)
    if re.match(r"^([-*+](\s|$)|\(?[A-Za-z0-9]{1,3}[.)](\s|$)|#\.)", text):
        text = "\\" + text
    return text


def _cells(line: str):
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith(r"\|"):
        line = line[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)]


def markdown_to_rst(md: str, heading_level=None) -> list:
    lines = md.splitlines()
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            lang = stripped[3:].strip() or "text"
            i += 1
            block = []
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            out += [f".. code-block:: {lang}", ""]
            out += ["   " + b if b.strip() else "" for b in block]
            out.append("")
            continue
        m = _HEADING.match(line)
        if m:
            title = _inline(m.group(2))
            depth = len(m.group(1))
            level = None if heading_level is None else heading_level + depth - 1
            if level is not None and 0 <= level < len(_UNDERLINES):
                char = _UNDERLINES[level]
                out += [title, char * max(len(title), 3), ""]
            else:
                out += [f".. rubric:: {title}", ""]
            i += 1
            continue
        if (
            stripped.startswith("|")
            and i + 1 < len(lines)
            and re.match(r"^\s*\|?\s*:?-{2,}", lines[i + 1])
        ):
            header = _cells(line)
            i += 2
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            width = len(header)
            longest = max(len(cell) for row in [header] + rows for cell in row)
            out += [".. list-table::", "   :header-rows: 1"]
            if longest <= _COMPACT_CELL:
                out.append("   :class: md-table-compact")
            out.append("")
            for row in [header] + rows:
                row = (row + [""] * width)[:width]
                out.append("   * - " + (_block(row[0]) or r"\ "))
                for cell in row[1:]:
                    out.append("     - " + (_block(cell) or r"\ "))
            out.append("")
            continue
        if re.match(r"^\s*([-*+]|\d+\.)\s+", line):
            items = []  # (indent, bullet, text)
            while i < len(lines) and lines[i].strip():
                m = re.match(r"^(\s*)([-*+]|\d+\.)\s+(.*)$", lines[i])
                if m:
                    items.append([len(m.group(1)), m.group(2), m.group(3)])
                else:  # continuation line of the previous item
                    items[-1][2] += " " + lines[i].strip()
                i += 1
            levels = sorted({indent for indent, _, _ in items})
            previous = 0
            for indent, bullet, text in items:
                depth = levels.index(indent)
                bullet = "-" if bullet in "-*+" else "#."
                if depth != previous:
                    out.append("")
                previous = depth
                out.append("   " * depth + f"{bullet} {_block(text)}")
            out.append("")
            continue
        if not stripped:
            out.append("")
            i += 1
            continue
        para = []
        while (
            i < len(lines)
            and lines[i].strip()
            and not lines[i].strip().startswith(("```", "#", "|"))
            and not re.match(r"^\s*([-*+]|\d+\.)\s+", lines[i])
        ):
            para.append(lines[i].strip())
            i += 1
        out += [_inline(" ".join(para)), ""]
    return out


class MarkdownInclude(Directive):
    required_arguments = 1
    option_spec = {
        "start-after": directives.unchanged_required,
        "start-at": directives.unchanged_required,
        "end-before": directives.unchanged_required,
        "heading-level": directives.nonnegative_int,
        "optional": directives.flag,
        "newest-first": directives.flag,
    }

    def run(self):
        env = self.state.document.settings.env
        rel, path = env.relfn2path(self.arguments[0])
        if not os.path.exists(path):
            if "optional" in self.options:
                para = nodes.paragraph(text=f"({self.arguments[0]} has not been written yet.)")
                return [para]
            raise self.error(f"mdinclude: no such file: {path}")
        env.note_dependency(rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for option in ("start-after", "start-at"):
            if option in self.options:
                marker = self.options[option]
                pos = text.find(marker)
                if pos < 0:
                    raise self.error(f"mdinclude: {marker!r} not found in {path}")
                line_start = text.rfind("\n", 0, pos) + 1
                text = (
                    text[line_start:] if option == "start-at" else text[text.find("\n", pos) + 1 :]
                )
        if "end-before" in self.options:
            marker = self.options["end-before"]
            pos = text.find(marker)
            if pos < 0:
                raise self.error(f"mdinclude: {marker!r} not found in {path}")
            text = text[: text.rfind("\n", 0, pos) + 1]
        if "newest-first" in self.options:
            text = newest_first(text)
        rst = markdown_to_rst(text, self.options.get("heading-level"))
        # like docutils' own ``include``: the translated text is read as if it
        # stood in the including file (so headings become real sections)
        self.state_machine.insert_input(rst + [""], path)
        return []


def setup(app):
    app.add_directive("mdinclude", MarkdownInclude)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
