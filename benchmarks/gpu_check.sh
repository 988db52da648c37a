#!/usr/bin/env bash
# The GPU check: pgn-bench --device cuda for every PGN against VGG-19/VGG-11 at batch 1 and 8, the input-check
# cost, a one-rank NCCL distillation and the gpu-marked tests, in under 10 minutes, into
# results/gpu/<gpu-name>/ (summary.md first). Needs no pip install and no network; what is missing is
# skipped with the reason. Run from anywhere; --smoke checks the script on the CPU, --help lists the options.
#   PYTHON=python3.12 benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu_check: no Python at '$PY'; set PYTHON=/path/to/python" >&2
    exit 1
fi
# Installed, the repository's top-level packages live under one namespace (pgn.export, pgn.benchmarks, ...). Here
# nothing is installed, so lay the checkout out that way with symbolic links in a temporary folder.
view="$(mktemp -d "${TMPDIR:-/tmp}/pgn-checkout.XXXXXX")" || { echo "gpu_check: cannot create a temporary folder" >&2; exit 1; }
trap 'rm -rf "$view"' EXIT
mkdir "$view/pgn"
for entry in "$PWD"/pgn/*; do ln -s "$entry" "$view/pgn/"; done
for pkg in export distill benchmarks demos; do ln -s "$PWD/$pkg" "$view/pgn/$pkg"; done
export PYTHONPATH="$view${PYTHONPATH:+:$PYTHONPATH}"
# One interpreter: it checks what the check needs (a clear line if something is missing), then runs it.
cd "$view" && "$PY" -c '
import sys
try:
    import torch, click, numpy
except Exception as e:
    sys.exit(f"gpu_check: {sys.executable} cannot import torch, click and numpy ({type(e).__name__}: {e}), which the check needs; set PYTHON=/path/to/python")
from pgn.benchmarks.gpu_check import main
sys.exit(main(sys.argv[1:]))
' "$@"
