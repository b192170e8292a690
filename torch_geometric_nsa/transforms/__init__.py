"""PyG transforms."""

from .ball_tree import BallTree

__all__ = ["BallTree"]
