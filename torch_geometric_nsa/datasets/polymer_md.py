import os
import os.path as osp
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch_geometric.data import Data, Dataset

from ._utils import DataFormatError, default_root


def _h5(path: str, key: str) -> np.ndarray:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover
        raise ImportError("PolymerMD reads HDF5 files with h5py: pip install h5py") from e
    if not osp.isfile(path):
        raise FileNotFoundError(f"Missing data file '{path}'")
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataFormatError(
                    f"Malformed data file '{path}': no dataset '{key}' (has {sorted(f.keys())})"
                )
            return f[key][()]
    except DataFormatError:
        raise
    except Exception as e:
        raise DataFormatError(f"Malformed data file '{path}': {e}") from e


class PolymerMD(Dataset):
    r"""The coarse-grained polymer MD benchmark of Fu et al. (2022), "Simulate
    Time-integrated Coarse-grained Molecular Dynamics with Multi-scale Graph
    Networks", in the format `Erwin
    <https://arxiv.org/abs/2502.17019>`_ uses: predict every bead's
    acceleration from a window of its past velocities.

    Files::

        root/raw/polymer_{train,test}/<id>/position.h5   'position'      [T, N, 3]
                                          /ptype.h5      'particle_type' [N]
                                          /bond.h5       'bond_indices'  [N-1, 2]
        root/raw/polymer_{train,test}.txt   (optional) trajectory ids, one a line

    Without a split file, every ``<id>`` folder of the split is used.  A
    sample is a window of :obj:`window` (16) frames
    :math:`\mathbf{p}_{t-15}, \ldots, \mathbf{p}_t` of one trajectory:

    .. math::
        \mathbf{x}_i = \big[\hat{\mathbf{v}}_{t,i}, \ldots,
        \hat{\mathbf{v}}_{t-14,i}, \mathrm{onehot}(\mathrm{type}_i)\big],
        \quad \mathbf{y}_i = \hat{\mathbf{a}}_{t,i},

    with :math:`\mathbf{v}_t = \mathbf{p}_t - \mathbf{p}_{t-1}`, the target
    acceleration :math:`\mathbf{a}_t = \mathbf{p}_{t+1} - 2\mathbf{p}_t +
    \mathbf{p}_{t-1}`, hats standardised with statistics of the training
    trajectories only (:meth:`denormalize` maps accelerations back),
    ``pos`` :math:`= \mathbf{p}_t` and the bonds (both directions) as
    ``edge_index``.  Frames are read lazily from the HDF5 files.

    Args:
        root (str, optional): dataset folder.  (default:
            ``$TORCH_GEOMETRIC_NSA_DATA/PolymerMD``)
        split (str): :obj:`"train"` or :obj:`"test"`.
        window (int): frames per window.  (default: :obj:`16`)
        stride (int): frames between successive windows.  (default: :obj:`1`)
        num_types (int, optional): number of particle types (one-hot width);
            default: 1 + the largest type in the training data.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "train",
        window: int = 16,
        stride: int = 1,
        num_types: Optional[int] = None,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' (got '{split}')")
        if window < 3:
            raise ValueError("window must be at least 3 frames")
        self.split, self.window, self.stride = split, int(window), int(stride)
        self._num_types = num_types
        super().__init__(
            root or default_root("PolymerMD"), transform, pre_transform, force_reload=force_reload
        )
        self.meta: Dict = torch.load(self.processed_paths[0], weights_only=False)
        self.trajs = self.meta[split]
        self.index = [
            (k, t)
            for k, tr in enumerate(self.trajs)
            for t in range(self.window - 1, tr["T"] - 1, self.stride)
        ]

    def _ids(self, split: str) -> List[str]:
        folder = osp.join(self.raw_dir, f"polymer_{split}")
        listing = osp.join(self.raw_dir, f"polymer_{split}.txt")
        if osp.isfile(listing):
            with open(listing) as f:
                return [line.strip() for line in f if line.strip()]
        if not osp.isdir(folder):
            return []
        ids = [d for d in os.listdir(folder) if osp.isdir(osp.join(folder, d))]
        return sorted(ids, key=lambda s: (len(s), s))

    @property
    def raw_file_names(self) -> List[str]:
        return ["polymer_train", "polymer_test"]

    def download(self):
        raise FileNotFoundError(
            f"PolymerMD: missing '{self.raw_dir}/polymer_train' or 'polymer_test'.  "
            "Nothing is downloaded: get the polymer data of Fu et al. 2022 "
            "('Simulate Time-integrated Coarse-grained Molecular Dynamics with "
            "Multi-scale Graph Networks'; the data links of its code release, also "
            "referenced by Erwin, github.com/maxxxzdn/erwin) "
            f"and place the trajectory folders under '{self.raw_dir}'."
        )

    @property
    def processed_file_names(self) -> List[str]:
        return [f"meta_w{self.window}.pt"]

    def _scan(self, split: str, accumulate=None) -> List[Dict]:
        trajs = []
        for tid in self._ids(split):
            d = osp.join(self.raw_dir, f"polymer_{split}", tid)
            pos_path = osp.join(d, "position.h5")
            pos = _h5(pos_path, "position")
            if pos.ndim != 3 or pos.shape[2] != 3:
                raise DataFormatError(
                    f"Malformed data file '{pos_path}': 'position' "
                    f"has shape {pos.shape}, expected [T, N, 3]"
                )
            if pos.shape[0] < self.window + 1:
                raise DataFormatError(
                    f"Malformed data file '{pos_path}': {pos.shape[0]} "
                    f"frames, a window needs {self.window + 1}"
                )
            if not np.isfinite(pos).all():
                raise DataFormatError(f"Malformed data file '{pos_path}': non-finite positions")
            ptype_path = osp.join(d, "ptype.h5")
            ptype = _h5(ptype_path, "particle_type").reshape(-1)
            if ptype.shape[0] != pos.shape[1]:
                raise DataFormatError(
                    f"Malformed data file '{ptype_path}': {ptype.shape[0]} "
                    f"types for {pos.shape[1]} particles"
                )
            bond_path = osp.join(d, "bond.h5")
            bonds = _h5(bond_path, "bond_indices")
            if (
                bonds.ndim != 2
                or bonds.shape[1] != 2
                or (bonds.size and (bonds.min() < 0 or bonds.max() >= pos.shape[1]))
            ):
                raise DataFormatError(
                    f"Malformed data file '{bond_path}': 'bond_indices' "
                    f"must be [B, 2] indices below {pos.shape[1]}"
                )
            if accumulate is not None:
                accumulate(pos.astype(np.float64), ptype)
            trajs.append(
                dict(
                    id=tid,
                    path=pos_path,
                    T=int(pos.shape[0]),
                    N=int(pos.shape[1]),
                    ptype=torch.from_numpy(ptype.astype(np.int64)),
                    bonds=torch.from_numpy(bonds.astype(np.int64)),
                )
            )
        return trajs

    def process(self):
        acc = dict(v=np.zeros(3), v2=np.zeros(3), nv=0, a=np.zeros(3), a2=np.zeros(3), na=0, tmax=0)

        def accumulate(pos, ptype):
            v = np.diff(pos, axis=0).reshape(-1, 3)
            a = (pos[2:] - 2 * pos[1:-1] + pos[:-2]).reshape(-1, 3)
            acc["v"] += v.sum(0)
            acc["v2"] += (v**2).sum(0)
            acc["nv"] += len(v)
            acc["a"] += a.sum(0)
            acc["a2"] += (a**2).sum(0)
            acc["na"] += len(a)
            acc["tmax"] = max(acc["tmax"], int(ptype.max()) if ptype.size else 0)

        train = self._scan("train", accumulate)
        if not train:
            raise DataFormatError(
                f"PolymerMD: no training trajectories in '{self.raw_dir}/polymer_train'"
            )
        test = self._scan("test")

        def ms(s, s2, n):
            m = s / n
            return (
                torch.tensor(m, dtype=torch.float),
                torch.tensor(np.sqrt(np.maximum(s2 / n - m**2, 1e-16)), dtype=torch.float),
            )

        vm, vs = ms(acc["v"], acc["v2"], acc["nv"])
        am, as_ = ms(acc["a"], acc["a2"], acc["na"])
        stats = dict(vel_mean=vm, vel_std=vs, acc_mean=am, acc_std=as_)
        torch.save(
            dict(train=train, test=test, stats=stats, num_types=acc["tmax"] + 1),
            self.processed_paths[0],
        )

    @property
    def stats(self) -> Dict[str, torch.Tensor]:
        return self.meta["stats"]

    @property
    def num_types(self) -> int:
        return self._num_types or self.meta["num_types"]

    @property
    def num_node_features(self) -> int:
        return 3 * (self.window - 1) + self.num_types

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.stats["acc_std"].to(y) + self.stats["acc_mean"].to(y)

    def len(self) -> int:
        return len(self.index)

    def get(self, idx: int) -> Data:
        import h5py

        k, t = self.index[idx]
        tr = self.trajs[k]
        with h5py.File(tr["path"], "r") as f:
            frames = torch.from_numpy(
                f["position"][t - self.window + 1 : t + 2].astype(np.float32)
            )  # [W+1, N, 3]
        s = self.stats
        vel = frames[1:-1] - frames[:-2]  # v_{t-W+2} .. v_t
        accel = frames[-1] - 2 * frames[-2] + frames[-3]
        vel = ((vel - s["vel_mean"]) / s["vel_std"]).flip(0)  # most recent first
        N = tr["N"]
        onehot = torch.nn.functional.one_hot(tr["ptype"], self.num_types).float()
        x = torch.cat([vel.permute(1, 0, 2).reshape(N, -1), onehot], 1)
        b = tr["bonds"].t()
        data = Data(
            x=x,
            pos=frames[-2],
            y=(accel - s["acc_mean"]) / s["acc_std"],
            acc=accel,
            edge_index=torch.cat([b, b.flip(0)], 1),
            particle_type=tr["ptype"],
        )
        if self.pre_transform is not None:
            data = self.pre_transform(data)
        return data

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(split={self.split}, {len(self.trajs)} "
            f"trajectories, {len(self)} windows)"
        )
