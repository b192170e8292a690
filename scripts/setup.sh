#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs the
# package with its extras.  Idempotent; safe to run again.
#   TORCH_SPEC   torch requirement to install (default: torch==2.13.0, the CPU wheel
#                here; e.g. TORCH_SPEC="torch --index-url .../cu128" for CUDA)
#   NSA_EXTRAS   extras to install (default: test,triton,examples,docs; the tests run the
#                Triton kernels on the CPU through TRITON_INTERPRET=1, so they need `triton`)
#   NSA_WHEEL_CACHE  where source-built wheels (torch-cluster) are kept between runs
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${NSA_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${NSA_EXTRAS:-test,triton,examples,docs}
CACHE=${NSA_WHEEL_CACHE:-$HOME/.cache/torch_geometric_nsa/wheels}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip setuptools wheel >/dev/null
if ! $PY -c "import torch" 2>/dev/null; then
    $PIP install "$TORCH_SPEC"
fi
$PIP install --no-build-isolation -e ".[$EXTRAS]"

# torch-cluster is optional (exact radius graphs); it only ships as an sdist that
# takes minutes to build, so the wheel is cached outside the clone, keyed by torch.
if ! $PY -c "import torch_cluster" 2>/dev/null; then
    TV=$($PY -c "import torch; print(torch.__version__.split('+')[0])")
    DIR="$CACHE/torch-$TV-py$($PY -c 'import sys; print(*sys.version_info[:2], sep="")')"
    mkdir -p "$DIR"
    if ! ls "$DIR"/torch_cluster-*.whl >/dev/null 2>&1; then
        echo "building torch-cluster once (a few minutes; cached in $DIR)"
        CFG=$(mktemp); printf '[build_ext]\nparallel = 2\n' > "$CFG"
        DIST_EXTRA_CONFIG="$CFG" $PIP wheel --no-deps --no-build-isolation \
            -w "$DIR" "torch-cluster==1.6.3" \
            || echo "torch-cluster did not build: continuing without it (optional)"
        rm -f "$CFG"
    fi
    ls "$DIR"/torch_cluster-*.whl >/dev/null 2>&1 && \
        $PIP install --no-deps "$DIR"/torch_cluster-*.whl || true
fi

# The ahead-of-time compile test (tests/kernels/test_aot_compile.py) also compiles every
# kernel with the Triton release that torch 2.11's CUDA wheels pin (what GPU users run),
# kept in a side folder outside the clone and put on the path of that test's subprocess only.
PINNED_TRITON=3.6.0
PINNED_DIR=${NSA_TRITON_PINNED_DIR:-$HOME/.cache/torch_geometric_nsa/triton-$PINNED_TRITON}
if [ "$(uname -s)" = Linux ] && [ ! -f "$PINNED_DIR/triton/__init__.py" ]; then
    $PIP install --no-deps --target "$PINNED_DIR" "triton==$PINNED_TRITON" \
        || echo "triton $PINNED_TRITON could not be installed into $PINNED_DIR"
fi
