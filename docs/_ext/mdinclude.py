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
"""

import os
import re

from docutils import nodes
from docutils.parsers.rst import Directive, directives

_UNDERLINES = ["=", "-", "~", "^", '"']


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
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
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
            out += [".. list-table::", "   :header-rows: 1", ""]
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
        rst = markdown_to_rst(text, self.options.get("heading-level"))
        # like docutils' own ``include``: the translated text is read as if it
        # stood in the including file (so headings become real sections)
        self.state_machine.insert_input(rst + [""], path)
        return []


def setup(app):
    app.add_directive("mdinclude", MarkdownInclude)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
