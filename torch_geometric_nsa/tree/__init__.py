"""Ball trees on any device: :func:`build_ball_tree` and its :class:`TreeLayout`."""
from .layout import TreeLayout
from .build import build_ball_tree, rotation_matrix, slot_capacity, ball_radius

__all__ = ['TreeLayout', 'build_ball_tree', 'rotation_matrix', 'slot_capacity',
           'ball_radius']
