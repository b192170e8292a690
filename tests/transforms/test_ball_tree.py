import warnings

import pytest
import torch
from torch_geometric.data import Batch, Data, InMemoryDataset
from torch_geometric.loader import DataLoader

from torch_geometric_nsa import build_ball_tree
from torch_geometric_nsa.transforms import BallTree

FIELDS = ("perm", "mask", "ptr", "inverse", "slot_batch")


def make_clouds(sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        Data(pos=torch.randn(n, 3, generator=gen), x=torch.randn(n, 2, generator=gen))
        for n in sizes
    ]


@pytest.mark.parametrize("rotate", [None, 30.0])
def test_batch_of_transformed_equals_tree_on_batch(rotate):
    t = BallTree(ball_size=32, rotate=rotate)
    data = [t(d) for d in make_clouds([1, 77, 32, 300, 5])]
    batch = Batch.from_data_list(data)
    layout = BallTree.layout(batch, ball_size=32)
    ref = build_ball_tree(batch.pos, batch.batch, ball_size=32)
    for f in FIELDS:
        assert torch.equal(getattr(layout, f), getattr(ref, f)), f
    if rotate is not None:
        rot = BallTree.layout(batch, ball_size=32, rotate=rotate)
        ref = build_ball_tree(batch.pos, batch.batch, ball_size=32, rotate=rotate)
        for f in FIELDS:
            assert torch.equal(getattr(rot, f), getattr(ref, f)), f


def test_repr_lists_output_changing_arguments():
    assert repr(BallTree()) == "BallTree(ball_size=128, rotate=None)"
    assert repr(BallTree(64, rotate=45)) == "BallTree(ball_size=64, rotate=45.0)"


def test_errors():
    with pytest.raises(ValueError, match="power of two"):
        BallTree(ball_size=100)
    with pytest.raises(ValueError, match="needs 'data.pos'"):
        BallTree()(Data(x=torch.randn(3, 1)))
    with pytest.raises(ValueError, match="apply the BallTree"):
        BallTree.layout(Data(pos=torch.randn(3, 3)), 16)
    d = BallTree(16)(make_clouds([20])[0])
    with pytest.raises(RuntimeError, match="another ball_size than 64"):
        BallTree.layout(d, 64)
    with pytest.raises(ValueError, match="rotate=45"):
        BallTree.layout(d, 16, rotate=45)
    with pytest.raises(TypeError, match="not a flag"):
        BallTree.layout(d, 16, True)
    with pytest.raises(ValueError, match="rotate"):
        BallTree(16, rotate=float("nan"))
    with pytest.raises(TypeError, match="first"):
        BallTree(16, first=3)


class Clouds(InMemoryDataset):
    def __init__(self, root, pre_transform=None, transform=None):
        super().__init__(root, transform=transform, pre_transform=pre_transform)
        self.load(self.processed_paths[0])

    @property
    def processed_file_names(self):
        return ["data.pt"]

    def process(self):
        data = make_clouds([10, 200, 64, 3], seed=4)
        if self.pre_transform is not None:
            data = [self.pre_transform(d) for d in data]
        self.save(data, self.processed_paths[0])


@pytest.mark.parametrize("mode", ["pre_transform", "transform"])
def test_in_memory_dataset_and_loader(tmp_path, mode):
    t = BallTree(ball_size=16, rotate=45)
    ds = Clouds(tmp_path, **{mode: t})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = Clouds(tmp_path, **{mode: t})  # reload: no repr warning
    loader = DataLoader(ds, batch_size=3, shuffle=False)
    for batch in loader:
        layout = BallTree.layout(batch, 16)
        ref = build_ball_tree(batch.pos, batch.batch, ball_size=16)
        for f in FIELDS:
            assert torch.equal(getattr(layout, f), getattr(ref, f)), f
