#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the test suite on the CPU.
# Triton kernels run through TRITON_INTERPRET=1 in their own subprocess tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi
exit $rc
