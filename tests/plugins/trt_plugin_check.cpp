// Host-only checks of the TensorRT plugin class (roi_align_plugin.cpp) without TensorRT's
// libraries: only its headers are needed. Built and run by tests/test_plugin_compile.py where
// NvInfer.h is found. It drives the plugin through the library's exported getCreators() exactly as
// TensorRT would (creator -> createPlugin -> capability interfaces) and checks fields, formats,
// types, shapes (through a stand-in IExprBuilder), serialization round trips, clone and enqueue.
//
// Stand-ins linked here instead of TensorRT / the GPU:
//   - getPluginRegistry() returns null (registration itself needs libnvinfer), getInferLibVersion()
//     the headers' version, getLogger() a logger that keeps what it is told (TensorRT's global
//     logger, where plugin errors go until TensorRT hands over a logger finder);
//   - maskrt::roialign::launch_multilevel_roi_align runs the CUDA kernel's block code on the CPU
//     (maskrt_roi_align_host from roi_align_host.cpp, "kernel emulation"), so enqueue() can be given
//     host pointers and its output compared with the reference loops.
// Prints "OK <n> checks" and exits 0, or prints each failed check and exits 1.
#include <NvInferRuntime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "roi_align_kernel.h"
#include "roi_align_params.h"
#include "trt_standins.h"

using namespace nvinfer1;

extern "C" {
nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
bool initMaskrtPlugins(void* logger);
int maskrt_roi_align_host(const float* rois, int batch, int num_rois, const void* const* features,
                          const int* heights, const int* widths, int num_levels, int channels,
                          int dtype, int output_size, int sampling_ratio, int aligned,
                          int canonical_scale, int canonical_level, int first_level, void* output,
                          int mode, int64_t target_blocks, int nthreads);

nvinfer1::IPluginRegistry* getPluginRegistry() noexcept { return nullptr; }
int32_t getInferLibVersion() noexcept { return NV_TENSORRT_VERSION; }
}

namespace {
Logger g_global_logger;
}  // namespace

extern "C" nvinfer1::ILogger* getLogger() noexcept { return &g_global_logger; }

namespace {

// --- the launcher stand-in: the kernel's block code on the CPU -------------------------------
maskrt::roialign::MultiLevelRoiAlignParams g_last_params{};
int g_launches = 0;

}  // namespace

namespace maskrt {
namespace roialign {
cudaError_t launch_multilevel_roi_align(const MultiLevelRoiAlignParams& p, cudaStream_t) {
  g_last_params = p;
  ++g_launches;
  const int rc = maskrt_roi_align_host(p.rois, p.batch, p.num_rois, p.features, p.heights, p.widths,
                                       p.num_levels, p.channels, static_cast<int>(p.dtype), p.output_size,
                                       p.sampling_ratio, p.aligned, p.canonical_scale, p.canonical_level,
                                       p.first_level, p.output, /*mode=*/1, /*target_blocks=*/1056, 256);
  return rc == 0 ? cudaSuccess : cudaErrorInvalidValue;
}
}  // namespace roialign
}  // namespace maskrt

namespace {

Fields onnx_fields(int32_t output_size, int32_t sampling_ratio, int32_t aligned) {
  return Fields({{"output_size", output_size}, {"sampling_ratio", sampling_ratio}, {"aligned", aligned},
                 {"canonical_scale", 224}, {"canonical_level", 4}, {"first_level", 2}});
}

uint16_t to_half_bits(float f) {  // round-to-nearest-even float -> IEEE half (normal range)
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffffu;
  if (exp <= 0) return static_cast<uint16_t>(sign);  // tiny values flush to zero (not used here)
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(h);
}

float from_half_bits(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const int32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    x = sign;  // zero (no subnormals here)
  } else {
    x = sign | (static_cast<uint32_t>(exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// --- checks ----------------------------------------------------------------------------------

IPluginCreatorV3One* the_creator() {
  int32_t n = -1;
  IPluginCreatorInterface* const* creators = getCreators(n);
  CHECK(n == 1);
  CHECK(creators != nullptr && creators[0] != nullptr);
  CHECK(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
  CHECK(creators[0]->getInterfaceInfo().major == 1);
  return static_cast<IPluginCreatorV3One*>(creators[0]);
}

void check_creator(IPluginCreatorV3One* creator) {
  CHECK(std::strcmp(creator->getPluginName(), "MaskrtMultiLevelRoIAlign") == 0);
  CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
  CHECK(std::strcmp(creator->getPluginNamespace(), "") == 0);
  const PluginFieldCollection* names = creator->getFieldNames();
  CHECK(names != nullptr && names->nbFields == 6);
  const char* expected[] = {"output_size", "sampling_ratio", "aligned", "canonical_scale", "canonical_level",
                            "first_level"};
  for (int i = 0; i < 6 && names && i < names->nbFields; ++i) {
    CHECK(std::strcmp(names->fields[i].name, expected[i]) == 0);
    CHECK(names->fields[i].type == PluginFieldType::kINT32);
  }
  // bad values are refused (nullptr), not crashed on
  Fields bad_size({{"output_size", 0}});
  CHECK(creator->createPlugin("bad", &bad_size.fc, TensorRTPhase::kBUILD) == nullptr);
  Fields bad_aligned({{"aligned", 2}});
  CHECK(creator->createPlugin("bad", &bad_aligned.fc, TensorRTPhase::kBUILD) == nullptr);
  Fields bad_ratio({{"sampling_ratio", -1}});
  CHECK(creator->createPlugin("bad", &bad_ratio.fc, TensorRTPhase::kBUILD) == nullptr);
  float f = 7.0F;
  PluginField float_field("output_size", &f, PluginFieldType::kFLOAT32, 1);
  PluginFieldCollection float_fc{1, &float_field};
  CHECK(creator->createPlugin("bad", &float_fc, TensorRTPhase::kBUILD) == nullptr);
  // int64 fields (a Python caller's numpy default) are accepted
  int64_t wide = 14;
  PluginField wide_field("output_size", &wide, PluginFieldType::kINT64, 1);
  PluginFieldCollection wide_fc{1, &wide_field};
  IPluginV3* w = creator->createPlugin("wide", &wide_fc, TensorRTPhase::kBUILD);
  CHECK(w != nullptr);
  if (w) {
    auto c = caps(w);
    CHECK(field_value(c.runtime->getFieldsToSerialize(), "output_size") == 14);
    delete w;
  }
  // no fields: torchvision's defaults
  PluginFieldCollection empty{0, nullptr};
  IPluginV3* d = creator->createPlugin("defaults", &empty, TensorRTPhase::kBUILD);
  CHECK(d != nullptr);
  if (d) {
    const PluginFieldCollection* fc = caps(d).runtime->getFieldsToSerialize();
    CHECK(field_value(fc, "output_size") == 7);
    CHECK(field_value(fc, "sampling_ratio") == 2);
    CHECK(field_value(fc, "aligned") == 0);
    CHECK(field_value(fc, "canonical_scale") == 224);
    CHECK(field_value(fc, "canonical_level") == 4);
    CHECK(field_value(fc, "first_level") == 2);
    CHECK(field_value(fc, "num_levels") == -12345);  // unknown until configured
    delete d;
  }
}

void check_build_capability(IPluginCreatorV3One* creator) {
  Fields f = onnx_fields(7, 2, 1);
  std::unique_ptr<IPluginV3> plugin(creator->createPlugin("roi", &f.fc, TensorRTPhase::kBUILD));
  CHECK(plugin != nullptr);
  if (!plugin) return;
  Caps c = caps(plugin.get());
  CHECK(c.core && c.build && c.runtime);
  if (!(c.core && c.build && c.runtime)) return;
  CHECK(std::strcmp(c.core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0);
  CHECK(std::strcmp(c.build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
  CHECK(std::strcmp(c.runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
  CHECK(std::strcmp(c.core->getPluginName(), "MaskrtMultiLevelRoIAlign") == 0);
  CHECK(std::strcmp(c.core->getPluginVersion(), "1") == 0);
  CHECK(std::strcmp(c.core->getPluginNamespace(), "") == 0);
  CHECK(c.build->getNbOutputs() == 1);
  CHECK(c.build->getWorkspaceSize(nullptr, 5, nullptr, 1) == 0);
  CHECK(c.build->getTimingCacheID() != nullptr && std::strstr(c.build->getTimingCacheID(), "aligned=1") != nullptr);

  // output types follow the features
  DataType out{};
  DataType half_in[] = {DataType::kFLOAT, DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF};
  CHECK(c.build->getOutputDataTypes(&out, 1, half_in, 5) == 0 && out == DataType::kHALF);
  DataType float_in[] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT};
  CHECK(c.build->getOutputDataTypes(&out, 1, float_in, 3) == 0 && out == DataType::kFLOAT);
  DataType int_in[] = {DataType::kFLOAT, DataType::kINT32};
  CHECK(c.build->getOutputDataTypes(&out, 1, int_in, 2) != 0);
  CHECK(c.build->getOutputDataTypes(&out, 1, half_in, 1) != 0);  // no feature map
  CHECK(c.build->getOutputDataTypes(&out, 2, half_in, 5) != 0);  // two outputs

  // formats: linear only; rois float32; every feature and the output share the first map's type
  std::vector<DynamicPluginTensorDesc> io = {
      dynamic(tensor({2, 100, 4}, DataType::kFLOAT)),         dynamic(tensor({2, 256, 80, 80}, DataType::kHALF)),
      dynamic(tensor({2, 256, 40, 40}, DataType::kHALF)),     dynamic(tensor({2, 256, 20, 20}, DataType::kHALF)),
      dynamic(tensor({2, 256, 10, 10}, DataType::kHALF)),     dynamic(tensor({2, 100, 256, 7, 7}, DataType::kHALF))};
  for (int pos = 0; pos < 6; ++pos) CHECK(c.build->supportsFormatCombination(pos, io.data(), 5, 1));
  io[0].desc.type = DataType::kHALF;
  CHECK(!c.build->supportsFormatCombination(0, io.data(), 5, 1));
  io[0].desc.type = DataType::kFLOAT;
  io[0].desc.format = TensorFormat::kCHW32;
  CHECK(!c.build->supportsFormatCombination(0, io.data(), 5, 1));
  io[0].desc.format = TensorFormat::kLINEAR;
  io[3].desc.type = DataType::kFLOAT;  // a map of another type than the first
  CHECK(!c.build->supportsFormatCombination(3, io.data(), 5, 1));
  io[3].desc.type = DataType::kHALF;
  io[2].desc.format = TensorFormat::kHWC8;
  CHECK(!c.build->supportsFormatCombination(2, io.data(), 5, 1));
  io[2].desc.format = TensorFormat::kLINEAR;
  io[5].desc.type = DataType::kFLOAT;  // output type != features
  CHECK(!c.build->supportsFormatCombination(5, io.data(), 5, 1));
  io[5].desc.type = DataType::kHALF;
  io[1].desc.type = DataType::kINT8;
  CHECK(!c.build->supportsFormatCombination(1, io.data(), 5, 1));
  io[1].desc.type = DataType::kFLOAT;
  for (int pos = 2; pos < 6; ++pos) io[pos].desc.type = DataType::kFLOAT;
  for (int pos = 0; pos < 6; ++pos) CHECK(c.build->supportsFormatCombination(pos, io.data(), 5, 1));
  CHECK(!c.build->supportsFormatCombination(6, io.data(), 5, 1));  // out of range
  CHECK(!c.build->supportsFormatCombination(0, io.data(), 1, 1));  // no feature input

  // shapes: [B, R, C, P, P] through the expression builder
  ExprBuilder builder;
  IExprBuilder& eb = builder;
  DimsExprs in[5];
  in[0].nbDims = 3;
  in[0].d[0] = eb.constant(2);
  in[0].d[1] = eb.constant(1000);
  in[0].d[2] = eb.constant(4);
  const int64_t sizes[] = {336, 168, 84, 42};
  for (int l = 0; l < 4; ++l) {
    in[1 + l].nbDims = 4;
    in[1 + l].d[0] = eb.constant(2);
    in[1 + l].d[1] = eb.constant(256);
    in[1 + l].d[2] = eb.constant(sizes[l]);
    in[1 + l].d[3] = eb.constant(sizes[l]);
  }
  DimsExprs outs[1];
  CHECK(c.build->getOutputShapes(in, 5, nullptr, 0, outs, 1, eb) == 0);
  CHECK(outs[0].nbDims == 5);
  CHECK(outs[0].d[0] == in[0].d[0] && outs[0].d[1] == in[0].d[1] && outs[0].d[2] == in[1].d[1]);
  CHECK(outs[0].d[3]->isConstant() && outs[0].d[3]->getConstantValue() == 7);
  CHECK(outs[0].d[4]->isConstant() && outs[0].d[4]->getConstantValue() == 7);
  in[2].nbDims = 3;
  CHECK(c.build->getOutputShapes(in, 5, nullptr, 0, outs, 1, eb) != 0);

  // configure: dynamic (-1) dims pass, inconsistent known dims fail
  std::vector<DynamicPluginTensorDesc> cfg = {
      dynamic(tensor({-1, 1000, 4}, DataType::kFLOAT)), dynamic(tensor({-1, 256, 336, 336}, DataType::kHALF)),
      dynamic(tensor({-1, 256, 168, 168}, DataType::kHALF)), dynamic(tensor({-1, 256, 84, 84}, DataType::kHALF)),
      dynamic(tensor({-1, 256, 42, 42}, DataType::kHALF))};
  DynamicPluginTensorDesc cfg_out = dynamic(tensor({-1, 1000, 256, 7, 7}, DataType::kHALF));
  CHECK(c.build->configurePlugin(cfg.data(), 5, &cfg_out, 1) == 0);
  cfg[3].desc.dims.d[1] = 128;
  CHECK(c.build->configurePlugin(cfg.data(), 5, &cfg_out, 1) != 0);
  cfg[3].desc.dims.d[1] = 256;
  cfg[0].desc.dims.d[2] = 5;
  CHECK(c.build->configurePlugin(cfg.data(), 5, &cfg_out, 1) != 0);
  cfg[0].desc.dims.d[2] = 4;
  CHECK(c.build->configurePlugin(cfg.data(), 5, &cfg_out, 1) == 0);

  // after configuration the serialized fields carry the number of maps; the runtime phase
  // rebuilds an identical plugin from them (there is no deserializePlugin in V3)
  const PluginFieldCollection* ser = c.runtime->getFieldsToSerialize();
  CHECK(ser != nullptr && ser->nbFields == 7);
  CHECK(field_value(ser, "num_levels") == 4);
  CHECK(field_value(ser, "aligned") == 1);
  std::unique_ptr<IPluginV3> runtime(creator->createPlugin("roi", ser, TensorRTPhase::kRUNTIME));
  CHECK(runtime != nullptr);
  if (runtime) {
    const PluginFieldCollection* again = caps(runtime.get()).runtime->getFieldsToSerialize();
    CHECK(again->nbFields == ser->nbFields);
    for (int32_t i = 0; i < ser->nbFields && i < again->nbFields; ++i) {
      CHECK(std::strcmp(ser->fields[i].name, again->fields[i].name) == 0);
      CHECK(field_value(again, ser->fields[i].name) == field_value(ser, ser->fields[i].name));
    }
  }

  // clone / attachToContext: independent copies with the same fields
  std::unique_ptr<IPluginV3> copy(plugin->clone());
  CHECK(copy != nullptr && copy.get() != plugin.get());
  if (copy) CHECK(field_value(caps(copy.get()).runtime->getFieldsToSerialize(), "num_levels") == 4);
  std::unique_ptr<IPluginV3> attached(c.runtime->attachToContext(nullptr));
  CHECK(attached != nullptr && attached.get() != plugin.get());
  if (attached) CHECK(field_value(caps(attached.get()).runtime->getFieldsToSerialize(), "output_size") == 7);
}

// enqueue against the reference, float32 or float16, on a plugin created the way `how` says
enum class Origin { kOnnxWithShapeChange, kRuntimeFromSerialized, kOnnxWithoutShapeChange };

void check_enqueue(IPluginCreatorV3One* creator, bool half, Origin how) {
  const int B = 2, R = 37, C = 5, P = 7, L = 4;
  const int hs[L] = {20, 10, 5, 3}, ws[L] = {24, 12, 6, 3};
  std::mt19937 rng(123);
  std::uniform_real_distribution<float> value(-2.0F, 2.0F), pos(-20.0F, 100.0F), size(0.0F, 120.0F);
  std::vector<float> rois(B * R * 4);
  for (int i = 0; i < B * R; ++i) {
    const float x = pos(rng), y = pos(rng);
    rois[i * 4 + 0] = x;
    rois[i * 4 + 1] = y;
    rois[i * 4 + 2] = x + size(rng);
    rois[i * 4 + 3] = y + size(rng);
  }
  std::vector<std::vector<float>> feats32(L);
  std::vector<std::vector<uint16_t>> feats16(L);
  for (int l = 0; l < L; ++l) {
    feats32[l].resize(static_cast<size_t>(B) * C * hs[l] * ws[l]);
    feats16[l].resize(feats32[l].size());
    for (size_t i = 0; i < feats32[l].size(); ++i) {
      feats16[l][i] = to_half_bits(value(rng));
      feats32[l][i] = half ? from_half_bits(feats16[l][i]) : value(rng);
    }
  }
  const size_t n_out = static_cast<size_t>(B) * R * C * P * P;
  std::vector<float> expected(n_out);
  const void* ref_feats[L];
  for (int l = 0; l < L; ++l) ref_feats[l] = feats32[l].data();
  CHECK(maskrt_roi_align_host(rois.data(), B, R, ref_feats, hs, ws, L, C, 0, P, 0, 1, 224, 4, 2, expected.data(),
                              0, 1, 1) == 0);

  Fields f = onnx_fields(P, 0, 1);
  std::unique_ptr<IPluginV3> plugin(creator->createPlugin("roi", &f.fc, TensorRTPhase::kBUILD));
  if (how == Origin::kRuntimeFromSerialized && plugin) {
    // a build-phase plugin configured by the builder, serialized, recreated for the runtime
    std::vector<DynamicPluginTensorDesc> cfg = {dynamic(tensor({-1, R, 4}, DataType::kFLOAT))};
    for (int l = 0; l < L; ++l) cfg.push_back(dynamic(tensor({-1, C, hs[l], ws[l]}, DataType::kFLOAT)));
    DynamicPluginTensorDesc cfg_out = dynamic(tensor({-1, R, C, P, P}, DataType::kFLOAT));
    CHECK(caps(plugin.get()).build->configurePlugin(cfg.data(), L + 1, &cfg_out, 1) == 0);
    plugin.reset(creator->createPlugin("roi", caps(plugin.get()).runtime->getFieldsToSerialize(),
                                       TensorRTPhase::kRUNTIME));
  }
  CHECK(plugin != nullptr);
  if (!plugin) return;
  IPluginV3OneRuntime* rt = caps(plugin.get()).runtime;

  const DataType type = half ? DataType::kHALF : DataType::kFLOAT;
  std::vector<PluginTensorDesc> in = {tensor({B, R, 4}, DataType::kFLOAT)};
  for (int l = 0; l < L; ++l) in.push_back(tensor({B, C, hs[l], ws[l]}, type));
  PluginTensorDesc out = tensor({B, R, C, P, P}, type);
  if (how == Origin::kOnnxWithShapeChange) {
    CHECK(rt->onShapeChange(in.data(), L + 1, &out, 1) == 0);
    PluginTensorDesc wrong = tensor({B, R, C, P + 1, P}, type);
    CHECK(rt->onShapeChange(in.data(), L + 1, &wrong, 1) != 0);
    CHECK(rt->onShapeChange(in.data(), L + 1, &out, 1) == 0);
  }
  std::vector<const void*> inputs = {rois.data()};
  for (int l = 0; l < L; ++l) inputs.push_back(half ? static_cast<const void*>(feats16[l].data()) : feats32[l].data());
  std::vector<float> got32(n_out, NAN);
  std::vector<uint16_t> got16(n_out, 0x7e00);
  void* outputs[] = {half ? static_cast<void*>(got16.data()) : got32.data()};
  const int launches = g_launches;
  const int32_t rc = rt->enqueue(in.data(), &out, inputs.data(), outputs, nullptr, nullptr);
  if (how == Origin::kOnnxWithoutShapeChange) {
    CHECK(rc != 0);  // the number of maps is unknown: refused, nothing launched
    CHECK(g_launches == launches);
    return;
  }
  CHECK(rc == 0);
  CHECK(g_launches == launches + 1);
  CHECK(g_last_params.num_levels == L && g_last_params.batch == B && g_last_params.num_rois == R);
  CHECK(g_last_params.channels == C && g_last_params.output_size == P && g_last_params.sampling_ratio == 0);
  CHECK(g_last_params.aligned == 1 && g_last_params.first_level == 2 && g_last_params.canonical_scale == 224);
  CHECK(g_last_params.heights[3] == hs[3] && g_last_params.widths[0] == ws[0]);
  double worst = 0.0;
  for (size_t i = 0; i < n_out; ++i) {
    const float g = half ? from_half_bits(got16[i]) : got32[i];
    const double tol = half ? 1e-5 + std::fabs(expected[i]) * std::ldexp(1.0, -11) : 1e-6;
    const double err = std::fabs(static_cast<double>(g) - expected[i]);
    if (!(err <= tol)) worst = std::max(worst, std::isnan(err) ? 1e30 : err);
  }
  CHECK(worst == 0.0);

  // bad runtime shapes are refused before launching
  std::vector<PluginTensorDesc> bad = in;
  bad[2].dims.d[1] = C + 1;
  CHECK(rt->enqueue(bad.data(), &out, inputs.data(), outputs, nullptr, nullptr) != 0);
  bad = in;
  bad[0].type = DataType::kHALF;
  CHECK(rt->enqueue(bad.data(), &out, inputs.data(), outputs, nullptr, nullptr) != 0);
  CHECK(g_launches == launches + 1);
}

}  // namespace

int main() {
  IPluginCreatorV3One* creator = the_creator();
  if (creator == nullptr) {
    std::printf("no creator\n");
    return 1;
  }
  check_creator(creator);
  check_build_capability(creator);
  for (bool half : {false, true}) {
    check_enqueue(creator, half, Origin::kOnnxWithShapeChange);
    check_enqueue(creator, half, Origin::kRuntimeFromSerialized);
  }
  check_enqueue(creator, false, Origin::kOnnxWithoutShapeChange);
  // plugin errors so far went to TensorRT's global logger (no logger finder yet)
  CHECK(g_global_logger.said("MaskrtMultiLevelRoIAlign: bad: output_size must be in 1..256"));
  CHECK(g_global_logger.said("bad: field 'output_size' must be an integer scalar"));
  CHECK(g_global_logger.said("enqueue before the number of inputs is known"));
  // with a logger finder (loadLibrary's), to the finder's logger and nowhere else
  Logger engine_logger;
  Finder finder(&engine_logger);
  setLoggerFinder(&finder);
  g_global_logger.messages.clear();
  Fields bad({{"aligned", 2}});
  CHECK(creator->createPlugin("found", &bad.fc, TensorRTPhase::kBUILD) == nullptr);
  CHECK(engine_logger.said("found: aligned must be 0 or 1") && g_global_logger.messages.empty());
  setLoggerFinder(nullptr);
  CHECK(!initMaskrtPlugins(nullptr));  // no registry in this harness: refused, not crashed
  if (g_failures == 0) {
    std::printf("OK %d checks\n", g_checks);
    return 0;
  }
  std::printf("%d of %d checks failed\n", g_failures, g_checks);
  return 1;
}
