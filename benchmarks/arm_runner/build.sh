#!/usr/bin/env bash
# Build pte_runner against the headers and libraries an executorch pip package ships (its include/ and lib/).
#   build.sh x86     EXECUTORCH_PACKAGE_DIR OUT     (host g++)
#   build.sh aarch64 EXECUTORCH_PACKAGE_DIR OUT     (g++-aarch64-linux-gnu; the aarch64 wheel's executorch/)
# Prints one line naming what is missing and exits 1 if a piece is not there.
set -eu
arch="$1"; pkg="$2"; out="$3"
here="$(cd "$(dirname "$0")" && pwd)"
case "$arch" in
    x86) cxx=g++ ;;
    aarch64) cxx=aarch64-linux-gnu-g++ ;;
    *) echo "build.sh: unknown architecture $arch (x86 or aarch64)" >&2; exit 2 ;;
esac
command -v "$cxx" >/dev/null || { echo "build.sh: $cxx is not installed (apt-get install ${cxx%-g++}-g++ / g++-aarch64-linux-gnu)" >&2; exit 1; }
c10="$pkg/include/executorch/runtime/core/portable_type/c10"
for need in "$pkg/include/executorch/extension/module/module.h" "$c10/c10/util/irange.h" "$pkg/lib/libexecutorch.so" \
            "$pkg/lib/libexecutorch_backend_xnnpack.so" "$pkg/lib/libexecutorch_kernels_optimized.so" \
            "$pkg/lib/libexecutorch_kernels_quantized.so" "$pkg/lib/libexecutorch_threadpool.so"; do
    [ -e "$need" ] || { echo "build.sh: the executorch package lacks $need" >&2; exit 1; }
done
# The definitions are those of the package's lib/cmake/executorch/executorch-config.cmake. --no-as-needed keeps the
# XNNPACK backend and the kernel libraries, which register themselves when loaded.
exec "$cxx" -std=c++17 -O2 -DC10_USING_CUSTOM_GENERATED_MACROS -DET_EVENT_TRACER_ENABLED \
    -I"$pkg/include" -I"$c10" -o "$out" "$here/pte_runner.cpp" -L"$pkg/lib" -Wl,--no-as-needed \
    -lexecutorch -lexecutorch_backend_xnnpack -lexecutorch_kernels_optimized -lexecutorch_kernels_quantized \
    -lexecutorch_threadpool -Wl,--as-needed -Wl,-rpath,"$pkg/lib"
