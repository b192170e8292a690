"""Maps the top-level ``kernels/`` folder of a source checkout to
``torch_geometric_nsa.kernels``.

Installed packages (wheels, ``pip install -e .`` with setuptools >= 64) carry the
mapping themselves.  Running from a checkout (``PYTHONPATH=.``, a legacy develop
install, or the repo root shadowing an editable install) would otherwise leave
``torch_geometric_nsa.kernels`` unimportable and the ops silently on the
reference.  The finder below only answers for that one subpackage, lazily, so
Triton is still imported only when a kernel is first used.
"""

import importlib.abc
import importlib.util
import os
import sys

NAME = "torch_geometric_nsa.kernels"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "kernels")


class _SourceKernelsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        init = os.path.join(SOURCE, "__init__.py")
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[SOURCE]
        )


def install() -> None:
    """Registers the finder if a checkout's ``kernels/`` folder sits next to the package.

    It goes first in ``sys.meta_path``: the kernels next to the imported package are the ones
    that belong to it, even where an editable install of another checkout would map the name
    elsewhere."""
    if os.path.isfile(os.path.join(SOURCE, "__init__.py")) and not any(
        isinstance(f, _SourceKernelsFinder) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _SourceKernelsFinder())
