#!/usr/bin/env bash
# The aarch64 check: builds (once) and re-uses the emulated ARM environment in ~/.cache/pgn-toolkit/arm
# ($XDG_CACHE_HOME or $PGN_ARM_CACHE), exports every mobile artifact kind tiny, runs each on several QEMU CPU
# models against this host, and writes results/arm/arm_check.md. --help lists the options.
#   PYTHON=/path/to/venv/bin/python benchmarks/arm_check.sh --cpus cortex-a53,cortex-a76,a64fx
set -u
root="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$root/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, numpy, executorch, onnxruntime" 2>/dev/null; then
    echo "arm_check: $PY cannot import torch, numpy, executorch and onnxruntime, which the check needs; set PYTHON=/path/to/python" >&2
    exit 1
fi
if ! "$PY" -c "import pgn.benchmarks.arm_check" 2>/dev/null; then
    echo "arm_check: $PY cannot import pgn.benchmarks.arm_check: install the toolkit (pip install -e \".[test]\") or set PYTHON" >&2
    exit 1
fi
# -P: the working folder is not put first on sys.path, so a checkout's pgn/ (without its subpackages) never shadows
# the installed namespace (Python ≥ 3.11; older ones run from the folder they are in, as before)
flag=""; "$PY" -P -c pass 2>/dev/null && flag="-P"
exec "$PY" $flag -m pgn.benchmarks.arm_check "$@"
