"""Sphinx configuration of the torch_geometric_nsa documentation.

Build (offline; no intersphinx inventories are fetched)::

    python -m sphinx -W --keep-going -b html    docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest
"""

import datetime
import importlib.util
import os
import sys

import torch_geometric_nsa

sys.path.insert(0, os.path.abspath("_ext"))

project = "torch_geometric_nsa"
author = "torch_geometric_nsa developers"
copyright = f"{datetime.date.today().year}, {author}"
version = release = torch_geometric_nsa.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "mdinclude",  # docs/_ext/mdinclude.py: Markdown READMEs and changelog
    "figurefolder",  # docs/_ext/figurefolder.py: the benchmark figures
    "wordbreaks",  # docs/_ext/wordbreaks.py: dotted names wrap after a dot
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "README.md", "design/*.md", "scripts", "_ext"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"

# --- HTML -----------------------------------------------------------------
html_theme = "furo"
html_title = f"torch_geometric_nsa {release}"
html_static_path = ["_static"]
# names never break inside a word; wide tables scroll (docs/_static/custom.css)
html_css_files = ["custom.css"]
html_theme_options = {
    "sidebar_hide_name": False,
    "navigation_with_keys": True,
}

# --- math: MathJax is served from the site itself ---------------------------
# The package sphinx-mathjax-offline (the ``docs`` extra) ships MathJax 3.2.2, the
# version Sphinx would otherwise load from a CDN; its ``static`` folder is copied
# into ``_static`` so that formulas render with no network, from ``file://`` too.
# MathJax's SVG output needs no web fonts (browsers refuse fonts from file://).
_mathjax = importlib.util.find_spec("sphinx-mathjax-offline")
if _mathjax is None:
    raise RuntimeError(
        "the documentation serves MathJax itself: install the docs extra "
        '(pip install -e ".[docs]" or pip install -r docs/requirements.txt)'
    )
html_static_path.append(os.path.join(os.path.dirname(_mathjax.origin), "static"))
mathjax_path = "mathjax/tex-svg.js"

# --- copy buttons -------------------------------------------------------------
# Copy only the code of a doctest block: no ``>>>``/``...`` prompts, no output.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True
copybutton_exclude = ".linenos, .gp, .go"

# --- autodoc / autosummary / napoleon --------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_mock_imports = []  # everything must import for real

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_use_rtype = False
# PyG's "Shapes:" section is a bullet list (``- **input:** ...``): render it
# as-is under a heading.
napoleon_custom_sections = ["Shapes", "Shape"]

# --- cross references ------------------------------------------------------
# Nitpicky for our own names.  Without intersphinx (CI is offline) references
# into Python, PyTorch, PyG and NumPy cannot resolve; those are ignored below,
# and nothing else is.
nitpicky = True
nitpick_ignore_regex = [
    # private mixin in the datasets' bases (weights_only caches; see the datasets page)
    (r"py:class", r"torch_geometric_nsa\.datasets\._utils\.SafeProcessing"),
    (
        r"py:.*",
        r"(torch|torch_geometric|numpy|np|typing|collections|"
        r"dataclasses|abc|enum|contextlib|os|pathlib|triton|"
        r"MDAnalysis|h5py)(\..*)?",
    ),
    (
        r"py:.*",
        r"(Tensor|OptTensor|Adj|OptPairTensor|PairTensor|Size|"
        r"Data|Batch|Dataset|InMemoryDataset|BaseTransform|"
        r"MessagePassing|Module|Parameter|device|dtype|Generator|"
        r"Iterator|Iterable|Sequence|Callable|Optional|Union|Any|"
        r"Tuple|List|Dict|Literal|ContextManager|"
        r"PathLike|Path)",
    ),
    (
        r"py:.*",
        r"(int|float|bool|str|bytes|tuple|list|dict|set|object|"
        r"type|None|NoneType|callable|optional|iterable|"
        r"Ellipsis|slice|range|Exception|ValueError|TypeError|"
        r"RuntimeError)",
    ),
    (r"py:.*", r"(default|defaults|default: .*|optional)"),
    # PyG-style docstrings use :obj: for argument names and literals
    # (:obj:`True`, :obj:`-1.0`, :obj:`batch_size`): only dotted Python
    # names given to :obj: are checkable.
    (r"py:obj", r"(?![A-Za-z_]\w*(\.[A-Za-z_]\w*)+$).*"),
    # docstrings inherited from PyG base classes (``:obj:`self.raw_dir```)
    (r"py:.*", r"self\..*"),
    # methods our classes inherit from PyTorch / PyG base classes
    (
        r"py:(meth|attr)",
        r"(propagate|message|aggregate|update|"
        r"message_and_aggregate|forward|state_dict|"
        r"load_state_dict|parameters|to|training)",
    ),
    # private helpers named in docstrings are not part of the reference
    (r"py:.*", r"(.*\.)?_[A-Za-z0-9][^.]*"),
]

# --- doctest ---------------------------------------------------------------
# No hidden setup: every page imports what it uses, so the doctest build proves
# that its snippets run as pasted (in page order, each page in a fresh namespace).
doctest_test_doctest_blocks = "default"


# --- public names for private paths -----------------------------------------
# Type hints and docstrings name objects by where they are defined
# (``torch_geometric_nsa.tree.layout.TreeLayout``) or where they are
# re-exported (``torch_geometric_nsa.build_ball_tree``); the API reference
# documents each object once, under its public subpackage.  Resolve such
# references to the documented object with the same name (the one sharing the
# longest module prefix), so that nitpicky mode still catches genuinely
# undocumented names.
def _resolve_public_name(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    modname = node.get("py:module") or ""
    if not (target.startswith("torch_geometric_nsa") or modname.startswith("torch_geometric_nsa")):
        return None
    domain = env.get_domain("py")
    last = target.rpartition(".")[2]
    candidates = [
        name
        for name in domain.objects
        if name.startswith("torch_geometric_nsa.") and name.rpartition(".")[2] == last
    ]
    if not candidates:
        return None

    def shared(name):
        a, b = name.split("."), (target if "." in target else f"{modname}.{target}").split(".")
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    best = max(candidates, key=lambda name: (shared(name), -len(name)))
    node = node.deepcopy()
    node["reftarget"] = best
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], best, node, contnode
    )


def setup(app):
    app.connect("missing-reference", _resolve_public_name)
