"""``.. figure-folder:: path`` -- every PNG of a folder as a figure.

The benchmark scripts write their figures as PNG files; dropping them into the folder
(``docs/_static/bench/``) is all it takes to show them on the benchmarks page.  Figures
appear in the order of their file names; a text file of the same name
(``attention_vs_n.png`` -> ``attention_vs_n.txt``) holds the caption, in
reStructuredText (say what was measured, on which card, with which command and commit).
Without it the caption is the file name.  With ``:optional:`` an empty or missing folder
gives a one-line note instead of an error.
"""

import os

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList


class FigureFolder(Directive):
    required_arguments = 1
    option_spec = {"optional": directives.flag, "width": directives.unchanged}

    def run(self):
        env = self.state.document.settings.env
        if not hasattr(env, "figure_folder_docs"):
            env.figure_folder_docs = set()
        env.figure_folder_docs.add(env.docname)
        rel, folder = env.relfn2path(self.arguments[0])
        names = (
            sorted(f for f in os.listdir(folder) if f.endswith(".png"))
            if (os.path.isdir(folder))
            else []
        )
        if not names:
            if "optional" in self.options:
                return [nodes.paragraph(text=f"(No figures in {self.arguments[0]} yet.)")]
            raise self.error(f"figure-folder: no PNG files in {folder}")
        env.note_dependency(rel)
        width = self.options.get("width", "100%")
        lines = []
        for name in names:
            stem = name[: -len(".png")]
            caption_file = os.path.join(folder, stem + ".txt")
            if os.path.exists(caption_file):
                env.note_dependency(os.path.join(rel, stem + ".txt"))
                with open(caption_file, encoding="utf-8") as f:
                    caption = f.read().strip().splitlines()
            else:
                caption = [f"``{name}``"]
            lines += [
                f".. figure:: {self.arguments[0].rstrip('/')}/{name}",
                f"   :alt: {stem.replace('_', ' ')}",
                f"   :width: {width}",
                "   :figclass: bench-figure",
                "",
            ]
            lines += ["   " + line if line.strip() else "" for line in caption]
            lines.append("")
        container = nodes.container(classes=["figure-folder"])
        self.state.nested_parse(StringList(lines, source=folder), self.content_offset, container)
        return [container]


def _always_reread(app, env, added, changed, removed):
    # a PNG added to the folder is no dependency Sphinx knows about: read the pages that
    # list a folder again on every build
    return sorted(getattr(env, "figure_folder_docs", set()) - set(removed))


def _purge(app, env, docname):
    getattr(env, "figure_folder_docs", set()).discard(docname)


def _merge(app, env, docnames, other):
    env.figure_folder_docs = getattr(env, "figure_folder_docs", set()) | getattr(
        other, "figure_folder_docs", set()
    )


def setup(app):
    app.add_directive("figure-folder", FigureFolder)
    app.connect("env-get-outdated", _always_reread)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
