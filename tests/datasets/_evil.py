"""A planted processed cache: a pickle whose loading runs a command.

It calls ``subprocess.call``, not ``os.system``: torch's weights-only
unpickler names that global with an ``add_safe_globals`` hint, which makes
PyG's ``fs.torch_load`` (behind ``InMemoryDataset.load``) retry with
``weights_only=False`` and run it; so these tests also catch a return to
PyG's loader."""

import subprocess

import torch


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return subprocess.call, (["touch", self.marker],)


def plant(path, marker):
    """Overwrites ``path`` with a ``torch.save`` file that, loaded with
    ``weights_only=False``, creates ``marker``."""
    torch.save({"train": Evil(marker)}, str(path))
