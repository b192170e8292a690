import glob
import os.path as osp
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from ._utils import DataFormatError, default_root
from ._vtk import read_legacy_vtk

#: Umetani's raw meshes have 3,682 vertices; vertices 16..111 are not on the
#: car surface and are dropped (as in GINO/Transolver/Erwin), leaving 3,586.
RAW_POINTS = 3682
DROP = slice(16, 112)


def _drop_internal(a: np.ndarray) -> np.ndarray:
    if a.shape[0] != RAW_POINTS:
        return a
    return np.concatenate([a[: DROP.start], a[DROP.stop :]], axis=0)


class ShapeNetCar(InMemoryDataset):
    r"""The ShapeNet-Car CFD dataset of `Umetani and Bickel (2018)
    <https://dl.acm.org/doi/10.1145/3197517.3201325>`_: surface pressure of
    889 car shapes (3,586 surface points each) from RANS simulations, in the
    setting of `Erwin <https://arxiv.org/abs/2502.17019>`_ (700 train / 189
    test).

    Two layouts under ``root/raw`` are read (found automatically):

    * raw: ``param{0..8}/<id>/quadpress_smpl.vtk`` (legacy VTK, ASCII or
      BINARY) + ``press.npy``; the 3,682-vertex meshes lose vertices 16..111
      (not on the surface), leaving 3,586 points;
    * preprocessed: ``<any folders>/<id>/mesh_points.th`` (``[3586, 3]``) +
      ``pressure.th`` (``[3586]``), ``torch.save`` files.

    Samples are ordered by path; the first :obj:`num_train` are the training
    split, the rest the test split.  ``x`` holds the positions standardised
    with the training split's per-axis mean and standard deviation, ``y`` the
    pressure standardised the same way (:meth:`denormalize` maps back),
    ``press`` the raw pressure.

    Args:
        root (str, optional): dataset folder.  (default:
            ``$TORCH_GEOMETRIC_NSA_DATA/ShapeNetCar``)
        split (str): :obj:`"train"` or :obj:`"test"`.
        layout (str): :obj:`"auto"`, :obj:`"raw"` or :obj:`"preprocessed"`.
        num_train (int): size of the training split.  (default: :obj:`700`)
    """

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "train",
        layout: str = "auto",
        num_train: int = 700,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' (got '{split}')")
        root = root or default_root("ShapeNetCar")
        raw_dir = osp.join(root, "raw")
        if layout == "auto":
            layout = (
                "preprocessed"
                if glob.glob(osp.join(raw_dir, "**", "mesh_points.th"), recursive=True)
                else "raw"
            )
        if layout not in ("raw", "preprocessed"):
            raise ValueError(f"layout must be 'auto', 'raw' or 'preprocessed' (got '{layout}')")
        self.layout, self.split, self.num_train = layout, split, int(num_train)
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        self.load(self.processed_paths[0 if split == "train" else 1])
        self.stats = torch.load(self.processed_paths[2])

    @property
    def raw_file_names(self) -> List[str]:
        return []  # globbed in :meth:`_samples`

    def _samples(self) -> List[Tuple[str, str]]:
        if self.layout == "preprocessed":
            dirs = sorted(
                osp.dirname(p)
                for p in glob.glob(osp.join(self.raw_dir, "**", "mesh_points.th"), recursive=True)
            )
            return [(osp.join(d, "mesh_points.th"), osp.join(d, "pressure.th")) for d in dirs]
        dirs = sorted(glob.glob(osp.join(self.raw_dir, "param[0-9]", "*", "")))
        return [(osp.join(d, "quadpress_smpl.vtk"), osp.join(d, "press.npy")) for d in dirs]

    def _download(self):
        if not self._samples():
            self.download()

    def download(self):
        raise FileNotFoundError(
            f"ShapeNetCar: no samples under '{self.raw_dir}' (layout '{self.layout}').  "
            "Nothing is downloaded: get the data of Umetani & Bickel 2018 "
            "(http://www.nobuyuki-umetani.com/publication/mlcfd_data.zip, the "
            "'param0'..'param8' folders with 'quadpress_smpl.vtk' and 'press.npy'), "
            "or the preprocessed 'mesh_points.th'/'pressure.th' files used by "
            f"Erwin, and place them under '{self.raw_dir}'."
        )

    @property
    def processed_file_names(self) -> List[str]:
        tag = f"{self.layout}_{self.num_train}"
        return [f"{tag}_train.pt", f"{tag}_test.pt", f"{tag}_stats.pt"]

    def _read(self, mesh: str, press: str):
        if self.layout == "preprocessed":

            def load(p):
                if not osp.isfile(p):
                    raise FileNotFoundError(f"Missing data file '{p}'")
                try:
                    t = torch.load(p, map_location="cpu", weights_only=True)
                except Exception as e:
                    raise DataFormatError(f"Malformed data file '{p}': {e}") from e
                if not torch.is_tensor(t):
                    raise DataFormatError(
                        f"Malformed data file '{p}': holds {type(t).__name__}, not a tensor"
                    )
                return t.float().numpy()

            pos, p = load(mesh), load(press)
        else:
            pos, _ = read_legacy_vtk(mesh)
            if not osp.isfile(press):
                raise FileNotFoundError(f"Missing data file '{press}'")
            try:
                p = np.load(press).astype(np.float32)
            except Exception as e:
                raise DataFormatError(f"Malformed data file '{press}': {e}") from e
            pos, p = _drop_internal(pos), _drop_internal(p.reshape(-1))
        p = p.reshape(-1)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise DataFormatError(
                f"Malformed data file '{mesh}': points of shape {tuple(pos.shape)}, expected [N, 3]"
            )
        if p.shape[0] != pos.shape[0]:
            raise DataFormatError(
                f"Malformed data file '{press}': {p.shape[0]} "
                f"pressure values for {pos.shape[0]} points in '{mesh}'"
            )
        if not np.isfinite(p).all():
            raise DataFormatError(f"Malformed data file '{press}': non-finite pressure")
        return torch.from_numpy(np.ascontiguousarray(pos)), torch.from_numpy(p.copy())

    def process(self):
        samples = self._samples()
        if len(samples) <= self.num_train:
            raise DataFormatError(
                f"ShapeNetCar: {len(samples)} samples under '{self.raw_dir}', need more "
                f"than num_train={self.num_train}"
            )
        items = [self._read(m, p) for m, p in samples]
        train = items[: self.num_train]
        P = torch.cat([p for p, _ in train]).double()
        Y = torch.cat([y for _, y in train]).double()
        stats = dict(
            pos_mean=P.mean(0).float(),
            pos_std=P.std(0).float().clamp_min(1e-8),
            press_mean=Y.mean().float(),
            press_std=Y.std().float().clamp_min(1e-8),
        )
        for i, part in enumerate((train, items[self.num_train :])):
            out = []
            for pos, press in part:
                d = Data(
                    pos=pos,
                    x=(pos - stats["pos_mean"]) / stats["pos_std"],
                    y=((press - stats["press_mean"]) / stats["press_std"]).view(-1, 1),
                    press=press,
                )
                if self.pre_transform is not None:
                    d = self.pre_transform(d)
                out.append(d)
            self.save(out, self.processed_paths[i])
        torch.save(stats, self.processed_paths[2])

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.stats["press_std"].to(y) + self.stats["press_mean"].to(y)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.layout}, split={self.split}, {len(self)} cars)"
