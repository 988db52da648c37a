#!/usr/bin/env bash
# The aarch64 check: builds (once) and re-uses the emulated ARM environment in ~/.cache/pgn-toolkit/arm
# ($XDG_CACHE_HOME or $PGN_ARM_CACHE), exports every mobile artifact kind tiny, runs each on several QEMU CPU
# models against this host, and writes benchmarks/results/arm/arm_check.md. --help lists the options.
#   PYTHON=/path/to/venv/bin/python benchmarks/arm_check.sh --cpus cortex-a53,cortex-a76,a64fx
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, numpy, executorch, onnxruntime" 2>/dev/null; then
    echo "arm_check: $PY cannot import torch, numpy, executorch and onnxruntime, which the check needs; set PYTHON=/path/to/python" >&2
    exit 1
fi
exec "$PY" -m benchmarks.arm_check "$@"
