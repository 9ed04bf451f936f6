// Runs the BUILT plugin library (CMake output, for this GPU's architecture) through its own
// enqueue() on a GPU, the way a TensorRT engine does, and compares every output with the CPU
// reference loops (roi_align_host.cpp, mode 0). Built and run by tests/test_plugin_enqueue_gpu.py;
// linked against the stand-in libnvinfer (libnvinfer_standin.cpp), so no TensorRT is needed.
//
//   trt_enqueue_check <libmaskrt_plugins.so> [tiny]
//
// Per precision (float32, float16 features) and per attribute set (7x7 sampling 2 unaligned, 14x14
// adaptive aligned): the plugin created as the builder does (createPlugin(kBUILD) from int32
// fields, configurePlugin, getFieldsToSerialize) and as an engine does (createPlugin(kRUNTIME)
// from those fields, attachToContext once per execution context, onShapeChange), then
//   1. two execution contexts enqueue on two streams at once, each on its own inputs, three times;
//   2. one context's enqueue captured into a CUDA graph (global capture mode), replayed, the inputs
//      overwritten in place, replayed again: each replay's output is the reference of the inputs
//      it read.
// `tiny` shrinks every size (for compute-sanitizer's memcheck and racecheck). No message may reach
// TensorRT's logger. Prints "OK <n> checks" and exits 0, or each failed check and exits 1.
#include <NvInferRuntime.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "trt_standins.h"

extern "C" int maskrt_roi_align_host(const float* rois, int batch, int num_rois, const void* const* features,
                                     const int* heights, const int* widths, int num_levels, int channels,
                                     int dtype, int output_size, int sampling_ratio, int aligned,
                                     int canonical_scale, int canonical_level, int first_level, void* output,
                                     int mode, int64_t target_blocks, int nthreads);

namespace {

constexpr int kLevels = 4;

bool cuda_ok(cudaError_t status, const char* call, int line) {
  ++g_checks;
  if (status == cudaSuccess) return true;
  ++g_failures;
  std::printf("FAILED line %d: %s: %s\n", line, call, cudaGetErrorString(status));
  return false;
}
#define CUDA_OK(call) cuda_ok((call), #call, __LINE__)

struct Shape {
  int batch, rois, channels, canvas;
  int side(int level) const { return canvas >> (2 + level); }  // strides 4, 8, 16, 32
};

struct Attributes {
  int output_size, sampling_ratio, aligned;
};

// One set of inputs on the host (features as float32 values, and as float16 bits when `half`:
// then the float32 values are the float16 ones, so the reference sees what the GPU sees) and the
// reference output in float32.
struct Inputs {
  std::vector<float> rois;
  std::vector<std::vector<float>> features;
  std::vector<std::vector<__half>> half_features;
  std::vector<float> expected;
};

Inputs make_inputs(const Shape& s, const Attributes& a, bool half, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> value(-2.0F, 2.0F), unit(0.0F, 1.0F);
  Inputs in;
  const float canvas = static_cast<float>(s.canvas);
  for (int i = 0; i < s.batch * s.rois; ++i) {
    // sizes from 2 px to twice the canvas (every level), some past the canvas' edges
    const float w = 2.0F * std::pow(canvas, unit(rng)), h = 2.0F * std::pow(canvas, unit(rng));
    const float x = unit(rng) * 1.2F * canvas - 0.1F * canvas - w / 2, y = unit(rng) * 1.2F * canvas - 0.1F * canvas - h / 2;
    in.rois.insert(in.rois.end(), {x, y, x + w, y + h});
  }
  for (int l = 0; l < kLevels; ++l) {
    const size_t n = static_cast<size_t>(s.batch) * s.channels * s.side(l) * s.side(l);
    std::vector<float> f(n);
    std::vector<__half> h(half ? n : 0);
    for (size_t i = 0; i < n; ++i) {
      f[i] = value(rng);
      if (half) {
        h[i] = __float2half_rn(f[i]);
        f[i] = __half2float(h[i]);
      }
    }
    in.features.push_back(std::move(f));
    in.half_features.push_back(std::move(h));
  }
  std::vector<const void*> features;
  std::vector<int> sides;
  for (int l = 0; l < kLevels; ++l) {
    features.push_back(in.features[static_cast<size_t>(l)].data());
    sides.push_back(s.side(l));
  }
  in.expected.resize(static_cast<size_t>(s.batch) * s.rois * s.channels * a.output_size * a.output_size);
  CHECK(maskrt_roi_align_host(in.rois.data(), s.batch, s.rois, features.data(), sides.data(), sides.data(),
                              kLevels, s.channels, 0, a.output_size, a.sampling_ratio, a.aligned, 224, 4, 2,
                              in.expected.data(), 0, 1, 1) == 0);
  return in;
}

// Device copies of one set of inputs, and an output buffer.
struct DeviceBuffers {
  void* rois = nullptr;
  std::vector<void*> features;
  void* output = nullptr;
  size_t output_bytes = 0;

  DeviceBuffers(const Inputs& in, bool half, size_t outputs) {
    CUDA_OK(cudaMalloc(&rois, in.rois.size() * sizeof(float)));
    for (int l = 0; l < kLevels; ++l) {
      void* f = nullptr;
      CUDA_OK(cudaMalloc(&f, in.features[static_cast<size_t>(l)].size() * (half ? 2 : 4)));
      features.push_back(f);
    }
    output_bytes = outputs * (half ? 2 : 4);
    CUDA_OK(cudaMalloc(&output, output_bytes));
    upload(in, half);
  }
  ~DeviceBuffers() {
    cudaFree(rois);
    for (void* f : features) cudaFree(f);
    cudaFree(output);
  }
  DeviceBuffers(const DeviceBuffers&) = delete;
  DeviceBuffers& operator=(const DeviceBuffers&) = delete;

  void upload(const Inputs& in, bool half) {
    CUDA_OK(cudaMemcpy(rois, in.rois.data(), in.rois.size() * sizeof(float), cudaMemcpyHostToDevice));
    for (int l = 0; l < kLevels; ++l) {
      const auto i = static_cast<size_t>(l);
      const void* src = half ? static_cast<const void*>(in.half_features[i].data()) : in.features[i].data();
      CUDA_OK(cudaMemcpy(features[i], src, in.features[i].size() * (half ? 2 : 4), cudaMemcpyHostToDevice));
    }
    CUDA_OK(cudaMemset(output, 0xff, output_bytes));  // NaN in both types: unwritten rows show
    // the copies and the memset run on the legacy stream, which the non-blocking streams the
    // plugin is enqueued on do not wait for
    CUDA_OK(cudaDeviceSynchronize());
  }
  std::vector<const void*> inputs() const {
    std::vector<const void*> all = {rois};
    all.insert(all.end(), features.begin(), features.end());
    return all;
  }
};

// The output (after its stream finished) against the reference.
void compare(const DeviceBuffers& d, const Inputs& in, bool half, const char* what) {
  const size_t n = in.expected.size();
  std::vector<float> got(n);
  if (half) {
    std::vector<__half> bits(n);
    CUDA_OK(cudaMemcpy(bits.data(), d.output, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) got[i] = __half2float(bits[i]);
  } else {
    CUDA_OK(cudaMemcpy(got.data(), d.output, n * 4, cudaMemcpyDeviceToHost));
  }
  size_t bad = 0;
  double worst = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double e = in.expected[i];
    // float32: the order of a bin's sums is the reference's, contraction may differ; float16: the
    // float32 result rounded once (a rounding boundary may flip one unit in the last place)
    const double tol = half ? 1e-5 + std::fabs(e) * std::ldexp(1.0, -10) : 1e-5 + std::fabs(e) * 1e-5;
    const double err = std::fabs(static_cast<double>(got[i]) - e);
    if (!(err <= tol)) {
      ++bad;
      worst = std::max(worst, std::isnan(err) ? INFINITY : err);
    }
  }
  ++g_checks;
  if (bad != 0) {
    ++g_failures;
    std::printf("FAILED %s: %zu of %zu values off the reference (worst %g)\n", what, bad, n, worst);
  }
}

std::vector<PluginTensorDesc> input_descs(const Shape& s, DataType type) {
  std::vector<PluginTensorDesc> descs = {tensor({s.batch, s.rois, 4}, DataType::kFLOAT)};
  for (int l = 0; l < kLevels; ++l) descs.push_back(tensor({s.batch, s.channels, s.side(l), s.side(l)}, type));
  return descs;
}

// What an engine holds: the runtime-phase plugin, re-created from what the builder serialized.
IPluginV3* engine_plugin(IPluginCreatorV3One* creator, const Shape& s, const Attributes& a, DataType type) {
  Fields fields({{"output_size", a.output_size}, {"sampling_ratio", a.sampling_ratio}, {"aligned", a.aligned},
                 {"canonical_scale", 224}, {"canonical_level", 4}, {"first_level", 2}});
  std::unique_ptr<IPluginV3> built(creator->createPlugin("roi_align", &fields.fc, TensorRTPhase::kBUILD));
  CHECK(built != nullptr);
  if (!built) return nullptr;
  std::vector<DynamicPluginTensorDesc> io;
  for (const auto& d : input_descs(s, type)) io.push_back(dynamic(d));
  io.push_back(dynamic(tensor({s.batch, s.rois, s.channels, a.output_size, a.output_size}, type)));
  CHECK(caps(built.get()).build->configurePlugin(io.data(), 1 + kLevels, &io.back(), 1) == 0);
  return creator->createPlugin("roi_align", caps(built.get()).runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
}

void run(IPluginCreatorV3One* creator, const Shape& s, const Attributes& a, bool half) {
  const DataType type = half ? DataType::kHALF : DataType::kFLOAT;
  const std::string name = std::string(half ? "float16" : "float32") + " " + std::to_string(a.output_size) + "x" +
                           std::to_string(a.output_size);
  std::unique_ptr<IPluginV3> plugin(engine_plugin(creator, s, a, type));
  CHECK(plugin != nullptr);
  if (!plugin) return;
  // one plugin per execution context, as TensorRT makes them
  std::unique_ptr<IPluginV3> first(caps(plugin.get()).runtime->attachToContext(nullptr));
  std::unique_ptr<IPluginV3> second(caps(plugin.get()).runtime->attachToContext(nullptr));
  CHECK(first && second);
  if (!first || !second) return;
  const std::vector<PluginTensorDesc> in_desc = input_descs(s, type);
  const PluginTensorDesc out_desc = tensor({s.batch, s.rois, s.channels, a.output_size, a.output_size}, type);
  for (IPluginV3* p : {first.get(), second.get()}) {
    CHECK(caps(p).runtime->onShapeChange(in_desc.data(), 1 + kLevels, &out_desc, 1) == 0);
  }

  const Inputs in_a = make_inputs(s, a, half, 1), in_b = make_inputs(s, a, half, 2);
  const size_t outputs = in_a.expected.size();
  DeviceBuffers d_a(in_a, half, outputs), d_b(in_b, half, outputs);

  // 1. two contexts, two streams, at once
  cudaStream_t streams[2];
  for (auto& stream : streams) CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int round = 0; round < 3; ++round) {
    const auto ins_a = d_a.inputs(), ins_b = d_b.inputs();
    void* out_a[] = {d_a.output};
    void* out_b[] = {d_b.output};
    CHECK(caps(first.get()).runtime->enqueue(in_desc.data(), &out_desc, ins_a.data(), out_a, nullptr, streams[0]) == 0);
    CHECK(caps(second.get()).runtime->enqueue(in_desc.data(), &out_desc, ins_b.data(), out_b, nullptr, streams[1]) ==
          0);
  }
  for (auto& stream : streams) CUDA_OK(cudaStreamSynchronize(stream));
  compare(d_a, in_a, half, (name + ", stream 1 of 2").c_str());
  compare(d_b, in_b, half, (name + ", stream 2 of 2").c_str());

  // 2. captured into a CUDA graph, replayed on the inputs in place at each replay
  d_a.upload(in_a, half);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaStreamBeginCapture(streams[0], cudaStreamCaptureModeGlobal));
  const auto ins = d_a.inputs();
  void* outs[] = {d_a.output};
  CHECK(caps(first.get()).runtime->enqueue(in_desc.data(), &out_desc, ins.data(), outs, nullptr, streams[0]) == 0);
  CUDA_OK(cudaStreamEndCapture(streams[0], &graph));
  if (graph != nullptr && CUDA_OK(cudaGraphInstantiate(&exec, graph, 0))) {
    size_t nodes = 0;
    CUDA_OK(cudaGraphGetNodes(graph, nullptr, &nodes));
    CHECK(nodes == 1);  // one kernel for every level and image
    CUDA_OK(cudaGraphLaunch(exec, streams[0]));
    CUDA_OK(cudaStreamSynchronize(streams[0]));
    compare(d_a, in_a, half, (name + ", graph replay 1").c_str());
    d_a.upload(in_b, half);  // the same shapes, other values, same addresses
    CUDA_OK(cudaGraphLaunch(exec, streams[0]));
    CUDA_OK(cudaStreamSynchronize(streams[0]));
    compare(d_a, in_b, half, (name + ", graph replay 2").c_str());
    CUDA_OK(cudaGraphExecDestroy(exec));
  }
  if (graph != nullptr) CUDA_OK(cudaGraphDestroy(graph));
  for (auto& stream : streams) CUDA_OK(cudaStreamDestroy(stream));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3 || (argc == 3 && std::strcmp(argv[2], "tiny") != 0)) {
    std::fprintf(stderr, "usage: %s <libmaskrt_plugins.so> [tiny]\n", argv[0]);
    return 2;
  }
  const bool tiny = argc == 3;
  int devices = 0;
  const cudaError_t found = cudaGetDeviceCount(&devices);
  if (found != cudaSuccess || devices == 0) {
    std::printf("FAILED: no CUDA device (%s)\n", cudaGetErrorString(found));
    return 1;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::printf("FAILED dlopen: %s\n", dlerror());
    return 1;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto set_logger_finder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  CHECK(get_creators && set_logger_finder);
  if (!get_creators || !set_logger_finder) return 1;
  Logger logger;
  Finder finder(&logger);
  set_logger_finder(&finder);
  int32_t n = 0;
  IPluginCreatorInterface* const* creators = get_creators(n);
  CHECK(n == 1 && creators != nullptr);
  if (n != 1 || creators == nullptr) return 1;
  auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);

  const Shape shape = tiny ? Shape{1, 6, 3, 64} : Shape{2, 300, 32, 512};
  for (bool half : {false, true}) {
    for (const Attributes& a : {Attributes{7, 2, 0}, Attributes{14, 0, 1}}) run(creator, shape, a, half);
  }
  CHECK(logger.messages.empty());
  if (g_failures == 0) {
    std::printf("OK %d checks\n", g_checks);
    return 0;
  }
  std::printf("%d of %d checks failed\n", g_failures, g_checks);
  logger.print("tensorrt");
  return 1;
}
