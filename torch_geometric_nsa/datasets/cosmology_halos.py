import glob
import os
import os.path as osp
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from ._tfrecord import TFRecordError, parse_example, parse_tensor_proto, read_tfrecord
from ._utils import (
    DataFormatError,
    SafeProcessing,
    cache_key,
    default_root,
    file_stamp,
    load_collated,
    load_processed,
    save_processed,
    transform_repr,
)
from ._windows import store_windows
from .abacus_mini import ABACUS_VERSION, FETCH_COMMAND, MINI, mini_dir

_POS_KEYS = ("x", "y", "z")
_VEL_KEYS = ("v_x", "v_y", "v_z")
ABACUS_ENV = "ABACUS_MINI_N64_L32"
ABACUS_HELP = (
    f"The default data is the small Abacus N-body run 'tests/{MINI}' shipped in the "
    f"source distribution of the PyPI package 'abacusutils' (GPL; read with its "
    f"'abacusnbody' readers, never copied).  Fetch it once, with access to PyPI:\n"
    f"    {FETCH_COMMAND}\n"
    f"(it runs 'pip download --no-deps --no-binary :all: abacusutils=={ABACUS_VERSION}' "
    f"into a temporary folder and extracts only that folder to '{mini_dir()}'), and "
    "install the readers: pip install abacusutils."
)


def _decode_bytes(values: List[bytes], path: str, key: str) -> np.ndarray:
    out = []
    for v in values:
        try:
            out.append(parse_tensor_proto(v).astype(np.float32))
        except TFRecordError:
            if len(v) % 4:
                raise DataFormatError(
                    f"Malformed data file '{path}': feature '{key}' is neither a "
                    "serialized float32 tensor nor raw float32 bytes"
                )
            out.append(np.frombuffer(v, "<f4").copy())
    return np.concatenate([o.reshape(-1) for o in out]) if len(out) > 1 else out[0]


def read_halo_records(path: str, verify: bool = True) -> List[np.ndarray]:
    """Reads a ``halos_*.tfrecord`` file into a list of ``[n, 6]`` float32
    arrays (x, y, z, v_x, v_y, v_z), one per record.

    Each record is a ``tf.train.Example`` with either one feature per column
    (``x``, ``y``, ``z``, ``v_x``, ``v_y``, ``v_z``; FloatList or a serialized
    float32 tensor) or a single feature holding a ``[n, >=6]`` serialized
    tensor whose first six columns are those."""
    clouds = []
    try:
        for i, rec in enumerate(read_tfrecord(path, verify=verify)):
            try:
                ex = parse_example(rec)
            except (TFRecordError, ValueError) as e:
                raise DataFormatError(
                    f"Malformed data file '{path}': record {i} is not a tf.train.Example ({e})"
                ) from e
            cols = {}
            for k, v in ex.items():
                cols[k] = (
                    _decode_bytes(v, path, k)
                    if isinstance(v, list)
                    else np.asarray(v, dtype=np.float32)
                )
            if all(k in cols for k in _POS_KEYS + _VEL_KEYS):
                arr = np.stack([cols[k].reshape(-1) for k in _POS_KEYS + _VEL_KEYS], 1)
            else:
                mats = [v for v in cols.values() if v.ndim == 2 and v.shape[1] >= 6]
                if len(mats) != 1:
                    raise DataFormatError(
                        f"Malformed data file '{path}': record {i} has features "
                        f"{sorted(ex)}; expected x, y, z, v_x, v_y, v_z or one "
                        "[n, >=6] tensor"
                    )
                arr = mats[0][:, :6]
            if arr.shape[0] == 0 or not np.isfinite(arr).all():
                raise DataFormatError(
                    f"Malformed data file '{path}': record {i} is empty or not finite"
                )
            clouds.append(arr.astype(np.float32))
    except TFRecordError as e:
        msg = str(e)
        raise DataFormatError(msg if path in msg else f"Malformed data file '{path}': {msg}") from e
    if not clouds:
        raise DataFormatError(f"Malformed data file '{path}': no records")
    return clouds


def abacus_candidates(abacus_dir: Optional[str] = None) -> List[str]:
    """The folders searched for the Abacus run, in order: :obj:`abacus_dir`
    alone when given; else ``$ABACUS_MINI_N64_L32``, the cache of
    ``python -m torch_geometric_nsa.datasets.abacus_mini``, and sdists
    extracted by hand under ``<data>/abacusutils/abacusutils-*``."""
    if abacus_dir:
        return [abacus_dir]
    cands = []
    if os.environ.get(ABACUS_ENV):
        cands.append(os.environ[ABACUS_ENV])
    cands.append(mini_dir())
    legacy = osp.join(default_root("abacusutils"), "abacusutils-*", "tests", MINI)
    cands += sorted(glob.glob(legacy)) or [legacy]
    return cands


def _find_abacus_dir(abacus_dir: Optional[str]) -> str:
    cands = abacus_candidates(abacus_dir)
    for c in cands:
        if c and osp.isdir(osp.join(c, "slices")):
            return c
    env = f"${ABACUS_ENV}=" + (
        repr(os.environ[ABACUS_ENV]) if os.environ.get(ABACUS_ENV) else "unset"
    )
    looked = "\n".join(f"    {c}" for c in cands)
    raise FileNotFoundError(
        f"CosmologyHalos: the Abacus run {MINI} (a folder with 'slices/') is not in any "
        f"place looked at ({env}):\n{looked}\n" + ABACUS_HELP
    )


def read_abacus_particles(abacus_dir: str):
    """All particles (field + L0 halo) of the ``z0.000`` slice of an Abacus run,
    read with ``abacusnbody``: positions in ``[-L/2, L/2)``, velocities (km/s),
    box size ``L``."""
    try:
        from abacusnbody.data.read_abacus import read_asdf
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "reading Abacus files needs 'abacusutils' (pip install abacusutils)"
        ) from e
    files = []
    for sub in ("field_pack9", "L0_pack9"):
        files += sorted(glob.glob(osp.join(abacus_dir, "slices", "z*", sub, "*.asdf")))
    if not files:
        raise FileNotFoundError(
            f"No slab files '*.asdf' under '{osp.join(abacus_dir, 'slices')}'.  " + ABACUS_HELP
        )
    pos, vel, box = [], [], None
    for fn in files:
        try:
            cat = read_asdf(fn, load=("pos", "vel"))
        except Exception as e:
            raise DataFormatError(f"Malformed data file '{fn}': {e}") from e
        pos.append(np.asarray(cat["pos"], dtype=np.float32))
        vel.append(np.asarray(cat["vel"], dtype=np.float32))
        box = float(cat.meta["BoxSize"])
    return np.concatenate(pos), np.concatenate(vel), box


class CosmologyHalos(SafeProcessing, InMemoryDataset):
    r"""Predict velocities from positions in cosmological N-body data, as in
    the cosmology benchmark of Balla et al. (2024), "A Cosmology Benchmark for
    Geometric Deep Learning", used by `Erwin <https://arxiv.org/abs/2502.17019>`_.

    Two sources:

    * ``root/raw/halos_{train,val,test}_*.tfrecord`` (the benchmark): each
      record a ``tf.train.Example`` of serialized float32 tensors (5,000 halos:
      x, y, z, v_x, v_y, v_z); read **without TensorFlow** (own TFRecord framing
      with masked CRC-32C and a minimal protobuf parser).  One record = one
      sample.  :obj:`box_size` defaults to 1000 Mpc/h.
    * :obj:`source="abacus"` (the offline default when no tfrecord files are
      found): the real small Abacus run ``Mini_N64_L32`` (262,144 particles,
      32 Mpc/h periodic box, z = 0) from the ``abacusutils`` sdist (see
      :meth:`download`), cut into :obj:`subdivisions`\ :sup:`3` cubic sub-boxes,
      each a sample (fetch it once with
      ``python -m torch_geometric_nsa.datasets.abacus_mini``; it is looked
      for in :obj:`abacus_dir`, else ``$ABACUS_MINI_N64_L32``, else that
      command's cache); sub-boxes with the highest x index form the test split,
      the next ones the validation split.  :obj:`subdivisions=1` gives the
      whole box as one 262k-point cloud (train = val = test), for scale runs.

    Each sample holds ``pos`` (in the box units), ``x`` (the positions
    divided by the box/sub-box size, centred) and ``y``, the velocities
    normalised by the training split's per-axis mean and standard deviation
    (:meth:`denormalize` maps back to km/s); ``vel`` keeps the raw velocities.

    Args:
        root (str, optional): dataset folder.  (default:
            ``$TORCH_GEOMETRIC_NSA_DATA/CosmologyHalos``)
        split (str): :obj:`"train"`, :obj:`"val"` or :obj:`"test"`.
        source (str): :obj:`"tfrecord"`, :obj:`"abacus"` or :obj:`"auto"`
            (tfrecord files when ``root/raw`` has some, else abacus).
        abacus_dir (str, optional): the ``Mini_N64_L32`` folder.
        subdivisions (int): sub-boxes per axis for the Abacus data.
            (default: :obj:`4`, i.e. 64 samples of ~4,096 particles)
        box_size (float, optional): box size of the tfrecord data.
            (default: :obj:`1000.`)
        verify_crc (bool): check the TFRecord CRCs.  (default: :obj:`True`)
        transform (callable, optional): applied to every sample on access.
        pre_transform (callable, optional): applied once to every sample in
            :meth:`process`; part of the cache key (its ``repr``).
        force_reload (bool): reprocess.  (default: :obj:`False`)

    The processed files hold tensors only and load with
    ``weights_only=True``; they are keyed on the source, the arguments,
    ``repr(pre_transform)`` and each source file's path, size and
    modification time.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "train",
        source: str = "auto",
        abacus_dir: Optional[str] = None,
        subdivisions: int = 4,
        box_size: Optional[float] = None,
        verify_crc: bool = True,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
    ):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test' (got '{split}')")
        root = root or default_root("CosmologyHalos")
        if source == "auto":
            source = (
                "tfrecord" if glob.glob(osp.join(root, "raw", "halos_*.tfrecord")) else "abacus"
            )
        if source not in ("tfrecord", "abacus"):
            raise ValueError(f"source must be 'tfrecord', 'abacus' or 'auto' (got '{source}')")
        if subdivisions < 1:
            raise ValueError("subdivisions must be positive")
        self.source, self.split = source, split
        self.subdivisions = int(subdivisions)
        # found before anything is written: a missing run leaves no folders behind
        self.abacus_dir = _find_abacus_dir(abacus_dir) if source == "abacus" else abacus_dir
        self.box_size = box_size
        self.verify_crc = verify_crc
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        idx = ("train", "val", "test").index(split)
        self.data, self.slices = load_collated(self.processed_paths[idx], "CosmologyHalos")
        self.stats: Dict[str, torch.Tensor] = load_processed(self.processed_paths[3])

    @property
    def raw_file_names(self) -> List[str]:
        if self.source == "abacus":
            return []
        return [f"halos_{s}_*.tfrecord" for s in ("train", "test")]

    def _download(self):  # globs, not file names
        if self.source == "abacus":
            return
        for s in ("train", "test"):
            if not glob.glob(osp.join(self.raw_dir, f"halos_{s}_*.tfrecord")):
                self.download()

    def download(self):
        raise FileNotFoundError(
            f"CosmologyHalos: no 'halos_{{train,test}}_*.tfrecord' files in "
            f"'{self.raw_dir}'.  Nothing is downloaded: get the halo catalogues of "
            "the cosmology benchmark of Balla et al. 2024 "
            "('A Cosmology Benchmark for Geometric Deep Learning'; the data links of "
            "its repository, also referenced by Erwin, github.com/maxxxzdn/erwin) "
            f"and put the tfrecord files into '{self.raw_dir}'; or use "
            "source='abacus'.  " + ABACUS_HELP
        )

    def _source_files(self) -> List[str]:
        if self.source == "abacus":
            return sorted(glob.glob(osp.join(self.abacus_dir, "slices", "z*", "*", "*.asdf")))
        return sorted(glob.glob(osp.join(self.raw_dir, "halos_*.tfrecord")))

    @property
    def processed_file_names(self) -> List[str]:
        config = dict(
            version=2,
            source=self.source,
            pre_transform=transform_repr(self.pre_transform),
            files=[file_stamp(p) for p in self._source_files()],
        )
        if self.source == "abacus":
            config.update(subdivisions=self.subdivisions, abacus_dir=osp.abspath(self.abacus_dir))
            tag = f"abacus_s{self.subdivisions}"
        else:
            config.update(box_size=self.box_size)
            tag = "tfrecord"
        tag = f"{tag}_{cache_key(config)}"
        return [f"{tag}_{s}.pt" for s in ("train", "val", "test")] + [f"{tag}_stats.pt"]

    # -- processing ---------------------------------------------------------
    def _tfrecord_clouds(self):
        box = float(self.box_size or 1000.0)
        out = {}
        for s in ("train", "val", "test"):
            files = sorted(glob.glob(osp.join(self.raw_dir, f"halos_{s}_*.tfrecord")))
            clouds = []
            for fn in files:
                clouds += read_halo_records(fn, self.verify_crc)
            out[s] = [(c[:, :3], c[:, 3:6], box) for c in clouds]
        if not out["val"]:
            out["val"] = out["test"]
        return out

    def _abacus_clouds(self):
        pos, vel, box = read_abacus_particles(self.abacus_dir)
        k = self.subdivisions
        if k == 1:
            c = [(pos + box / 2, vel, box)]
            return dict(train=c, val=c, test=c)
        sub = box / k
        cell = np.clip(np.floor((pos + box / 2) / sub).astype(np.int64), 0, k - 1)
        out = dict(train=[], val=[], test=[])
        for ix in range(k):
            split = "test" if ix == k - 1 else ("val" if ix == k - 2 and k > 2 else "train")
            for iy in range(k):
                for iz in range(k):
                    m = (cell[:, 0] == ix) & (cell[:, 1] == iy) & (cell[:, 2] == iz)
                    corner = np.array([ix, iy, iz], np.float32) * sub
                    out[split].append((pos[m] + box / 2 - corner, vel[m], sub))
        if not out["val"]:
            out["val"] = out["test"]
        return out

    def process(self):
        clouds = self._abacus_clouds() if self.source == "abacus" else self._tfrecord_clouds()
        if not clouds["train"]:
            raise DataFormatError(f"CosmologyHalos: no training samples in '{self.raw_dir}'")
        vel = np.concatenate([v for _, v, _ in clouds["train"]]).astype(np.float64)
        stats = dict(
            vel_mean=torch.tensor(vel.mean(0), dtype=torch.float),
            vel_std=torch.tensor(vel.std(0), dtype=torch.float).clamp_min(1e-8),
        )
        for i, s in enumerate(("train", "val", "test")):
            data_list = []
            for p, v, size in clouds[s]:
                p = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))
                v = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                d = Data(
                    pos=p, x=p / size - 0.5, vel=v, y=(v - stats["vel_mean"]) / stats["vel_std"]
                )
                if self.pre_transform is not None:
                    d = self.pre_transform(d)
                data_list.append(d)
            stored = store_windows(data_list)
            save_processed(
                dict(data=stored["data"], slices=stored["slices"]), self.processed_paths[i]
            )
        save_processed(stats, self.processed_paths[3])

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.stats["vel_std"].to(y) + self.stats["vel_mean"].to(y)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.source}, split={self.split}, {len(self)} clouds)"
