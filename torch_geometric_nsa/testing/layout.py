import math
from typing import Sequence, Tuple

import torch
from torch import Tensor


def padded_slots(sizes: Sequence[int], ball_size: int, tail: int = 0) -> Tuple[Tensor, Tensor]:
    r"""The slot offsets and real-slot mask of clouds laid out the way the
    ball tree lays them out: each cloud of :math:`n` points gets
    :math:`\lceil n / m \rceil \cdot m` slots, real points first and pads
    last; ``tail`` extra slots of no cloud follow (capacity layout).  Random
    inputs on this layout exercise the attention ops without building a tree.

    Args:
        sizes (Sequence[int]): points per cloud (each >= 1).
        ball_size (int): :math:`m`.
        tail (int, optional): slots past the last cloud. (default: ``0``)

    Returns:
        ``(ptr [B + 1] int64, mask [S] bool)``.

    Example:
        >>> from torch_geometric_nsa.testing import padded_slots
        >>> ptr, mask = padded_slots([3, 5], 4)
        >>> ptr.tolist(), mask.int().tolist()
        ([0, 4, 12], [1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0])
    """
    slots = [math.ceil(n / ball_size) * ball_size for n in sizes]
    ptr = torch.tensor([0] + slots, dtype=torch.long).cumsum(0)
    mask = torch.zeros(int(ptr[-1]) + tail, dtype=torch.bool)
    for b, n in enumerate(sizes):
        mask[int(ptr[b]) : int(ptr[b]) + n] = True
    return ptr, mask
