import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch_geometric.data import Data, Dataset

from ._utils import (
    DataFormatError,
    SafeProcessing,
    cache_key,
    default_root,
    file_stamp,
    load_processed,
    save_processed,
    transform_repr,
)
from ._windows import load_windows, store_windows

#: The benchmark's split files ``splits/<name>.txt`` and the folder of each.
BENCHMARK_SPLITS = {"train": "polymer_train", "val": "polymer_train", "test_class2": "polymer_test"}
#: The simple layout, for folders without ``splits/``.
SIMPLE_SPLITS = {"train": "polymer_train", "test": "polymer_test"}
_FILES = ("position.h5", "ptype.h5", "bond.h5")


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


def _read_ids(path: str) -> List[str]:
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    for i in ids:
        if i in (".", "..") or "/" in i or "\\" in i:
            raise DataFormatError(
                f"Malformed split file '{path}': '{i}' is not a trajectory folder name"
            )
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataFormatError(f"Malformed split file '{path}': repeated ids {dup}")
    return ids


class PolymerMD(SafeProcessing, Dataset):
    r"""The coarse-grained polymer MD benchmark of Fu et al. (2022), "Simulate
    Time-integrated Coarse-grained Molecular Dynamics with Multi-scale Graph
    Networks", in the format `Erwin
    <https://arxiv.org/abs/2502.17019>`_ uses: predict every bead's
    acceleration from a window of its past velocities.

    Files, as the benchmark ships them::

        root/raw/polymer_{train,test}/<id>/position.h5   'position'      [T, N, 3]
                                          /ptype.h5      'particle_type' [N]
                                          /bond.h5       'bond_indices'  [N-1, 2]
        root/raw/splits/train.txt          ids under polymer_train/, one a line
        root/raw/splits/val.txt            ids under polymer_train/
        root/raw/splits/test_class2.txt    ids under polymer_test/

    With ``splits/`` (the benchmark's layout, the one Erwin trains on), the
    splits are :obj:`"train"`, :obj:`"val"` and :obj:`"test_class2"`, each
    exactly the trajectories its file lists.  Without it, the simple layout
    has the splits :obj:`"train"` (``polymer_train/``) and :obj:`"test"`
    (``polymer_test/``), each listed by an optional
    ``root/raw/polymer_{train,test}.txt`` or else made of every ``<id>``
    folder.

    A sample is a window of :obj:`window` (16) frames
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

    The processed file (tensors only, loaded with ``weights_only=True``) is
    keyed on the layout, the ids of every split, the path, size and
    modification time of every HDF5 and split file, :obj:`window` and
    ``repr(pre_transform)``: replacing a trajectory processes it again.

    Args:
        root (str, optional): dataset folder.  (default:
            ``$TORCH_GEOMETRIC_NSA_DATA/PolymerMD``)
        split (str): :obj:`"train"`, :obj:`"val"` or :obj:`"test_class2"`
            with ``raw/splits/``; :obj:`"train"` or :obj:`"test"` without.
            (default: :obj:`"train"`)
        window (int): frames per window.  (default: :obj:`16`)
        stride (int): frames between successive windows.  (default: :obj:`1`)
        num_types (int, optional): number of particle types (one-hot width);
            default: 1 + the largest type in the training data.  A type at or
            above it raises, naming the ``ptype.h5`` file.
        transform (callable, optional): applied to every sample on access.
        pre_transform (callable, optional): applied once to every window of
            every split in :meth:`process`, as in PyG, and the results are
            cached.  This stores every window (about :math:`4(3W + T)N` bytes
            each), so use it for data that fits in memory.
        force_reload (bool): reprocess.  (default: :obj:`False`)

    Shapes:
        - **x**: :math:`[N, 3(W - 1) + T]` with :math:`W` = :obj:`window`
          and :math:`T` particle types, **pos**, **y**, **acc**:
          :math:`[N, 3]`, **edge_index**: :math:`[2, 2B]`,
          **particle_type**: :math:`[N]`.
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
        if window < 3:
            raise ValueError("window must be at least 3 frames")
        if stride < 1:
            raise ValueError("stride must be positive")
        if num_types is not None and num_types < 1:
            raise ValueError("num_types must be positive")
        root = root or default_root("PolymerMD")
        self.benchmark = osp.isdir(osp.join(root, "raw", "splits"))
        splits = BENCHMARK_SPLITS if self.benchmark else SIMPLE_SPLITS
        if split not in splits:
            where = (
                f"'{osp.join(root, 'raw', 'splits')}' holds the benchmark's split files"
                if self.benchmark
                else f"'{osp.join(root, 'raw')}' has no 'splits/' folder (simple layout)"
            )
            raise ValueError(f"split must be one of {list(splits)} (got '{split}'): {where}")
        self.split, self.window, self.stride = split, int(window), int(stride)
        self._num_types = num_types
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        path = self.processed_paths[0]
        self.meta: Dict = load_processed(path)
        if not isinstance(self.meta, dict) or split not in self.meta or "stats" not in self.meta:
            raise DataFormatError(
                f"Malformed processed file '{path}': not a PolymerMD cache; delete it or "
                "pass force_reload=True"
            )
        self.trajs = self.meta[split]
        for tr in self.trajs:
            self._check_types(tr, self.num_types)
        self.index = self._index(self.trajs)
        self._windows = None
        if self.meta.get("windows") is not None:
            self._windows = load_windows(self.meta["windows"][split], path)

    # -- layout -------------------------------------------------------------
    @property
    def splits(self) -> Dict[str, str]:
        """Split name -> trajectory folder, in this dataset's layout."""
        return BENCHMARK_SPLITS if self.benchmark else SIMPLE_SPLITS

    def _listing(self, split: str) -> str:
        if self.benchmark:
            return osp.join(self.raw_dir, "splits", f"{split}.txt")
        return osp.join(self.raw_dir, f"polymer_{split}.txt")

    def _ids(self, split: str) -> List[str]:
        listing = self._listing(split)
        if self.benchmark:
            if not osp.isfile(listing):
                raise FileNotFoundError(
                    f"PolymerMD: missing split file '{listing}' (the benchmark's "
                    f"'splits/' folder has {sorted(os.listdir(osp.dirname(listing)))})"
                )
            return _read_ids(listing)
        if osp.isfile(listing):
            return _read_ids(listing)
        folder = osp.join(self.raw_dir, self.splits[split])
        if not osp.isdir(folder):
            return []
        ids = [d for d in os.listdir(folder) if osp.isdir(osp.join(folder, d))]
        return sorted(ids, key=lambda s: (len(s), s))

    def _traj_dir(self, split: str, tid: str) -> str:
        return osp.join(self.raw_dir, self.splits[split], tid)

    @property
    def raw_file_names(self) -> List[str]:
        return ["polymer_train"] + (["splits"] if self.benchmark else ["polymer_test"])

    def download(self):
        missing = [p for p in self.raw_paths if not osp.exists(p)]
        raise FileNotFoundError(
            f"PolymerMD: missing {missing}.  "
            "Nothing is downloaded: get the polymer data of Fu et al. 2022 "
            "('Simulate Time-integrated Coarse-grained Molecular Dynamics with "
            "Multi-scale Graph Networks'; the data links of its code release, also "
            "referenced by Erwin, github.com/maxxxzdn/erwin) "
            f"and place the trajectory folders (and 'splits/') under '{self.raw_dir}'."
        )

    def _config(self) -> Dict:
        ids = {s: self._ids(s) for s in self.splits}
        files = [file_stamp(self._listing(s)) for s in self.splits]
        for s, lst in ids.items():
            for tid in lst:
                files += [file_stamp(osp.join(self._traj_dir(s, tid), f)) for f in _FILES]
        cfg = dict(
            version=2,
            benchmark=self.benchmark,
            window=self.window,
            ids=ids,
            files=files,
            pre_transform=transform_repr(self.pre_transform),
        )
        if self.pre_transform is not None:  # the stored windows depend on these too
            cfg.update(stride=self.stride, num_types=self._num_types)
        return cfg

    @property
    def processed_file_names(self) -> List[str]:
        return [f"polymer_{cache_key(self._config())}.pt"]

    # -- processing ---------------------------------------------------------
    def _scan(self, split: str, accumulate=None) -> List[Dict]:
        trajs = []
        for tid in self._ids(split):
            d = self._traj_dir(split, tid)
            if not osp.isdir(d):
                raise FileNotFoundError(
                    f"PolymerMD: trajectory '{tid}' of split '{split}' has no folder '{d}'"
                )
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
            if pos.dtype.kind not in "fiu" or not np.isfinite(pos).all():
                raise DataFormatError(f"Malformed data file '{pos_path}': non-finite positions")
            ptype_path = osp.join(d, "ptype.h5")
            ptype = _h5(ptype_path, "particle_type").reshape(-1)
            if ptype.shape[0] != pos.shape[1]:
                raise DataFormatError(
                    f"Malformed data file '{ptype_path}': {ptype.shape[0]} "
                    f"types for {pos.shape[1]} particles"
                )
            if ptype.dtype.kind not in "iu" or (ptype.size and ptype.min() < 0):
                raise DataFormatError(
                    f"Malformed data file '{ptype_path}': 'particle_type' must be "
                    f"non-negative integers (got {ptype.dtype}, min {ptype.min()})"
                )
            bond_path = osp.join(d, "bond.h5")
            bonds = _h5(bond_path, "bond_indices")
            if (
                bonds.dtype.kind not in "iu"
                or bonds.ndim != 2
                or bonds.shape[1] != 2
                or (bonds.size and (bonds.min() < 0 or bonds.max() >= pos.shape[1]))
            ):
                raise DataFormatError(
                    f"Malformed data file '{bond_path}': 'bond_indices' has shape "
                    f"{bonds.shape}, expected [B, 2] integer indices below {pos.shape[1]}"
                )
            if accumulate is not None:
                accumulate(pos.astype(np.float64), ptype)
            trajs.append(
                dict(
                    id=tid,
                    path=pos_path,
                    ptype_path=ptype_path,
                    T=int(pos.shape[0]),
                    N=int(pos.shape[1]),
                    ptype=torch.from_numpy(ptype.astype(np.int64)),
                    bonds=torch.from_numpy(bonds.astype(np.int64)),
                )
            )
        return trajs

    @staticmethod
    def _check_types(tr: Dict, num_types: int) -> None:
        if tr["ptype"].numel() and int(tr["ptype"].max()) >= num_types:
            bad = int(tr["ptype"].max())
            raise DataFormatError(
                f"Malformed data file '{tr['ptype_path']}': particle type {bad} is unseen "
                f"(num_types={num_types}: the training trajectories have types below it); "
                "pass a larger num_types to encode it"
            )

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

        out = {"train": self._scan("train", accumulate)}
        if not out["train"]:
            raise DataFormatError(
                f"PolymerMD: no training trajectories in '{self.raw_dir}/polymer_train'"
            )
        for s in self.splits:
            if s != "train":
                out[s] = self._scan(s)

        def ms(s, s2, n):
            m = s / n
            return (
                torch.tensor(m, dtype=torch.float),
                torch.tensor(np.sqrt(np.maximum(s2 / n - m**2, 1e-16)), dtype=torch.float),
            )

        vm, vs = ms(acc["v"], acc["v2"], acc["nv"])
        am, as_ = ms(acc["a"], acc["a2"], acc["na"])
        out.update(
            stats=dict(vel_mean=vm, vel_std=vs, acc_mean=am, acc_std=as_),
            num_types=acc["tmax"] + 1,
            windows=None,
        )
        if self.pre_transform is not None:  # PyG's meaning: once, here, cached
            num_types = self._num_types or out["num_types"]
            windows = {}
            for s in self.splits:
                for tr in out[s]:
                    self._check_types(tr, num_types)
                samples = []
                for k, t in self._index(out[s]):
                    samples.append(
                        self.pre_transform(self._window(out[s][k], t, out["stats"], num_types))
                    )
                windows[s] = store_windows(samples)
            out["windows"] = windows
        save_processed(out, self.processed_paths[0])

    # -- samples ------------------------------------------------------------
    def _index(self, trajs: List[Dict]) -> List[Tuple[int, int]]:
        return [
            (k, t)
            for k, tr in enumerate(trajs)
            for t in range(self.window - 1, tr["T"] - 1, self.stride)
        ]

    def _window(self, tr: Dict, t: int, s: Dict[str, torch.Tensor], num_types: int) -> Data:
        import h5py

        with h5py.File(tr["path"], "r") as f:
            frames = torch.from_numpy(
                f["position"][t - self.window + 1 : t + 2].astype(np.float32)
            )  # [W+1, N, 3]
        if frames.size(0) != self.window + 1:
            raise DataFormatError(
                f"Malformed data file '{tr['path']}': {frames.size(0)} frames at "
                f"{t - self.window + 1}, expected {self.window + 1} (changed since processing? "
                "pass force_reload=True)"
            )
        vel = frames[1:-1] - frames[:-2]  # v_{t-W+2} .. v_t
        accel = frames[-1] - 2 * frames[-2] + frames[-3]
        vel = ((vel - s["vel_mean"]) / s["vel_std"]).flip(0)  # most recent first
        N = tr["N"]
        onehot = torch.nn.functional.one_hot(tr["ptype"], num_types).float()
        x = torch.cat([vel.permute(1, 0, 2).reshape(N, -1), onehot], 1)
        b = tr["bonds"].t()
        return Data(
            x=x,
            pos=frames[-2],
            y=(accel - s["acc_mean"]) / s["acc_std"],
            acc=accel,
            edge_index=torch.cat([b, b.flip(0)], 1),
            particle_type=tr["ptype"],
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
        if self._windows is not None:
            return self._windows.get(idx)
        k, t = self.index[idx]
        return self._window(self.trajs[k], t, self.stats, self.num_types)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(split={self.split}, {len(self.trajs)} "
            f"trajectories, {len(self)} windows)"
        )
