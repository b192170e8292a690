"""CPU CI for the Triton kernels: runs ``interp_suite.py`` in a subprocess under
``TRITON_INTERPRET=1`` (the variable must be set before Triton is imported, and must not leak
into the other test modules of this session)."""

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_kernels_under_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            HERE,
            os.path.join(HERE, "interp_suite.py"),
        ],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    print(tail)
    assert proc.returncode == 0, tail
