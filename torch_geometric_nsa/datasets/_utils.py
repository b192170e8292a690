"""Helpers shared by the dataset classes (private)."""

import os
import os.path as osp
from typing import Dict, Iterable, Optional

from torch import Tensor

#: Environment variable naming the folder where default datasets are processed.
DATA_ENV = "TORCH_GEOMETRIC_NSA_DATA"


def default_root(name: str) -> str:
    """``$TORCH_GEOMETRIC_NSA_DATA/<name>`` or ``~/.cache/torch_geometric_nsa/<name>``."""
    base = os.environ.get(DATA_ENV)
    if base is None:
        base = osp.join(osp.expanduser("~"), ".cache", "torch_geometric_nsa")
    return osp.join(base, name)


class DataFormatError(ValueError):
    """A data file is missing something or holds something malformed."""


def require_file(path: str, what: str = "") -> str:
    if not osp.isfile(path):
        raise FileNotFoundError(f"Missing data file '{path}'" + (f" ({what})" if what else ""))
    return path


def check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise DataFormatError(f"Malformed data file '{path}': {message}")


def mean_std(x: Tensor, dims: Iterable[int] = (0,), eps: float = 1e-8):
    """Mean and (population) standard deviation over ``dims``, in float64."""
    x = x.double()
    dims = tuple(dims)
    mean = x.mean(dim=dims)
    std = x.std(dim=dims, unbiased=False).clamp_min(eps)
    return mean.float(), std.float()


def split_stats(stats: Optional[Dict[str, Tensor]]) -> Dict[str, Tensor]:
    return {} if stats is None else dict(stats)
