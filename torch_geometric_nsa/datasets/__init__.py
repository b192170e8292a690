"""PyG datasets for the real data formats of the examples (DESIGN §6).

Nothing is downloaded at run time: each class's ``download()`` says where its
data comes from; the one fetch command,
``python -m torch_geometric_nsa.datasets.abacus_mini``, gets the default
cosmology data once.  Normalisation statistics always come from the training
split (the training nodes, for the whole cosmology box).  Processed files hold
plain tensors and load with ``torch.load(weights_only=True)`` (a file that
does not is refused, never executed); they are keyed on every argument, on
``repr(pre_transform)`` and on each source file's size and modification time
(the Abacus run's: names and sizes, so that a processed folder also loads
without the run).  Malformed input raises a
:class:`ValueError` that names the file and the problem.
"""

from .cosmology_halos import CosmologyHalos
from .md_trajectory import MDTrajectory, trajectory_to_npz
from .polymer_md import PolymerMD
from .shapenet_car import ShapeNetCar

__all__ = ["MDTrajectory", "trajectory_to_npz", "PolymerMD", "ShapeNetCar", "CosmologyHalos"]
