"""Helpers shared by the dataset classes (private)."""

import hashlib
import json
import os
import os.path as osp
import re
import tempfile
from typing import Any, Dict, Iterable, List, Optional

import torch
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


# -- processed caches ----------------------------------------------------------
def file_stamp(path: str) -> List:
    """``[path, size, mtime_ns]`` of a source file, for cache keys (``None``
    size and time for a missing file)."""
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, st.st_size, st.st_mtime_ns]


def transform_repr(transform: Any) -> Optional[str]:
    """``repr(transform)`` without memory addresses (stable across runs), or
    ``None``."""
    if transform is None:
        return None
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))


def cache_key(config: Any, length: int = 16) -> str:
    """A short hash of a JSON-serialisable description of a cache's inputs."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def save_processed(obj: Any, path: str) -> None:
    """``torch.save`` through a temporary file and an atomic rename, so that an
    interrupted run never leaves a half-written cache behind."""
    folder = osp.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def load_processed(path: str) -> Any:
    """Loads a processed cache with ``torch.load(..., weights_only=True)``:
    tensors, numbers, strings, lists, tuples and dicts only, so that a planted
    file can never run code.  Anything else is refused with an error that
    names the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines()]
        lines = [ln for ln in lines if ln]
        first = next((ln for ln in lines if "GLOBAL" in ln), lines[0] if lines else "")
        raise DataFormatError(
            f"Refusing to load processed file '{path}': it is not a plain tensor file "
            f"that loads with weights_only=True, so loading it could run code "
            f"({type(e).__name__}: {first}).  Delete it, or pass force_reload=True to "
            "rebuild it from the source files."
        ) from None


def load_collated(path: str, owner: str):
    """``(data, slices)`` of an :class:`~torch_geometric.data.InMemoryDataset` cache written
    as ``dict(data=data.to_dict(), slices=slices)`` (see :func:`save_processed`)."""
    from torch_geometric.data import Data

    out = load_processed(path)
    if not isinstance(out, dict) or "data" not in out or "slices" not in out:
        raise DataFormatError(
            f"Malformed processed file '{path}': not a {owner} cache; delete it or "
            "pass force_reload=True"
        )
    return Data.from_dict(out["data"]), out["slices"]


class SafeProcessing:
    """Mixin for :class:`torch_geometric.data.Dataset` subclasses whose
    processed files are plain tensor containers (see :func:`save_processed`).

    It replaces PyG's ``_download`` and ``_process`` steps, which

    * load ``processed/pre_transform.pt`` and ``pre_filter.pt`` with
      ``torch.load(weights_only=False)`` (a planted file runs code): the
      processed file names here already hold a hash of everything the output
      depends on, :obj:`pre_transform` included, so those files are neither
      read nor written;
    * leave an empty ``raw/`` or ``processed/`` folder behind when the data
      is missing or malformed: here a failed run removes the files and
      folders it made.
    """

    def _download(self):
        from torch_geometric.data.dataset import files_exist

        if files_exist(self.raw_paths):
            return
        self.download()  # never downloads here: raises, naming what is missing

    def _process(self):
        from torch_geometric.data.dataset import files_exist

        if not self.force_reload and files_exist(self.processed_paths):
            return
        made = [d for d in (self.root, self.processed_dir) if not osp.isdir(d)]
        before = {p for p in self.processed_paths if osp.exists(p)}
        os.makedirs(self.processed_dir, exist_ok=True)
        try:
            self.process()
        except BaseException:
            for p in self.processed_paths:
                if p not in before and osp.exists(p):
                    os.remove(p)
            for d in reversed(made):
                try:
                    os.rmdir(d)  # only when empty
                except OSError:
                    pass
            raise
