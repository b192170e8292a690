"""CPU CI for the Triton kernels: runs ``interp_suite.py`` in a subprocess under
``TRITON_INTERPRET=1`` (the variable must be set before Triton is imported, and must not leak
into the other test modules of this session)."""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_kernels_under_triton_interpreter(run_under_interpreter):
    run_under_interpreter(os.path.join(HERE, "interp_suite.py"), timeout=900)
