"""Natively Trainable Sparse Attention over ball trees (Erwin NSA) for PyTorch Geometric."""

from . import _source_kernels
from .tree import TreeLayout, build_ball_tree

_source_kernels.install()

__version__ = "0.1.0"

__all__ = ["TreeLayout", "build_ball_tree", "__version__"]
