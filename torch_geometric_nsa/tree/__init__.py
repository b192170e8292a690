"""Ball trees on any device: :func:`build_ball_tree` and its :class:`TreeLayout`."""

from .build import ball_radius, build_ball_tree, rotation_matrix, slot_capacity
from .layout import TreeLayout

__all__ = ["TreeLayout", "build_ball_tree", "rotation_matrix", "slot_capacity", "ball_radius"]
