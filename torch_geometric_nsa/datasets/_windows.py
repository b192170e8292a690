"""Pre-transformed samples stored as plain tensors (private).

:class:`MDTrajectory` and :class:`PolymerMD` build their windows on the fly.
With a :obj:`pre_transform` they follow PyG: every window is built and
transformed once in ``process()``, and the results are cached, collated as
:class:`~torch_geometric.data.InMemoryDataset` collates them, in a file that
loads with ``torch.load(weights_only=True)``.
"""

from typing import Any, Dict, List

from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.data.separate import separate

_PLAIN = (Tensor, int, float, str, bool, type(None))


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (list, tuple)):
        for o in obj:
            _check_plain(o, where)
        return
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        for k, v in obj.items():
            _check_plain(v, f"{where}['{k}']")
        return
    raise TypeError(
        f"pre_transform output {where} is a '{type(obj).__name__}': processed "
        "caches hold only tensors, numbers, strings, lists and dicts"
    )


def store_windows(data_list: List[Data]) -> Dict[str, Any]:
    """Collates pre-transformed samples into a dict of plain tensors."""
    for d in data_list:
        if type(d) is not Data:
            raise TypeError(
                "pre_transform must return torch_geometric.data.Data objects "
                f"(got '{type(d).__name__}')"
            )
    if not data_list:
        return dict(data=None, slices=None, length=0)
    data, slices = InMemoryDataset.collate(data_list)
    out = dict(data=data.to_dict(), slices=slices, length=len(data_list))
    _check_plain(out["data"], "data")
    return out


class StoredWindows:
    """The samples saved by :func:`store_windows`, indexed like a list."""

    def __init__(self, stored: Dict[str, Any], path: str):
        try:
            self.length = int(stored["length"])
            self.data = None if stored["data"] is None else Data.from_dict(stored["data"])
            self.slices = stored["slices"]
        except (KeyError, TypeError, ValueError) as e:
            from ._utils import DataFormatError

            raise DataFormatError(
                f"Malformed processed file '{path}': no valid pre-transformed samples ({e})"
            ) from None

    def __len__(self) -> int:
        return self.length

    def get(self, idx: int) -> Data:
        if self.slices is None:  # a single sample
            return Data.from_dict(self.data.to_dict())  # a shallow copy
        return separate(cls=Data, batch=self.data, idx=idx, slice_dict=self.slices, decrement=False)


def load_windows(stored: Dict[str, Any], path: str) -> StoredWindows:
    return StoredWindows(stored, path)
