import glob
import os.path as osp
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from ._utils import (
    DataFormatError,
    SafeProcessing,
    cache_key,
    default_root,
    file_stamp,
    load_collated,
    save_processed,
    transform_repr,
)
from ._vtk import read_legacy_vtk
from ._windows import store_windows

#: Umetani's raw meshes have 3,682 vertices; vertices 16..111 are not on the
#: car surface and are dropped (as in GINO/Transolver/UPT/Erwin), leaving 3,586.
RAW_POINTS = 3682
DROP = slice(16, 112)

#: Size of the full set and of Erwin's (UPT's) test split.
NUM_CARS, NUM_TEST = 889, 189

#: Erwin's (UPT's) fixed normalisation: pressure mean and standard deviation,
#: the bounding domain of the positions and the standardisation applied after
#: mapping the domain to the unit cube.
PRESSURE_MEAN, PRESSURE_STD = -36.3099, 48.5743
DOMAIN_MIN, DOMAIN_MAX = (-2.0, -1.0, -4.5), (2.0, 4.5, 6.0)
POS_MEAN, POS_STD = 0.4063, 0.1531

#: The four real cars shipped with the package (see ``assets/.../README.md``).
MINI_DIR = osp.join(osp.dirname(osp.abspath(__file__)), "assets", "shapenet_car_mini")
MINI_TEST = ("005",)


def erwin_test_indices() -> List[int]:
    r"""The 189 test indices of Erwin (taken from UPT) over the 889 cars
    ordered ``param0`` ... ``param8``, names sorted within each:
    ``torch.randperm(889, generator=torch.Generator().manual_seed(0))[:189]``."""
    gen = torch.Generator().manual_seed(0)
    return torch.randperm(NUM_CARS, generator=gen)[:NUM_TEST].tolist()


def normalize_pos(pos: torch.Tensor) -> torch.Tensor:
    """Erwin's position normalisation (domain to the unit cube, then standardised)."""
    lo, hi = torch.tensor(DOMAIN_MIN).to(pos), torch.tensor(DOMAIN_MAX).to(pos)
    return ((pos - lo) / (hi - lo) - POS_MEAN) / POS_STD


def _drop_internal(a: np.ndarray) -> np.ndarray:
    if a.shape[0] != RAW_POINTS:
        return a
    return np.concatenate([a[: DROP.start], a[DROP.stop :]], axis=0)


def _path_key(path: str):
    # ``param0`` ... ``param8`` first, then names sorted within each
    return Path(path).parts


class ShapeNetCar(SafeProcessing, InMemoryDataset):
    r"""The ShapeNet-Car CFD dataset of `Umetani and Bickel (2018)
    <https://dl.acm.org/doi/10.1145/3197517.3201325>`_: surface pressure of
    889 car shapes (3,586 surface points each) from RANS simulations, in the
    setting of `Erwin <https://arxiv.org/abs/2502.17019>`_ and UPT.

    With :obj:`root=None` it opens the four real cars shipped with the package
    (``001``, ``002``, ``004`` for training, ``005`` for testing, the split of
    their source; about 260 KB in the preprocessed form below), processed into
    ``$TORCH_GEOMETRIC_NSA_DATA/ShapeNetCarMini``.  That is enough for a
    demonstration, not for a benchmark.

    With a :obj:`root`, two layouts under ``root/raw`` are read (found
    automatically):

    * raw: ``param{0..8}/<id>/quadpress_smpl.vtk`` (legacy VTK, ASCII or
      BINARY) + ``press.npy``; the 3,682-vertex meshes lose vertices 16..111
      (not on the surface), leaving 3,586 points;
    * preprocessed (UPT's form): ``param{0..8}/<id>/mesh_points.th``
      (``[3586, 3]``) + ``pressure.th`` (``[3586]``), ``torch.save`` files.

    Samples are ordered ``param0`` ... ``param8``, names sorted within each.
    With :obj:`test_split="erwin"` (the default) the test split is Erwin's:
    the 189 indices ``erwin_test_indices()`` (in ``shapenet_car``) over the full 889 cars, the
    other 700 train.  :obj:`test_split="order"` keeps the first
    :obj:`num_train` samples for training and tests on the rest.

    Every sample holds ``pos`` (the positions as stored), ``x`` (the positions
    normalised as Erwin does: the domain :obj:`DOMAIN_MIN` ... :obj:`DOMAIN_MAX`
    mapped to the unit cube, then standardised with 0.4063 and 0.1531), ``y``
    (``[N, 1]``, the pressure standardised with Erwin's fixed mean −36.3099 and
    standard deviation 48.5743; :meth:`denormalize` maps back) and ``press``
    (``[N]``, the pressure as stored).  Erwin reports the test MSE of the
    de-normalised pressure.

    Args:
        root (str, optional): dataset folder with the data under
            ``root/raw``; :obj:`None` opens the four shipped cars.
            (default: :obj:`None`)
        split (str): :obj:`"train"` or :obj:`"test"`.  (default: :obj:`"train"`)
        layout (str): :obj:`"auto"`, :obj:`"raw"` or :obj:`"preprocessed"`.
            (default: :obj:`"auto"`)
        test_split (str): :obj:`"erwin"` (Erwin's 189 random test cars, needs
            all 889) or :obj:`"order"` (the samples after the first
            :obj:`num_train`).  The shipped cars always use their source's
            split.  (default: :obj:`"erwin"`)
        num_train (int, optional): training samples of
            :obj:`test_split="order"`.  (default: :obj:`700`)
        transform (callable, optional): applied to every sample on access.
        pre_transform (callable, optional): applied once, when processing.
        force_reload (bool): process again.  (default: :obj:`False`)
    """

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "train",
        layout: str = "auto",
        test_split: str = "erwin",
        num_train: Optional[int] = None,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' (got '{split}')")
        if test_split not in ("erwin", "order"):
            raise ValueError(f"test_split must be 'erwin' or 'order' (got '{test_split}')")
        if num_train is not None and test_split != "order":
            raise ValueError("num_train is only used with test_split='order'")
        if num_train is not None and num_train < 1:
            raise ValueError(f"num_train must be positive (got {num_train})")
        self.is_mini = root is None
        if self.is_mini:
            root = default_root("ShapeNetCarMini")
            layout, test_split, num_train = "preprocessed", "mini", None
        elif layout == "auto":
            found = glob.glob(osp.join(root, "raw", "**", "mesh_points.th"), recursive=True)
            layout = "preprocessed" if found else "raw"
        if layout not in ("raw", "preprocessed"):
            raise ValueError(f"layout must be 'auto', 'raw' or 'preprocessed' (got '{layout}')")
        self.layout, self.split, self.test_split = layout, split, test_split
        self.num_train = 700 if num_train is None and test_split == "order" else num_train
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        path = self.processed_paths[0 if split == "train" else 1]
        self.data, self.slices = load_collated(path, "ShapeNetCar")
        self.stats = dict(
            press_mean=torch.tensor(PRESSURE_MEAN), press_std=torch.tensor(PRESSURE_STD)
        )

    @property
    def raw_dir(self) -> str:
        return MINI_DIR if self.is_mini else osp.join(self.root, "raw")

    @property
    def raw_file_names(self) -> List[str]:
        return []  # globbed in :meth:`_samples`

    def _samples(self) -> List[Tuple[str, str]]:
        if self.layout == "preprocessed":
            pattern = osp.join(self.raw_dir, "**", "mesh_points.th")
            dirs = [osp.dirname(p) for p in glob.glob(pattern, recursive=True)]
            files = ("mesh_points.th", "pressure.th")
        else:
            dirs = [d.rstrip("/") for d in glob.glob(osp.join(self.raw_dir, "param[0-9]", "*", ""))]
            files = ("quadpress_smpl.vtk", "press.npy")
        return [tuple(osp.join(d, f) for f in files) for d in sorted(dirs, key=_path_key)]

    def _download(self):
        if not self._samples():
            self.download()

    def download(self):
        raise FileNotFoundError(
            f"ShapeNetCar: no samples under '{self.raw_dir}' (layout '{self.layout}').  "
            "Nothing is downloaded: get the data of Umetani & Bickel 2018 "
            "(http://www.nobuyuki-umetani.com/publication/mlcfd_data.zip, the "
            "'param0'..'param8' folders with 'quadpress_smpl.vtk' and 'press.npy'), "
            "or UPT's preprocessed 'param0'..'param8' folders of "
            f"'mesh_points.th'/'pressure.th' files, and place them under '{self.raw_dir}'."
        )

    @property
    def processed_file_names(self) -> List[str]:
        tag = f"{self.layout}_{self.test_split}"
        if self.test_split == "order":
            tag += f"{self.num_train}"
        config = dict(
            version=2,
            tag=tag,
            pre_transform=transform_repr(self.pre_transform),
            files=[file_stamp(p) for pair in self._samples() for p in pair],
        )
        tag = f"{tag}_{cache_key(config)}"
        return [f"{tag}_train.pt", f"{tag}_test.pt"]

    def test_indices(self, num_samples: int) -> List[int]:
        """Indices of the test samples among the :obj:`num_samples` ordered ones."""
        if self.test_split == "mini":
            names = [osp.basename(osp.dirname(m)) for m, _ in self._samples()]
            return [i for i, n in enumerate(names) if n in MINI_TEST]
        if self.test_split == "erwin":
            if num_samples != NUM_CARS:
                raise DataFormatError(
                    f"ShapeNetCar: Erwin's test split is defined over all {NUM_CARS} cars, "
                    f"but '{self.raw_dir}' holds {num_samples} ({self.layout} layout); pass "
                    "test_split='order' with num_train to split a partial set by order"
                )
            return erwin_test_indices()
        if num_samples <= self.num_train:
            raise DataFormatError(
                f"ShapeNetCar: {num_samples} samples under '{self.raw_dir}' leave none for "
                f"testing with num_train={self.num_train}: pass a smaller num_train"
            )
        return list(range(self.num_train, num_samples))

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
        if not np.isfinite(pos).all():
            raise DataFormatError(f"Malformed data file '{mesh}': non-finite positions")
        if p.shape[0] != pos.shape[0]:
            raise DataFormatError(
                f"Malformed data file '{press}': {p.shape[0]} "
                f"pressure values for {pos.shape[0]} points in '{mesh}'"
            )
        if not np.isfinite(p).all():
            raise DataFormatError(f"Malformed data file '{press}': non-finite pressure")
        return (
            torch.from_numpy(np.ascontiguousarray(pos, dtype=np.float32)),
            torch.from_numpy(p.astype(np.float32)),
        )

    def process(self):
        samples = self._samples()
        test = set(self.test_indices(len(samples)))
        parts = ([], [])
        for i, (mesh, press) in enumerate(samples):
            pos, p = self._read(mesh, press)
            d = Data(
                pos=pos,
                x=normalize_pos(pos),
                y=((p - PRESSURE_MEAN) / PRESSURE_STD).view(-1, 1),
                press=p,
            )
            if self.pre_transform is not None:
                d = self.pre_transform(d)
            parts[i in test].append(d)
        for path, part in zip(self.processed_paths, parts):
            stored = store_windows(part)
            save_processed(dict(data=stored["data"], slices=stored["slices"]), path)

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """Maps standardised pressure back to the data's units."""
        return y * PRESSURE_STD + PRESSURE_MEAN

    def __repr__(self) -> str:
        what = "mini, 4 shipped cars" if self.is_mini else self.layout
        return (
            f"{self.__class__.__name__}({what}, split={self.split}, "
            f"test_split={self.test_split}, {len(self)} cars)"
        )
