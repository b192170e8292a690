"""Every Triton kernel compiles to a cubin for sm_90 and sm_80, with the Triton that CI installs
and with 3.6.0 (the version torch 2.11's CUDA wheels pin), on this CPU-only machine.

The interpreter suites never run the real compiler, so a kernel that only the compiler rejects
(e.g. a loop-carried variable that changes type) used to reach main unnoticed.  See
``aot_compile.py`` for what is covered.  Records are captured once per session (under
``TRITON_INTERPRET=1``, in a subprocess); each Triton version compiles them in its own
subprocess.  Compiled kernels are cached by Triton (``~/.triton/cache``), so reruns are quick.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(HERE, "aot_compile.py")

#: Triton release that torch 2.11's CUDA wheels pin (what users and the device run)
PINNED = "3.6.0"
#: side folder with that release (``pip install --target``; ``scripts/setup.sh`` makes it)
PINNED_DIR = os.environ.get(
    "NSA_TRITON_PINNED_DIR",
    os.path.expanduser(f"~/.cache/torch_geometric_nsa/triton-{PINNED}"),
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)


def _run(args, extra_path=None, interpret=False, timeout=3600):
    env = dict(os.environ, TRITON_DEFAULT_FP_FUSION="1")
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr[-4000:]
    return proc.returncode, out


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("aot") / "launches.json")
    rc, out = _run(["capture", path], interpret=True, timeout=1800)
    assert rc == 0, out
    return path


def _jobs():
    return str(max(1, min(4, os.cpu_count() or 1)))


def test_compiles_with_installed_triton(records):
    rc, out = _run(["compile", records, "--jobs", _jobs()])
    print(out[-3000:])
    assert rc == 0, out[-8000:]
    assert " compiled to cubin " in out


def test_compiles_with_pinned_triton(records):
    if not os.path.isfile(os.path.join(PINNED_DIR, "triton", "__init__.py")):
        msg = (
            f"Triton {PINNED} not found in {PINNED_DIR}: run scripts/setup.sh, or "
            f"`pip install --no-deps --target {PINNED_DIR} triton=={PINNED}`"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    rc, out = _run(["compile", records, "--jobs", _jobs()], extra_path=PINNED_DIR)
    print(out[-3000:])
    assert rc == 0, out[-8000:]
    assert f"triton {PINNED}:" in out
