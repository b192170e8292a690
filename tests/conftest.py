"""Fixtures shared by the whole test suite."""

import os
import subprocess
import sys

import pytest


@pytest.fixture
def run_under_interpreter():
    """Runs a pytest suite file in a subprocess with ``TRITON_INTERPRET=1`` (the variable must
    be set before Triton is imported, and must not leak into the other test modules of this
    session) and asserts that it passes, printing the tail of its output."""

    def run(suite: str, timeout: int) -> None:
        here = os.path.dirname(os.path.abspath(suite))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--rootdir",
                here,
                suite,
            ],
            env=dict(os.environ, TRITON_INTERPRET="1"),
            cwd=here,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        tail = (proc.stdout + proc.stderr)[-6000:]
        print(tail)
        assert proc.returncode == 0, tail

    return run


@pytest.fixture
def fake_abacus_run(tmp_path, monkeypatch):
    """``make(pos, vel, box, reader=None) -> run folder``: a stand-in ``Mini_N64_L32`` run (one
    slab file, so the dataset finds a run) whose particles the monkeypatched
    ``read_abacus_particles`` returns (or ``reader(path)``, when given); no abacusnbody."""
    from torch_geometric_nsa.datasets import cosmology_halos

    def make(pos, vel, box, reader=None):
        run = tmp_path / "Mini_N64_L32"
        slab = run / "slices" / "z0.000" / "field_pack9"
        slab.mkdir(parents=True, exist_ok=True)
        (slab / "slab000.field.pack9.asdf").write_bytes(b"x" * 10)
        if reader is None:
            reader = lambda path: (pos, vel, box)  # noqa: E731
        monkeypatch.setattr(cosmology_halos, "read_abacus_particles", reader)
        monkeypatch.delenv("ABACUS_MINI_N64_L32", raising=False)
        return str(run)

    return make
