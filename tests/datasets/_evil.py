"""A planted processed cache: a pickle whose loading runs a shell command."""

import os

import torch


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def plant(path, marker):
    """Overwrites ``path`` with a ``torch.save`` file that, loaded with
    ``weights_only=False``, creates ``marker``."""
    torch.save({"train": Evil(marker)}, str(path))
