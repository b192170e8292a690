import os.path as osp
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch_geometric.data import Data, Dataset

from ._utils import (
    DataFormatError,
    SafeProcessing,
    cache_key,
    default_root,
    file_stamp,
    load_processed,
    mean_std,
    save_processed,
    transform_repr,
)
from ._windows import load_windows, store_windows

PathList = Union[str, Sequence[str]]


def _as_list(p: Optional[PathList]) -> List[str]:
    if p is None:
        return []
    return [p] if isinstance(p, str) else list(p)


def _adk_files():
    try:
        from MDAnalysisTests.datafiles import DCD, DCD2, PSF
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MDTrajectory's default data (adenylate kinase) ships with the PyPI "
            "package 'MDAnalysisTests': pip install MDAnalysis MDAnalysisTests"
        ) from e
    return PSF, DCD, DCD2


def _is_npz(paths) -> bool:
    paths = _as_list(paths)
    return bool(paths) and all(str(p).endswith(".npz") for p in paths)


class _NpzAtoms:
    def __init__(self, arch):
        self.atoms = self
        self.types = [str(t) for t in arch["types"]]
        self.bonds = self
        self.indices = arch["bonds"].reshape(-1, 2)  # checked by _read_npz

    def __len__(self):
        return len(self.types)


def _check_dcd(path: str) -> None:
    """Raises if a DCD file's size is not its header plus whole frames (a
    truncated copy).  The header's own frame count cannot serve: real files
    (AdK's ``adk_dims.dcd``: 500 claimed, 98 present) often leave it stale."""
    try:
        from MDAnalysis.lib.formats.libdcd import DCDFile
    except ImportError:  # pragma: no cover
        return
    try:
        with DCDFile(path) as f:
            header = getattr(f, "_header_size", None)
            first = getattr(f, "_firstframesize", None)
            frame = getattr(f, "_framesize", None)
            n = f.n_frames
    except Exception:  # unreadable: MDAnalysis names the problem when reading
        return
    if None in (header, first, frame) or n < 1:
        return
    expected, actual = header + first + (n - 1) * frame, osp.getsize(path)
    if actual != expected:
        raise DataFormatError(
            f"Malformed trajectory file '{path}': {actual} bytes, but its header and "
            f"{n} whole frames of {frame} bytes end at byte {expected} (a truncated "
            "or damaged copy?)"
        )


def _read_npz(paths: List[str], stride: int, window: int):
    """Frames from archives written by :func:`trajectory_to_npz`."""
    import numpy as np

    if len(paths) != 1:
        raise ValueError(f"give one .npz archive per split (got {paths})")
    pos, disp, arch = [], [], None
    for p in paths:
        try:
            with np.load(p, allow_pickle=False) as f:
                a = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise FileNotFoundError(f"Missing data file '{p}'") from None
        except Exception as e:
            raise DataFormatError(f"Malformed data file '{p}': {e}") from e
        for key in ("positions", "displacements", "types", "bonds"):
            if key not in a:
                raise DataFormatError(f"Malformed data file '{p}': no array '{key}'")
        for key in ("positions", "displacements"):
            if a[key].dtype.kind not in "fiu" or not np.isfinite(a[key]).all():
                raise DataFormatError(
                    f"Malformed data file '{p}': '{key}' is not all finite numbers"
                )
        P, D = a["positions"][::stride], a["displacements"]
        if stride > 1:  # displacement over `stride` frames, minimum image kept
            D = np.add.reduceat(D, np.arange(0, len(D), stride))[: len(P) - 1]
        if P.ndim != 3 or P.shape[2] != 3 or D.shape != (P.shape[0] - 1,) + P.shape[1:]:
            raise DataFormatError(
                f"Malformed data file '{p}': positions {P.shape} and "
                f"displacements {D.shape} do not match"
            )
        N, B = P.shape[1], a["bonds"]
        if a["types"].shape != (N,):
            raise DataFormatError(
                f"Malformed data file '{p}': 'types' has shape {a['types'].shape}, "
                f"expected [{N}] (one per atom)"
            )
        if (
            B.dtype.kind not in "iu"
            or B.ndim != 2
            or (B.shape[1] != 2 and B.size)
            or (B.size and (B.min() < 0 or B.max() >= N))
        ):
            raise DataFormatError(
                f"Malformed data file '{p}': 'bonds' has shape {B.shape} and dtype "
                f"{B.dtype}, expected [B, 2] integer atom indices below {N}"
            )
        pos.append(torch.from_numpy(P).float())
        disp.append(torch.from_numpy(D).float())
        arch = arch or a
    P, D = pos[0], disp[0]
    if P.size(0) < window + 2:
        raise DataFormatError(
            f"Malformed trajectory {paths}: {P.size(0)} frames, but a "
            f"window of {window} needs at least {window + 2}"
        )
    return arch, P, D


def trajectory_to_npz(
    path: str, topology: Optional[str] = None, trajectory: Optional[PathList] = None
) -> str:
    """Saves the frames of a trajectory (default: AdK's training run) into a
    compressed ``.npz`` archive that :class:`MDTrajectory` reads without
    MDAnalysis (``positions`` [T, N, 3], minimum-image ``displacements``
    [T-1, N, 3], atom ``types`` [N], ``bonds`` [B, 2]).  Useful on machines
    without MDAnalysis."""
    import numpy as np

    if topology is None and trajectory is None:
        topology, trajectory, _ = _adk_files()
    ds = MDTrajectory.__new__(MDTrajectory)
    ds.topology, ds.trajectory = (
        osp.abspath(topology),
        [osp.abspath(p) for p in _as_list(trajectory)],
    )
    ds.stride, ds.window = 1, 1
    u, pos, disp = ds._read(ds.trajectory)
    atom_type, names, edge_index = ds._atom_info(u)
    types = np.array([names[i] for i in atom_type.tolist()])
    bonds = edge_index[:, : edge_index.size(1) // 2].t().numpy()
    np.savez_compressed(
        path, positions=pos.numpy(), displacements=disp.numpy(), types=types, bonds=bonds
    )
    return path


def _normalize(stats: Dict[str, Tensor], disp: Tensor) -> Tensor:
    return (disp - stats["disp_mean"].to(disp)) / stats["disp_std"].to(disp)


class MDTrajectory(SafeProcessing, Dataset):
    r"""Windows of a molecular-dynamics trajectory as point clouds: predict
    every atom's next displacement from its last few displacements and its
    atom type.

    Any topology + trajectory pair that `MDAnalysis <https://www.mdanalysis.org>`_
    opens works (PSF/PDB/GRO/PRMTOP/TPR + DCD/XTC/TRR/H5MD/NetCDF/LAMMPS, ...).
    Displacements are taken with the minimum-image convention when the
    trajectory has a periodic box.  For a frame :math:`t` with positions
    :math:`\mathbf{p}_t` and displacements
    :math:`\mathbf{d}_t = \mathbf{p}_{t+1} - \mathbf{p}_t`, a sample is

    .. math::
        \mathbf{x}_i = \big[\hat{\mathbf{d}}_{t-1,i}, \ldots,
        \hat{\mathbf{d}}_{t-K,i}, \mathrm{onehot}(\mathrm{type}_i)\big],
        \qquad \mathbf{y}_i = \hat{\mathbf{d}}_{t,i},
        \qquad \hat{\mathbf{d}} = (\mathbf{d} - \mu) / \sigma,

    with :obj:`pos` :math:`= \mathbf{p}_t` and the topology's bonds as
    :obj:`edge_index`.  :math:`\mu` (per axis) and :math:`\sigma` (one scalar)
    come from the training frames only; :meth:`denormalize` maps predictions
    back to Ångström per frame.  Each sample also carries the raw last
    displacement :obj:`last_disp` (Å), for the constant-velocity baseline, and
    the raw target :obj:`disp` (Å).

    With no arguments, the dataset is the real adenylate kinase (AdK, 3,341
    atoms, CHARMM PSF) runs shipped in the PyPI package ``MDAnalysisTests``:
    ``adk_dims.dcd`` (98 frames) for training and ``adk_dims2.dcd`` (102
    frames), a separate run, for testing.  Without :obj:`test_trajectory`, the
    last :obj:`test_fraction` of the frames form the test split (windows never
    straddle the split).  Frame archives written by
    :func:`trajectory_to_npz` (``.npz``) are read without MDAnalysis and
    without a topology.

    Args:
        root (str, optional): folder for the processed file.  (default:
            ``$TORCH_GEOMETRIC_NSA_DATA/MDTrajectory`` or
            ``~/.cache/torch_geometric_nsa/MDTrajectory``)
        split (str): :obj:`"train"` or :obj:`"test"`.  (default: :obj:`"train"`)
        topology (str, optional): topology file.  (default: AdK's ``adk.psf``)
        trajectory (str or [str], optional): training trajectory file(s),
            chained in order.  (default: AdK's ``adk_dims.dcd``)
        test_trajectory (str or [str], optional): test trajectory file(s).
            (default: AdK's ``adk_dims2.dcd`` for the default data, else
            :obj:`None`)
        window (int): number :math:`K` of past displacements in the input.
            (default: :obj:`4`)
        stride (int): use every :obj:`stride`-th frame.  (default: :obj:`1`)
        test_fraction (float): fraction of frames held out when there is no
            :obj:`test_trajectory`.  (default: :obj:`0.2`)
        transform (callable, optional): applied to every sample on access.
        pre_transform (callable, optional): applied once to every window in
            :meth:`process`, as in PyG; the transformed windows of both splits
            are cached.  Without it, windows are built on access and only the
            frames are cached.
        force_reload (bool): reprocess the trajectory.  (default: :obj:`False`)

    The processed file (tensors only, loaded with ``weights_only=True``) is
    keyed on every argument above but :obj:`split` and :obj:`transform`, on
    ``repr(pre_transform)``, and on the path, size and modification time of
    each source file: a rewritten trajectory is processed again.  A file that
    does not load as plain tensors is refused, never executed.  Positions must
    be finite, DCD files whole (not truncated) and ``.npz`` bond lists
    :math:`[B, 2]`; otherwise :class:`ValueError` names the file.

    Shapes:
        - **x**: :math:`[N, 3K + T]` with :math:`T` atom types,
          **pos**, **y**, **disp**, **last_disp**: :math:`[N, 3]`,
          **atom_type**: :math:`[N]`, **edge_index**: :math:`[2, 2B]`.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "train",
        topology: Optional[str] = None,
        trajectory: Optional[PathList] = None,
        test_trajectory: Optional[PathList] = None,
        window: int = 4,
        stride: int = 1,
        test_fraction: float = 0.2,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' (got '{split}')")
        if window < 1 or stride < 1:
            raise ValueError("window and stride must be positive")
        self.is_default = topology is None and trajectory is None
        if self.is_default:
            psf, dcd, dcd2 = _adk_files()
            topology, trajectory = psf, dcd
            if test_trajectory is None:
                test_trajectory = dcd2
        elif trajectory is None or (topology is None and not _is_npz(trajectory)):
            raise ValueError(
                "give both 'topology' and 'trajectory' (or neither, "
                "for the default AdK data; or '.npz' frame archives "
                "from 'trajectory_to_npz' without a topology)"
            )
        self.topology = None if topology is None else osp.abspath(topology)
        self.trajectory = [osp.abspath(p) for p in _as_list(trajectory)]
        self.test_trajectory = [osp.abspath(p) for p in _as_list(test_trajectory)]
        self.split = split
        self.window = int(window)
        self.stride = int(stride)
        self.test_fraction = float(test_fraction)
        if root is None:
            root = default_root("MDTrajectory")
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        path = self.processed_paths[0]
        self._store = load_processed(path)
        keys = ("train", "test", "atom_type", "type_names", "edge_index", "stats")
        if not isinstance(self._store, dict) or any(k not in self._store for k in keys):
            raise DataFormatError(
                f"Malformed processed file '{path}': not an MDTrajectory cache; delete it "
                "or pass force_reload=True"
            )
        self._data = self._store[split]
        T = self._data["disp"].size(0)
        self._frames = list(range(self.window, T))
        self._windows = None
        if self._store.get("windows") is not None:
            self._windows = load_windows(self._store["windows"][split], path)

    # -- PyG plumbing -------------------------------------------------------
    def _config(self) -> Dict:
        files = self.raw_file_names
        return dict(
            version=2,
            topology=self.topology,
            trajectory=self.trajectory,
            test_trajectory=self.test_trajectory,
            window=self.window,
            stride=self.stride,
            test_fraction=self.test_fraction,
            pre_transform=transform_repr(self.pre_transform),
            files=[file_stamp(p) for p in files],
        )

    @property
    def raw_file_names(self) -> List[str]:
        # absolute paths: ``osp.join(raw_dir, abs)`` is ``abs``
        top = [] if self.topology is None else [self.topology]
        return top + self.trajectory + self.test_trajectory

    @property
    def processed_file_names(self) -> List[str]:
        return [f"md_{cache_key(self._config())}.pt"]

    def download(self):
        missing = [p for p in self.raw_file_names if not osp.isfile(p)]
        raise FileNotFoundError(
            f"MDTrajectory: missing trajectory file(s) {missing}.  Nothing is "
            "downloaded: pass the topology and trajectory files of your "
            "simulation, or install 'MDAnalysisTests' (pip install "
            "MDAnalysisTests) for the default adenylate kinase runs."
        )

    # -- reading ------------------------------------------------------------
    def _read(self, trajectory: List[str]):
        if _is_npz(trajectory):
            return _read_npz(trajectory, self.stride, self.window)
        try:
            import MDAnalysis as mda
            from MDAnalysis.lib.distances import minimize_vectors
        except ImportError as e:  # pragma: no cover
            raise ImportError(
                "MDTrajectory reads trajectories with MDAnalysis: pip install MDAnalysis"
            ) from e
        files = [self.topology] + trajectory
        for path in trajectory:
            if path.lower().endswith(".dcd"):
                _check_dcd(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                u = mda.Universe(self.topology, *trajectory)
                frames, boxes = [], []
                for ts in u.trajectory[:: self.stride]:
                    frames.append(torch.from_numpy(ts.positions.copy()))
                    dims = ts.dimensions
                    boxes.append(None if dims is None else dims.copy())
        except Exception as e:
            raise DataFormatError(
                f"Malformed trajectory: MDAnalysis could not read {files}: {type(e).__name__}: {e}"
            ) from e
        expected = len(range(0, u.trajectory.n_frames, self.stride))
        if len(frames) != expected:
            raise DataFormatError(
                f"Malformed trajectory {trajectory}: read {len(frames)} frames, the "
                f"reader announced {expected} (a truncated file?)"
            )
        if len(frames) < self.window + 2:
            raise DataFormatError(
                f"Malformed trajectory {trajectory}: {len(frames)} frames, but a "
                f"window of {self.window} needs at least {self.window + 2}"
            )
        pos = torch.stack(frames).float()  # [T, N, 3]
        if not torch.isfinite(pos).all():
            t = int((~torch.isfinite(pos)).flatten(1).any(1).nonzero()[0])
            raise DataFormatError(
                f"Malformed trajectory {trajectory}: positions are not all finite "
                f"(first in frame {t * self.stride})"
            )
        disp = (pos[1:] - pos[:-1]).double()
        for t in range(disp.size(0)):
            box = boxes[t + 1]
            if box is not None and (box[:3] > 0).all():
                disp[t] = torch.from_numpy(minimize_vectors(disp[t].numpy(), box.astype("float64")))
        return u, pos, disp.float()

    def _atom_info(self, u):
        if isinstance(u, dict):  # from an .npz archive
            u = _NpzAtoms(u)
        atoms = u.atoms
        for attr in ("types", "names", "elements"):
            try:
                labels = [str(v) for v in getattr(atoms, attr)]
                break
            except Exception:
                continue
        else:  # pragma: no cover
            labels = ["X"] * len(atoms)
        names = sorted(set(labels))
        lookup = {n: i for i, n in enumerate(names)}
        atom_type = torch.tensor([lookup[n] for n in labels], dtype=torch.long)
        try:
            indices = u.bonds.indices
        except AttributeError:  # a topology without bonds (MDAnalysis.NoDataError)
            return atom_type, names, torch.empty(2, 0, dtype=torch.long)
        bonds = torch.as_tensor(indices, dtype=torch.long).reshape(-1, 2)
        edge_index = torch.cat([bonds.t(), bonds.t().flip(0)], dim=1)
        return atom_type, names, edge_index

    def process(self):
        u, pos, disp = self._read(self.trajectory)
        if self.test_trajectory:
            u2, pos_te, disp_te = self._read(self.test_trajectory)
            if pos_te.size(1) != pos.size(1):
                raise DataFormatError(
                    f"Malformed trajectory {self.test_trajectory}: "
                    f"{pos_te.size(1)} atoms, the training run has {pos.size(1)}"
                )
            if isinstance(u, dict) and isinstance(u2, dict):
                t1, t2 = (_NpzAtoms(a).types for a in (u, u2))
                if t1 != t2:
                    i = next(i for i in range(len(t1)) if t1[i] != t2[i])
                    unseen = sorted(set(t2) - set(t1))
                    raise DataFormatError(
                        f"Malformed data file '{self.test_trajectory[0]}': atom types differ "
                        f"from the training archive's (atom {i}: '{t2[i]}' vs '{t1[i]}'"
                        + (f"; types unseen in training: {unseen}" if unseen else "")
                        + ")"
                    )
            train = dict(pos=pos, disp=disp)
            test = dict(pos=pos_te, disp=disp_te)
        else:
            T = pos.size(0)
            cut = int(round(T * (1 - self.test_fraction)))
            if cut < self.window + 2 or T - cut < self.window + 2:
                raise DataFormatError(
                    f"Malformed trajectory {self.trajectory}: {T} frames are too "
                    f"few to split with test_fraction={self.test_fraction} and "
                    f"window={self.window}"
                )
            train = dict(pos=pos[:cut], disp=disp[: cut - 1])
            test = dict(pos=pos[cut:], disp=disp[cut:])
        atom_type, names, edge_index = self._atom_info(u)
        # statistics from the training split only
        mean, _ = mean_std(train["disp"].reshape(-1, 3))
        std = (train["disp"] - mean).double().pow(2).mean().sqrt().float()
        stats = dict(disp_mean=mean, disp_std=std.clamp_min(1e-8))
        store = dict(
            train=train,
            test=test,
            atom_type=atom_type,
            type_names=names,
            edge_index=edge_index,
            stats=stats,
            config=self._config(),
            windows=None,
        )
        if self.pre_transform is not None:  # PyG's meaning: once, here, cached
            store["windows"] = {
                split: store_windows(
                    [
                        self.pre_transform(self._window(store, split, t))
                        for t in range(self.window, store[split]["disp"].size(0))
                    ]
                )
                for split in ("train", "test")
            }
        save_processed(store, self.processed_paths[0])

    # -- samples ------------------------------------------------------------
    @property
    def stats(self) -> Dict[str, Tensor]:
        """Normalisation statistics (training split only)."""
        return self._store["stats"]

    @property
    def num_atom_types(self) -> int:
        return len(self._store["type_names"])

    @property
    def num_atoms(self) -> int:
        return self._store["atom_type"].numel()

    @property
    def num_node_features(self) -> int:
        return 3 * self.window + self.num_atom_types

    def normalize(self, disp: Tensor) -> Tensor:
        return _normalize(self.stats, disp)

    def denormalize(self, y: Tensor) -> Tensor:
        """Maps normalised displacements back to Ångström per frame."""
        s = self.stats
        return y * s["disp_std"].to(y) + s["disp_mean"].to(y)

    def len(self) -> int:
        return len(self._frames)

    def _window(self, store: Dict, split: str, t: int) -> Data:
        d = store[split]["disp"]
        past = d[t - self.window : t].flip(0)  # [K, N, 3], most recent first
        K, N = past.shape[:2]
        onehot = torch.nn.functional.one_hot(store["atom_type"], len(store["type_names"])).float()
        norm = _normalize(store["stats"], past)
        x = torch.cat([norm.permute(1, 0, 2).reshape(N, 3 * K), onehot], dim=1)
        return Data(
            x=x,
            pos=store[split]["pos"][t],
            y=_normalize(store["stats"], d[t]),
            disp=d[t],
            last_disp=d[t - 1],
            atom_type=store["atom_type"],
            edge_index=store["edge_index"],
            frame=torch.tensor([t]),
        )

    def get(self, idx: int) -> Data:
        if self._windows is not None:
            return self._windows.get(idx)
        return self._window(self._store, self.split, self._frames[idx])

    def __repr__(self) -> str:
        name = "AdK" if self.is_default else osp.basename(self.topology or self.trajectory[0])
        return (
            f"{self.__class__.__name__}({name}, split={self.split}, "
            f"{len(self)} windows, {self.num_atoms} atoms)"
        )
