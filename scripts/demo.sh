#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and trains Erwin NSA on real molecular dynamics
# (adenylate kinase trajectories shipped with MDAnalysisTests) on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/md.py "$@"
