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
