"""Let dotted names wrap after a dot, never inside a word.

Titles of the API pages (``torch_geometric_nsa.transforms.BallTree``) and the module
part of signatures are single long words: a browser either lets them overflow or, with
furo's ``overflow-wrap: anywhere``, breaks them at any letter.  This transform puts an
HTML ``<wbr>`` (a break opportunity that is not a character, so copying a name copies
it unchanged) after every dot that joins two parts of a name, in section titles and in
the module prefix of signatures.  Sphinx drops raw nodes when it copies titles into
tables of contents (and the page's ``<title>``, which stays plain), so the navigation
trees (furo's sidebar, the page's table of contents) get their ``<wbr>`` when the page
is written.  ``docs/_static/custom.css`` then switches off breaking inside words.
"""

import re

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms import SphinxTransform

_DOT = re.compile(r"(?<=[A-Za-z0-9_])\.(?=[A-Za-z_])")


def _split(text: str):
    parts = _DOT.split(text)
    if len(parts) == 1:
        return None
    out = []
    for i, part in enumerate(parts):
        out.append(nodes.Text(part + ("." if i < len(parts) - 1 else "")))
        if i < len(parts) - 1:
            out.append(nodes.raw("", "<wbr>", format="html"))
    return out


class DottedNameBreaks(SphinxTransform):
    default_priority = 900

    def apply(self, **kwargs):
        if self.app.builder.format != "html":
            return
        targets = list(self.document.findall(nodes.title))
        targets += list(self.document.findall(addnodes.desc_addname))
        for target in targets:
            for text in list(target.findall(nodes.Text)):
                pieces = _split(str(text))
                if pieces is not None:
                    text.parent.replace(text, pieces)


_TEXT = re.compile(r">([^<>]+)<")


def _break_nav_html(html: str) -> str:
    """``<wbr>`` after the dots of dotted names in the text (not the tags) of HTML."""
    return _TEXT.sub(lambda m: ">" + _DOT.sub(".<wbr>", m.group(1)) + "<", html)


def _navigation(app, pagename, templatename, context, doctree):
    # after furo's own handler (priority 500), which computes the sidebar tree
    for key in ("furo_navigation_tree", "toc"):
        if isinstance(context.get(key), str):
            context[key] = _break_nav_html(context[key])


def setup(app):
    app.add_transform(DottedNameBreaks)
    app.connect("html-page-context", _navigation, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
