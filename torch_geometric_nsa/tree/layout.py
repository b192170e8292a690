"""The packed batch layout that every attention branch reads: :class:`TreeLayout`."""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .._checks import check_pow2


def _zero_pads(src: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.view((-1,) + (1,) * (src.dim() - 1)), src, src.new_zeros(()))


class _ToSlots(torch.autograd.Function):
    """``src[perm]`` with pad rows zeroed; its gradient is ``grad[inverse]``: a gather, not
    the atomic ``index_add`` of :meth:`Tensor.index_select`'s backward."""

    @staticmethod
    def forward(ctx, src, perm, inverse, mask):
        ctx.save_for_backward(inverse)
        return _zero_pads(src.index_select(0, perm), mask)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None, None


class _ToPoints(torch.autograd.Function):
    """``src[inverse]``; its gradient is ``grad[perm]`` with pad rows zeroed (the adjoint of
    :class:`_ToSlots`): real slots are read by exactly one point each, pads by none."""

    @staticmethod
    def forward(ctx, src, perm, inverse, mask):
        ctx.save_for_backward(perm, mask)
        return src.index_select(0, inverse)

    @staticmethod
    def backward(ctx, grad):
        perm, mask = ctx.saved_tensors
        return _zero_pads(grad.index_select(0, perm), mask), None, None, None


@dataclass(frozen=True)
class TreeLayout:
    r"""The slots of a batch of point clouds in ball-tree order.

    A batch of :math:`B` clouds with :math:`n_b` points each is laid out in
    :math:`S = \sum_b \lceil n_b / m \rceil m` *slots* (:math:`m` = :attr:`ball_size`).
    Cloud :math:`b` owns slots ``ptr[b]:ptr[b + 1]``; its :math:`n_b` real points
    fill the first :math:`n_b` of them in tree order and the remaining
    (at most :math:`m - 1`) slots are pads at the cloud's end.  Every aligned
    run of :math:`2^j \le m` slots is a subtree of the ball tree, i.e. a
    spatially compact ball, so local balls (:math:`m`), compression blocks and
    selection blocks can all be read off one layout by reshaping.

    Attributes:
        perm (torch.Tensor): ``[S]`` int64, the input point held by each slot.
            Pad slots repeat a real point of the same cloud, so ``perm`` is
            always a valid node index (``x[perm]`` gathers slot features).
        mask (torch.Tensor): ``[S]`` bool, :obj:`True` for real slots.
        ptr (torch.Tensor): ``[B + 1]`` int64, slot offsets of the clouds; all
            entries are multiples of :attr:`ball_size`.
        inverse (torch.Tensor): ``[N]`` int64, the slot of every input point
            (``perm[inverse] == arange(N)``): ``out_slots[inverse]`` returns
            slot results to input order.
        slot_batch (torch.Tensor): ``[S]`` int64, the cloud of every slot
            (tail slots of a capacity layout get ``B - 1``).
        ball_size (int): the largest ball size :math:`m` the layout serves.
        key (torch.Tensor, optional): ``[S]`` float64, a fingerprint of the position of
            the point each slot held when the tree was built (layers check it against the
            positions they are given; see :doc:`/guarantees`).
            :obj:`None` for a layout assembled by hand: then only the point counts and the
            clouds are checked.
        rotate (float, optional): the angle (degrees) of the rotated tree, :obj:`None` for
            the plain tree.

    A *capacity* layout (built with ``num_slots=``) may hold tail slots
    ``ptr[B]:S`` that belong to no cloud; they are masked like pads.
    """

    perm: Tensor
    mask: Tensor
    ptr: Tensor
    inverse: Tensor
    slot_batch: Tensor
    ball_size: int
    key: Optional[Tensor] = None
    rotate: Optional[float] = None

    @classmethod
    def from_slots(
        cls,
        perm: Tensor,
        mask: Tensor,
        ptr: Tensor,
        num_points: int,
        ball_size: int,
        slot_batch: Optional[Tensor] = None,
        key: Optional[Tensor] = None,
        rotate: Optional[float] = None,
    ) -> "TreeLayout":
        """Completes a layout from its slots: derives :attr:`inverse` (and
        :attr:`slot_batch` unless given) from ``perm``, ``mask`` and ``ptr``,
        without host synchronisation."""
        slot = torch.arange(perm.numel(), device=perm.device)
        if slot_batch is None:
            slot_batch = torch.searchsorted(ptr[1:], slot, right=True)
            slot_batch = slot_batch.clamp_(max=ptr.numel() - 2)
        # Real slots hold distinct points; pads write into a dropped entry.
        target = torch.where(mask, perm, torch.full_like(perm, num_points))
        inverse = torch.zeros(num_points + 1, dtype=torch.long, device=perm.device).scatter_(
            0, target, slot
        )
        return cls(
            perm=perm,
            mask=mask,
            ptr=ptr,
            inverse=inverse[:-1],
            slot_batch=slot_batch,
            ball_size=ball_size,
            key=key,
            rotate=rotate,
        )

    @property
    def num_slots(self) -> int:
        """The number of slots :math:`S`."""
        return self.perm.numel()

    @property
    def num_points(self) -> int:
        """The number of input points :math:`N`."""
        return self.inverse.numel()

    @property
    def num_clouds(self) -> int:
        """The number of clouds :math:`B`."""
        return self.ptr.numel() - 1

    @property
    def device(self) -> torch.device:
        """The device of the layout's tensors."""
        return self.perm.device

    def to(self, device) -> "TreeLayout":
        """Moves every tensor of the layout to :obj:`device`."""
        return TreeLayout(
            perm=self.perm.to(device),
            mask=self.mask.to(device),
            ptr=self.ptr.to(device),
            inverse=self.inverse.to(device),
            slot_batch=self.slot_batch.to(device),
            ball_size=self.ball_size,
            key=None if self.key is None else self.key.to(device),
            rotate=self.rotate,
        )

    def gather(self, src: Tensor, zero_pads: bool = False) -> Tensor:
        """Reads per-point values ``[N, ...]`` into slot order ``[S, ...]``.

        Pad slots repeat a real point of their cloud, or hold zeros with
        :obj:`zero_pads`.  Zero pads make the gradient a gather too
        (``grad[inverse]``, no atomic accumulation, deterministic): use them where
        nothing reads the pad rows' values, as the attention layers do."""
        if zero_pads:
            return _ToSlots.apply(src, self.perm, self.inverse, self.mask)
        return src.index_select(0, self.perm)

    def scatter(self, src: Tensor) -> Tensor:
        """Returns per-slot values ``[S, ...]`` to input order ``[N, ...]``
        (pads are dropped).  The gradient is a gather (``grad[perm]``, zero at
        the pads): no atomic accumulation, deterministic."""
        return _ToPoints.apply(src, self.perm, self.inverse, self.mask)

    def balls(self, size: Optional[int] = None) -> Tensor:
        """The ball of every slot at ball size :obj:`size` (default
        :attr:`ball_size`): ``[S]`` int64, ``slot // size``."""
        size = self.ball_size if size is None else size
        self.check_ball_size(size)
        return torch.arange(self.num_slots, device=self.device) // size

    def check_ball_size(self, size: int) -> None:
        """Raises unless balls of :obj:`size` slots can be read off this
        layout (a power of two, at most :attr:`ball_size`)."""
        check_pow2(size, "size")
        if size > self.ball_size:
            raise ValueError(f"size={size} exceeds the layout's ball_size={self.ball_size}")

    def __repr__(self) -> str:
        rotate = "" if self.rotate is None else f", rotate={self.rotate}"
        return (
            f"{self.__class__.__name__}(num_points={self.num_points}, "
            f"num_slots={self.num_slots}, num_clouds={self.num_clouds}, "
            f"ball_size={self.ball_size}{rotate})"
        )
