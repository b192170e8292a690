"""PyG-facing modules: the Erwin NSA layer, the MPNN embedding, neighbour graphs."""

from . import models
from .conv import ErwinNSAConv, SlotGeometry
from .embedding import MPNNEmbedding
from .neighbors import knn_graph, radius_graph

__all__ = ["ErwinNSAConv", "SlotGeometry", "MPNNEmbedding", "radius_graph", "knn_graph", "models"]
