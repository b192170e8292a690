import glob
import itertools
import math
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.transforms import BaseTransform

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


# ---------------------------------------------------------------------------
# the whole periodic box as one graph: masks, views, features, a baseline
# ---------------------------------------------------------------------------
def slab_masks(
    pos_x: Tensor, box: float, val_fraction: float = 0.25, test_fraction: float = 0.25
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Disjoint boolean ``train, val, test`` masks covering every point, by
    slabs of the coordinate :obj:`pos_x` (in :math:`[0, L)`): test is
    :math:`x \ge (1 - t) L`, validation :math:`(1 - t - v) L \le x < (1 - t) L`,
    training the rest."""
    if not (0 < test_fraction and 0 <= val_fraction and val_fraction + test_fraction < 1):
        raise ValueError(
            "need 0 < test_fraction, 0 <= val_fraction and val_fraction + test_fraction < 1 "
            f"(got {val_fraction}, {test_fraction})"
        )
    t = pos_x / box
    test = t >= 1 - test_fraction
    val = (t >= 1 - test_fraction - val_fraction) & ~test
    return ~(test | val), val, test


def cube_symmetries() -> Tensor:
    """The 48 symmetries of the cube as ``[48, 3, 3]`` signed permutation
    matrices (the identity first)."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = torch.zeros(3, 3)
            m[torch.arange(3), torch.tensor(perm)] = torch.tensor(signs)
            mats.append(m)
    return torch.stack(mats)


def _index_nodes(data: Data, index: Tensor) -> Data:
    """``data`` restricted to (or repeated along) the nodes ``index``; keeps
    ``n_id``, the nodes' indices in the full box (PyG's loaders' name)."""
    n = data.num_nodes
    out = Data()
    for key, value in data:
        out[key] = (
            value[index] if torch.is_tensor(value) and value.dim() and value.size(0) == n else value
        )
    if "n_id" not in data:
        out.n_id = index
    return out


class RandomBoxView(BaseTransform):
    r"""A random view of a periodic box for training (a transform in PyG's
    sense): a uniform random subset of :obj:`num_points` nodes, a uniform
    random periodic shift (positions wrap into :math:`[0, L)`) and one of the
    48 symmetries of the cube, applied to the positions **and** to the vector
    attributes :obj:`vector_keys` (velocities rotate with the positions).
    ``x`` becomes the new positions scaled to the box, centred.  The view's
    nodes carry ``n_id``, their indices in the full box.

    Args:
        box_size (float): the box edge :math:`L`.
        num_points (int, optional): nodes per view (:obj:`None` or more than
            the box holds: all, in random order).
        shift (bool): random periodic shift.  (default: :obj:`True`)
        symmetry (bool): random cube symmetry.  (default: :obj:`True`)
        vector_keys (tuple): node attributes that are 3-vectors.
            (default: :obj:`("vel", "y")`)
    """

    def __init__(
        self,
        box_size: float,
        num_points: Optional[int] = None,
        shift: bool = True,
        symmetry: bool = True,
        vector_keys: Tuple[str, ...] = ("vel", "y"),
    ):
        if not box_size > 0:
            raise ValueError(f"box_size must be positive (got {box_size})")
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be positive (got {num_points})")
        self.box_size, self.num_points = float(box_size), num_points
        self.shift, self.symmetry, self.vector_keys = shift, symmetry, tuple(vector_keys)
        self._mats = cube_symmetries()

    def forward(self, data: Data) -> Data:
        n = data.num_nodes
        index = torch.randperm(n)
        if self.num_points is not None:
            index = index[: self.num_points]
        data = _index_nodes(data, index)
        L = self.box_size
        pos = data.pos
        if self.shift:
            pos = pos + torch.rand(3) * L
        if self.symmetry:
            m = self._mats[int(torch.randint(48, ()))]
            pos = (pos - L / 2) @ m.T + L / 2
            for key in self.vector_keys:
                if key in data:
                    data[key] = data[key] @ m.T.to(data[key].dtype)
        data.pos = torch.remainder(pos, L).clamp_(max=math.nextafter(L, 0))
        data.x = data.pos / L - 0.5
        return data

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(box_size={self.box_size}, num_points={self.num_points}, "
            f"shift={self.shift}, symmetry={self.symmetry})"
        )


class PeriodicHalo(BaseTransform):
    r"""Adds periodic images of the points within :obj:`width` of the faces of
    the box :math:`[0, L)^3`, across those faces (faces, edges and corners),
    so that points near a face see their periodic neighbours.  The images
    are context only: their ``train_mask``, ``val_mask`` and ``test_mask``
    are :obj:`False`, ``is_image`` marks them, every other node attribute
    (``n_id``, targets) is copied.  ``x`` is recomputed as the positions
    scaled to the box, centred.

    Args:
        box_size (float): the box edge :math:`L`.
        width (float): the halo's width, in the units of ``pos``.
    """

    MASKS = ("train_mask", "val_mask", "test_mask")

    def __init__(self, box_size: float, width: float):
        if not box_size > 0 or not 0 <= width <= box_size / 2:
            raise ValueError(
                f"need box_size > 0 and 0 <= width <= box_size / 2 (got {box_size}, {width})"
            )
        self.box_size, self.width = float(box_size), float(width)

    def forward(self, data: Data) -> Data:
        L, w, pos = self.box_size, self.width, data.pos
        index, shifts = [torch.arange(data.num_nodes)], [torch.zeros(data.num_nodes, 3)]
        if w > 0:
            for off in itertools.product((-1.0, 0.0, 1.0), repeat=3):
                if off == (0.0, 0.0, 0.0):
                    continue
                s = torch.tensor(off, dtype=pos.dtype) * L
                p = pos + s
                keep = ((p >= -w) & (p < L + w)).all(1).nonzero().view(-1)
                index.append(keep)
                shifts.append(s.expand(keep.numel(), 3))
        index, shift = torch.cat(index), torch.cat(shifts).to(pos.dtype)
        out = _index_nodes(data, index)
        if "n_id" in data:
            out.n_id = data.n_id[index]
        out.pos = out.pos + shift
        image = torch.zeros(index.numel(), dtype=torch.bool)
        image[data.num_nodes :] = True
        for key in self.MASKS:
            if key in out:
                out[key] = out[key] & ~image
        out.is_image = image
        out.x = out.pos / L - 0.5
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(box_size={self.box_size}, width={self.width})"


class BoxFeatures(BaseTransform):
    r"""Node features ``x`` from positions in a periodic box of edge
    :math:`L`: with :obj:`frequencies` :math:`F > 0` the periodic Fourier
    features :math:`\sin(2\pi n p_d / L), \cos(2\pi n p_d / L)` for
    :math:`n = 1..F` and the three axes (``[N, 6F]``; identical for a point
    and its periodic images, so products of a query's and a key's features
    can express functions of their periodic separation); with :math:`F = 0`
    the positions scaled to the box, centred (``[N, 3]``).

    Args:
        box_size (float): the box edge :math:`L`.
        frequencies (int): :math:`F`.  (default: :obj:`4`)
    """

    def __init__(self, box_size: float, frequencies: int = 4):
        if not box_size > 0 or frequencies < 0:
            raise ValueError(
                f"need box_size > 0 and frequencies >= 0 (got {box_size}, {frequencies})"
            )
        self.box_size, self.frequencies = float(box_size), int(frequencies)

    @property
    def num_features(self) -> int:
        return 6 * self.frequencies if self.frequencies else 3

    def forward(self, data: Data) -> Data:
        t = data.pos / self.box_size
        if not self.frequencies:
            data.x = t - 0.5
            return data
        n = torch.arange(1, self.frequencies + 1, dtype=t.dtype)
        angle = 2 * math.pi * t.unsqueeze(-1) * n  # [N, 3, F]
        data.x = torch.cat([angle.sin(), angle.cos()], -1).view(t.size(0), -1)
        return data

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(box_size={self.box_size}, frequencies={self.frequencies})"
        )


def box_partition(data: Data, num_points: int, seed: int = 0) -> List[Data]:
    """A fixed random partition of the nodes of :obj:`data` into
    ``ceil(N / num_points)`` views of nearly equal size (uniform random
    subsets, like those of
    :class:`~torch_geometric_nsa.datasets.cosmology_halos.RandomBoxView`,
    without shift or symmetry), each carrying ``n_id``: together they hold
    every node exactly once, so an evaluation over them covers every masked
    node once."""
    if num_points < 1:
        raise ValueError(f"num_points must be positive (got {num_points})")
    n = data.num_nodes
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = max(1, math.ceil(n / num_points))
    return [_index_nodes(data, idx) for idx in perm.tensor_split(parts)]


def _cic_weights(pos: np.ndarray, box: float, grid: int):
    g = pos / box * grid - 0.5
    i0 = np.floor(g).astype(np.int64)
    f = g - i0
    for corner in itertools.product((0, 1), repeat=3):
        w = np.ones(len(pos))
        idx = []
        for d, c in enumerate(corner):
            w = w * (f[:, d] if c else 1 - f[:, d])
            idx.append((i0[:, d] + c) % grid)
        yield tuple(idx), w


def linear_velocity(
    pos: np.ndarray,
    box: float,
    smoothing: float = 2.0,
    grid: int = 64,
    query: Optional[np.ndarray] = None,
) -> np.ndarray:
    r"""Linear-theory velocity field, up to its amplitude :math:`f a H`: the
    cloud-in-cell density contrast :math:`\delta` of the points :obj:`pos` on
    a periodic grid, smoothed with a Gaussian of width :obj:`smoothing` (the
    units of ``pos``), turned into :math:`\mathbf{u}(\mathbf{k}) = i
    \mathbf{k} \delta(\mathbf{k}) / k^2` (so :math:`\nabla \cdot \mathbf{u} =
    -\delta`, and :math:`\mathbf{v} \approx f a H \mathbf{u}`) and
    interpolated back to :obj:`query` (default: :obj:`pos`).  A reference for
    the velocity-from-positions task: fit one scalar on training nodes.

    Shapes:
        - **input:** positions :math:`(N, 3)` in :math:`[0, L)`
        - **output:** :math:`(M, 3)` (units of ``pos``)
    """
    pos = np.asarray(pos, dtype=np.float64)
    query = pos if query is None else np.asarray(query, dtype=np.float64)
    rho = np.zeros((grid,) * 3)
    for idx, w in _cic_weights(pos, box, grid):
        np.add.at(rho, idx, w)
    dk = np.fft.fftn(rho / rho.mean() - 1)
    k1 = 2 * np.pi * np.fft.fftfreq(grid, d=box / grid)
    kv = np.meshgrid(k1, k1, k1, indexing="ij")
    k2 = kv[0] ** 2 + kv[1] ** 2 + kv[2] ** 2
    k2[0, 0, 0] = 1.0
    dk = dk * np.exp(-0.5 * k2 * smoothing**2) / k2
    dk[0, 0, 0] = 0.0
    out = np.zeros((len(query), 3))
    weights = list(_cic_weights(query, box, grid))
    for d in range(3):
        field = np.fft.ifftn(1j * kv[d] * dk).real
        for idx, w in weights:
            out[:, d] += w * field[idx]
    return out


class CosmologyHalos(SafeProcessing, InMemoryDataset):
    r"""Predict velocities from positions in cosmological N-body data, as in
    the cosmology benchmark of Balla et al. (2024), "A Cosmology Benchmark for
    Geometric Deep Learning", used by `Erwin <https://arxiv.org/abs/2502.17019>`_.

    Two sources:

    * :obj:`source="abacus"` (the offline default when no tfrecord files are
      found): the real small Abacus run ``Mini_N64_L32`` (262,144 particles,
      32 Mpc/h periodic box, z = 0) from the ``abacusutils`` sdist (fetch it
      once with ``python -m torch_geometric_nsa.datasets.abacus_mini``; it is
      looked for in :obj:`abacus_dir`, else ``$ABACUS_MINI_N64_L32``, else
      that command's cache).  With :obj:`subdivisions=1` (the default) the
      dataset is **one graph, the whole periodic box**, split transductively
      like PyG's :class:`~torch_geometric.datasets.Planetoid`: every position
      is an input, and the boolean node attributes ``train_mask``,
      ``val_mask`` and ``test_mask`` select whose velocities are targets
      (slabs of the original x coordinate: test the last
      :obj:`test_fraction` of the box, validation the :obj:`val_fraction`
      before it, training the rest).  :obj:`split` does not change the
      graph.  Velocities follow from the density field by a non-local
      integral (linear theory: :math:`\mathbf{v}(\mathbf{k}) \propto i
      \mathbf{k}\,\delta(\mathbf{k}) / k^2`, see
      :func:`~torch_geometric_nsa.datasets.cosmology_halos.linear_velocity`),
      so the task needs context from the whole box.
      :class:`~torch_geometric_nsa.datasets.cosmology_halos.RandomBoxView`,
      :class:`~torch_geometric_nsa.datasets.cosmology_halos.PeriodicHalo`,
      :class:`~torch_geometric_nsa.datasets.cosmology_halos.BoxFeatures` and
      :func:`~torch_geometric_nsa.datasets.cosmology_halos.box_partition`
      make training views and evaluation views of it.  With
      :obj:`subdivisions` :math:`k > 1` the box is instead cut into
      :math:`k^3` cubic sub-boxes, each a sample; sub-boxes with the highest
      x index form the test split, the next ones the validation split.
    * ``root/raw/halos_{train,val,test}_*.tfrecord`` (the benchmark): each
      record a ``tf.train.Example`` of serialized float32 tensors (5,000 halos:
      x, y, z, v_x, v_y, v_z); read **without TensorFlow** (own TFRecord framing
      with masked CRC-32C and a minimal protobuf parser).  One record = one
      sample.  :obj:`box_size` defaults to 1000 Mpc/h.

    Each sample holds ``pos`` (in the box units, in :math:`[0, L)`), ``x``
    (the positions divided by the box/sub-box size, centred), ``vel`` (the
    velocities, km/s) and ``y``, the normalised velocities (:meth:`denormalize`
    maps back to km/s).  Sub-boxes and tfrecord clouds are normalised by the
    training split's per-axis mean and standard deviation; the whole box by
    one scale, the root mean square of the training nodes' velocity
    components, and no shift (``y = vel / scale``), so that ``y`` rotates
    with the positions under
    :class:`~torch_geometric_nsa.datasets.cosmology_halos.RandomBoxView`.
    :attr:`stats` holds
    ``vel_mean``, ``vel_std``, ``train_vel_mean`` (the training nodes' mean
    velocity, the trivial baseline) and ``box_size``.

    Args:
        root (str, optional): dataset folder.  (default:
            ``$TORCH_GEOMETRIC_NSA_DATA/CosmologyHalos``)
        split (str): :obj:`"train"`, :obj:`"val"` or :obj:`"test"`.
        source (str): :obj:`"tfrecord"`, :obj:`"abacus"` or :obj:`"auto"`
            (tfrecord files when ``root/raw`` has some, else abacus).
        abacus_dir (str, optional): the ``Mini_N64_L32`` folder.
        subdivisions (int): sub-boxes per axis for the Abacus data; :obj:`1`
            is the whole box with node masks.  (default: :obj:`1`)
        val_fraction (float): the validation slab's share of the box edge
            (whole box).  (default: :obj:`0.25`)
        test_fraction (float): the test slab's share of the box edge (whole
            box).  (default: :obj:`0.25`)
        box_size (float, optional): box size of the tfrecord data.
            (default: :obj:`1000.`)
        verify_crc (bool): check the TFRecord CRCs.  (default: :obj:`True`)
        transform (callable, optional): applied to every sample on access.
        pre_transform (callable, optional): applied once to every sample in
            :meth:`process`; part of the cache key (its ``repr``).
        force_reload (bool): reprocess.  (default: :obj:`False`)

    The processed files hold tensors only and load with
    ``weights_only=True``.  Tfrecord caches are keyed on the arguments,
    ``repr(pre_transform)`` and each source file's path, size and
    modification time.  Abacus caches are keyed on the arguments and
    ``repr(pre_transform)`` and record the run's files (names and sizes):
    a different run is processed again, and a processed folder carried to
    another machine loads there **without** the run and without
    ``abacusnbody``.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "train",
        source: str = "auto",
        abacus_dir: Optional[str] = None,
        subdivisions: int = 1,
        box_size: Optional[float] = None,
        verify_crc: bool = True,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
        val_fraction: float = 0.25,
        test_fraction: float = 0.25,
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
        slab_masks(torch.zeros(1), 1.0, val_fraction, test_fraction)  # checks the fractions
        self.source, self.split = source, split
        self.subdivisions = int(subdivisions)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.box_size = box_size
        self.verify_crc = verify_crc
        self.pre_transform = pre_transform  # part of the file names, needed below
        self.abacus_dir = abacus_dir
        if source == "abacus":
            # found before anything is written: a missing run leaves no folders
            # behind; a processed folder carried without the run still loads
            cached = [osp.join(root, "processed", f) for f in self.processed_file_names]
            try:
                self.abacus_dir = _find_abacus_dir(abacus_dir)
            except FileNotFoundError:
                if force_reload or not all(osp.isfile(p) for p in cached):
                    raise
                self.abacus_dir = None
            else:
                if not force_reload and all(osp.isfile(p) for p in cached):
                    recorded = load_processed(cached[-1]).get("source_files")
                    force_reload = recorded != self._abacus_stamps()
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        idx = 0 if self.whole_box else ("train", "val", "test").index(split)
        self.data, self.slices = load_collated(self.processed_paths[idx], "CosmologyHalos")
        self.stats: Dict[str, torch.Tensor] = load_processed(self.processed_paths[-1])

    @property
    def whole_box(self) -> bool:
        """Whether the dataset is the whole Abacus box as one masked graph."""
        return self.source == "abacus" and self.subdivisions == 1

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

    def _abacus_stamps(self) -> List[str]:
        """``"relative path:size"`` of the run's files (not their times: a
        copied run is the same run)."""
        return [
            f"{osp.relpath(p, self.abacus_dir)}:{os.stat(p).st_size}" for p in self._source_files()
        ]

    @property
    def processed_file_names(self) -> List[str]:
        config = dict(
            version=3, source=self.source, pre_transform=transform_repr(self.pre_transform)
        )
        if self.source == "abacus":
            config.update(run=MINI, subdivisions=self.subdivisions)
            tag = f"abacus_s{self.subdivisions}"
            if self.subdivisions == 1:
                config.update(val_fraction=self.val_fraction, test_fraction=self.test_fraction)
                tag = f"{tag}_{cache_key(config)}"
                return [f"{tag}_box.pt", f"{tag}_stats.pt"]
        else:
            config.update(
                box_size=self.box_size, files=[file_stamp(p) for p in self._source_files()]
            )
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

    def _abacus_clouds(self, pos, vel, box):
        k = self.subdivisions
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

    def _process_box(self, pos, vel, box):
        pos = torch.from_numpy(np.ascontiguousarray(pos + box / 2, dtype=np.float32))
        # [-L/2, L/2) shifted by L/2 may round up to L: wrap into [0, L)
        pos = torch.remainder(pos, box).clamp_(max=math.nextafter(box, 0))
        vel = torch.from_numpy(np.ascontiguousarray(vel, dtype=np.float32))
        train, val, test = slab_masks(pos[:, 0], box, self.val_fraction, self.test_fraction)
        tv = vel[train].double()
        scale = float(tv.pow(2).mean().sqrt())
        stats = dict(
            vel_mean=torch.zeros(3),
            vel_std=torch.full((3,), scale),
            train_vel_mean=tv.mean(0).float(),
            box_size=torch.tensor(float(box)),
            source_files=self._abacus_stamps(),
        )
        d = Data(
            pos=pos,
            x=pos / box - 0.5,
            vel=vel,
            y=vel / scale,
            train_mask=train,
            val_mask=val,
            test_mask=test,
        )
        if self.pre_transform is not None:
            d = self.pre_transform(d)
        stored = store_windows([d])
        save_processed(dict(data=stored["data"], slices=stored["slices"]), self.processed_paths[0])
        save_processed(stats, self.processed_paths[1])

    def process(self):
        if self.source == "abacus":
            pos, vel, box = read_abacus_particles(self.abacus_dir)
            if self.whole_box:
                return self._process_box(pos, vel, box)
            clouds = self._abacus_clouds(pos, vel, box)
        else:
            clouds = self._tfrecord_clouds()
        if not clouds["train"]:
            raise DataFormatError(f"CosmologyHalos: no training samples in '{self.raw_dir}'")
        vel = np.concatenate([v for _, v, _ in clouds["train"]]).astype(np.float64)
        stats = dict(
            vel_mean=torch.tensor(vel.mean(0), dtype=torch.float),
            vel_std=torch.tensor(vel.std(0), dtype=torch.float).clamp_min(1e-8),
        )
        stats["train_vel_mean"] = stats["vel_mean"].clone()
        if self.source == "abacus":
            stats["source_files"] = self._abacus_stamps()
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
        if self.whole_box:
            return f"{self.__class__.__name__}(abacus, whole box, {self._data.pos.size(0)} points)"
        return f"{self.__class__.__name__}({self.source}, split={self.split}, {len(self)} clouds)"
