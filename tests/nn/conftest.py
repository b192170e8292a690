import pytest
import torch


def make_batch(sizes, channels, pos_dim=3, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, channels, generator=gen).to(dtype)
    pos = torch.randn(n, pos_dim, generator=gen).to(dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return x, pos, batch


@pytest.fixture
def batch_maker():
    return make_batch
