// Fit a generator on the device with a fitting-step program written by `pgn-export --target executorch-training`
// (or export.export_training_step): ExecuTorch's training module runs one forward_backward per step, and its SGD
// applies the gradients the method returns. This is what an Android (JNI) or iOS app links.
//
// NOT COMPILED HERE: the executorch pip package ships include/ and lib/ for the runtime, XNNPACK and the kernels,
// but not the headers or library of the training extension (extension/training). Build it inside an ExecuTorch
// source checkout with EXECUTORCH_BUILD_EXTENSION_TRAINING=ON (see CMakeLists.txt beside this file).
//
// Usage: fit_generator STEP.pte INPUTS.bin TARGET.bin STEPS LR OUT_DIR
//   INPUTS.bin, TARGET.bin: raw little-endian float32 of the shapes in STEP.pte.manifest.json ("inputs");
//   OUT_DIR/<parameter name>.bin: the fitted parameters, raw float32 in the manifest's "trainable_parameters" shapes
//   (np.fromfile(path, np.float32).reshape(shape) → the generator's state dict).
// The shapes below must be those of the manifest's "inputs" (the program takes only the shapes it was exported for).

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/extension/training/module/training_module.h>
#include <executorch/extension/training/optimizer/sgd.h>

using executorch::extension::FileDataLoader;
using executorch::extension::make_tensor_ptr;
using executorch::extension::training::TrainingModule;
using executorch::extension::training::optimizer::SGD;
using executorch::extension::training::optimizer::SGDOptions;

static std::vector<float> read_floats(const char* path, size_t count) {
  std::vector<float> data(count);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (!in) {
    std::fprintf(stderr, "%s: expected %zu float32 values\n", path, count);
    std::exit(1);
  }
  return data;
}

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s STEP.pte INPUTS.bin TARGET.bin STEPS LR OUT_DIR\n", argv[0]);
    return 1;
  }
  // The talking-head demo's shapes at 64², batch 8: poses (8, 1, 64, 64), target (8, 3, 64, 64).
  const std::vector<executorch::aten::SizesType> input_shape = {8, 1, 64, 64};
  const std::vector<executorch::aten::SizesType> target_shape = {8, 3, 64, 64};
  auto inputs_data = read_floats(argv[2], 8 * 1 * 64 * 64);
  auto target_data = read_floats(argv[3], 8 * 3 * 64 * 64);
  auto inputs = make_tensor_ptr(input_shape, std::move(inputs_data));
  auto target = make_tensor_ptr(target_shape, std::move(target_data));
  const int steps = std::atoi(argv[4]);
  const double lr = std::atof(argv[5]);

  auto loader = FileDataLoader::from(argv[1]);
  if (!loader.ok()) {
    std::fprintf(stderr, "cannot open %s\n", argv[1]);
    return 1;
  }
  TrainingModule module(std::make_unique<FileDataLoader>(std::move(loader.get())));

  // The runtime hands out the parameters after one forward_backward; it changes nothing without an optimizer step.
  auto first = module.execute_forward_backward("forward", {*inputs, *target});
  if (!first.ok()) {
    std::fprintf(stderr, "forward_backward failed (error %d)\n", static_cast<int>(first.error()));
    return 1;
  }
  auto parameters = module.named_parameters("forward");
  SGDOptions options{lr};  // the manifest's "optimizer": SGD, momentum 0, weight decay 0 by default
  SGD optimizer(parameters.get(), options);

  for (int step = 0; step < steps; ++step) {
    auto outputs = module.execute_forward_backward("forward", {*inputs, *target});
    if (!outputs.ok()) {
      std::fprintf(stderr, "step %d failed (error %d)\n", step, static_cast<int>(outputs.error()));
      return 1;
    }
    const float loss = outputs.get()[0].toTensor().const_data_ptr<float>()[0];  // before this step's update
    optimizer.step(module.named_gradients("forward").get());
    std::printf("step %d loss %.6g\n", step, loss);
  }

  for (const auto& [name, tensor] : parameters.get()) {
    // names as in the generator, prefixed "generator." (strip it for load_state_dict)
    std::string path = std::string(argv[6]) + "/" + std::string(name) + ".bin";
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(tensor.const_data_ptr<float>()),
              static_cast<std::streamsize>(tensor.numel() * sizeof(float)));
  }
  return 0;
}
