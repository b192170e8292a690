#!/usr/bin/env bash
# Prepares balltree-erwin (the anchor of benchmarks/ball_tree.py) for a machine without
# Cython or a package index (the GPU device): downloads its sdist here, cythonizes it to C++
# and leaves it in .bench_deps/balltree_erwin (git-ignored), with a setup_cpp.py that
# compiles the C++ (g++ with OpenMP, numpy headers).  benchmarks/device_run.sh builds and
# uses it when that folder travels with the call (carry: .bench_deps).
# Where pip and a compiler are available, `pip install cython && pip install balltree-erwin`
# is enough instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TMP=$(mktemp -d)
$PY -m pip install -q cython
# no build isolation: an isolated build would compile numpy from source just to read metadata
$PY -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$TMP" balltree-erwin==0.1.0
tar xzf "$TMP"/balltree_erwin-0.1.0.tar.gz -C "$TMP"
$PY -m cython --cplus -3 "$TMP"/balltree_erwin-0.1.0/balltree/balltree.pyx \
    -o "$TMP"/balltree_erwin-0.1.0/balltree/balltree.cpp
rm -rf .bench_deps/balltree_erwin && mkdir -p .bench_deps/balltree_erwin
cp -r "$TMP"/balltree_erwin-0.1.0/balltree .bench_deps/balltree_erwin/
cat > .bench_deps/balltree_erwin/setup_cpp.py <<'PYEOF'
import numpy
from setuptools import Extension, setup

setup(name="balltree-erwin", version="0.1.0", packages=["balltree"],
      ext_modules=[Extension("balltree.balltree", ["balltree/balltree.cpp"],
                             include_dirs=[numpy.get_include(), "balltree"],
                             extra_compile_args=["-O3", "-std=c++11", "-fopenmp"],
                             extra_link_args=["-fopenmp"], language="c++")])
PYEOF
grep -qx '/.bench_deps/' .git/info/exclude 2>/dev/null || echo '/.bench_deps/' >> .git/info/exclude
echo "ready: .bench_deps/balltree_erwin"
