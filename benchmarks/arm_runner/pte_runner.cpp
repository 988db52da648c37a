// pte_runner: what an app does natively with a pgn .pte program. Loads it with ExecuTorch's Module API (from the
// headers and libraries the executorch pip package ships), calls `forward` on two float32 NCHW inputs read from raw
// files, and writes each output as raw float32. Built for x86 and, with g++-aarch64-linux-gnu, for aarch64
// (run under qemu-aarch64) by benchmarks/arm_runner/build.sh; benchmarks.arm_cxx compares the two.
//
//   pte_runner MODEL.pte N C H W Y_HAT.f32 Y.f32 OUT_PREFIX   → OUT_PREFIX0.f32, OUT_PREFIX1.f32, ...
#include <executorch/extension/module/module.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;
using executorch::extension::Module;
using executorch::runtime::EValue;

static bool read_floats(const char* path, std::vector<float>& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(float)));
  return static_cast<size_t>(f.gcount()) == out.size() * sizeof(float);
}

int main(int argc, char** argv) {
  if (argc != 9) {
    std::fprintf(stderr, "usage: %s MODEL.pte N C H W Y_HAT.f32 Y.f32 OUT_PREFIX\n", argv[0]);
    return 2;
  }
  TensorImpl::SizesType sizes[4];
  for (int i = 0; i < 4; ++i) sizes[i] = static_cast<TensorImpl::SizesType>(std::atoi(argv[2 + i]));
  const size_t numel = static_cast<size_t>(sizes[0]) * sizes[1] * sizes[2] * sizes[3];
  std::vector<float> y_hat(numel), y(numel);
  if (!read_floats(argv[6], y_hat) || !read_floats(argv[7], y)) {
    std::fprintf(stderr, "error: cannot read %zu floats from %s and %s\n", numel, argv[6], argv[7]);
    return 1;
  }
  TensorImpl::DimOrderType dim_order[4] = {0, 1, 2, 3};
  TensorImpl::StridesType strides[4] = {sizes[1] * sizes[2] * sizes[3], sizes[2] * sizes[3], sizes[3], 1};
  TensorImpl a(ScalarType::Float, 4, sizes, y_hat.data(), dim_order, strides);
  TensorImpl b(ScalarType::Float, 4, sizes, y.data(), dim_order, strides);

  Module module(argv[1], Module::LoadMode::File);
  const auto result = module.forward({EValue(Tensor(&a)), EValue(Tensor(&b))});
  if (!result.ok()) {
    std::fprintf(stderr, "error: forward failed with ExecuTorch error 0x%x\n", static_cast<unsigned>(result.error()));
    return 1;
  }
  const auto& outputs = result.get();
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].isTensor()) continue;
    const Tensor t = outputs[i].toTensor();
    const std::string path = std::string(argv[8]) + std::to_string(i) + ".f32";
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(t.const_data_ptr<float>()), static_cast<std::streamsize>(t.numel() * sizeof(float)));
    if (!f) {
      std::fprintf(stderr, "error: cannot write %s\n", path.c_str());
      return 1;
    }
  }
  std::printf("ok %zu outputs\n", outputs.size());
  return 0;
}
