"""PyG datasets for the real data formats of the examples (DESIGN §6).

Nothing is downloaded: each class's ``download()`` says where its data comes
from.  Normalisation statistics always come from the training split.
"""

from .cosmology_halos import CosmologyHalos
from .md_trajectory import MDTrajectory, trajectory_to_npz
from .polymer_md import PolymerMD
from .shapenet_car import ShapeNetCar

__all__ = ["MDTrajectory", "trajectory_to_npz", "PolymerMD", "ShapeNetCar", "CosmologyHalos"]
