// TensorRT 10 plugin "MaskrtMultiLevelRoIAlign" (version "1", namespace ""): an IPluginV3 with the
// core, build and runtime capabilities (IPluginV3OneCore / IPluginV3OneBuild / IPluginV3OneRuntime)
// and its IPluginCreatorV3One. The kernel is in roi_align_kernel.cu; this file only adapts it.
//
// Inputs:  0 rois float32 [B, R, 4]; 1..L features [B, C, H_l, W_l], float32 or float16 (one type).
// Output:  [B, R, C, output_size, output_size], the features' type.
// Fields:  output_size, sampling_ratio, aligned, canonical_scale, canonical_level, first_level
//          (int32 scalars; see plugins/roi_align/README.md).
//
// Registration (plugins/README.md, "Loading"):
//   - IPluginRegistry::loadLibrary / trt.get_plugin_registry().load_library / trtexec
//     --dynamicPlugins: TensorRT calls the exported getCreators() (and setLoggerFinder()).
//   - ctypes preload (maskrt.plugins.load()): the loader calls the exported
//     initMaskrtPlugins(logger), which registers the creator with getPluginRegistry() unless a creator
//     of this name and version is already there. No static initializer registers anything, so the two
//     paths never collide (loadLibrary refuses a library whose creators are already registered).
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "roi_align_kernel.h"
#include "roi_align_params.h"

#if defined(_WIN32)
#define MASKRT_EXPORT __declspec(dllexport)
#else
#define MASKRT_EXPORT __attribute__((visibility("default")))
#endif

namespace maskrt {
namespace trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IExprBuilder;
using nvinfer1::ILogger;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginCreatorInterface;
using nvinfer1::IPluginCreatorV3One;
using nvinfer1::IPluginResourceContext;
using nvinfer1::IPluginV3;
using nvinfer1::IPluginV3OneBuild;
using nvinfer1::IPluginV3OneCore;
using nvinfer1::IPluginV3OneRuntime;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;
using nvinfer1::TensorRTPhase;
using roialign::MultiLevelRoiAlignParams;

constexpr char kPluginName[] = "MaskrtMultiLevelRoIAlign";
constexpr char kPluginVersion[] = "1";
constexpr int32_t kMaxLevels = 8;  // roialign::kMaxLevels

// ---------------------------------------------------------------------------------------------
// Logging: through TensorRT's logger, never our own stream. Which one: the ILogger handed to
// initMaskrtPlugins, else the one TensorRT's logger finder gives (loadLibrary calls setLoggerFinder),
// else libnvinfer's global logger (getLogger(), TensorRT's logger outside a builder's or runtime's
// calls; what a library loaded by maskrt.plugins.load() has there). stderr only where TensorRT gives
// none of them (TensorRT 11.4's lean library without a GPU has no global logger).

nvinfer1::ILoggerFinder* g_logger_finder = nullptr;
ILogger* g_logger = nullptr;

ILogger* tensorrt_logger() noexcept {
  if (g_logger != nullptr) return g_logger;
  if (g_logger_finder != nullptr) {
    if (ILogger* found = g_logger_finder->findLogger()) return found;
  }
  return getLogger();
}

void log(ILogger::Severity severity, const std::string& message) noexcept {
  try {
    const std::string text = std::string(kPluginName) + ": " + message;
    if (ILogger* logger = tensorrt_logger()) {
      logger->log(severity, text.c_str());
    } else if (severity <= ILogger::Severity::kWARNING) {
      std::fprintf(stderr, "[maskrt] %s\n", text.c_str());
    }
  } catch (...) {
  }
}

void log_error(const std::string& message) noexcept { log(ILogger::Severity::kERROR, message); }

// ---------------------------------------------------------------------------------------------
// Attributes (= plugin fields, = ONNX node attributes).

struct Attributes {
  int32_t output_size = 7;
  int32_t sampling_ratio = 2;
  int32_t aligned = 0;
  int32_t canonical_scale = 224;
  int32_t canonical_level = 4;
  int32_t first_level = 2;
};

struct FieldSlot {
  const char* name;
  int32_t Attributes::*member;
};

constexpr FieldSlot kFields[] = {
    {"output_size", &Attributes::output_size},
    {"sampling_ratio", &Attributes::sampling_ratio},
    {"aligned", &Attributes::aligned},
    {"canonical_scale", &Attributes::canonical_scale},
    {"canonical_level", &Attributes::canonical_level},
    {"first_level", &Attributes::first_level},
};
constexpr int32_t kNumFields = static_cast<int32_t>(sizeof(kFields) / sizeof(kFields[0]));

// Empty when the attributes are usable, else what is wrong.
std::string check_attributes(const Attributes& a) {
  if (a.output_size < 1 || a.output_size > 256) return "output_size must be in 1..256";
  if (a.sampling_ratio < 0) return "sampling_ratio must be >= 0 (0: adaptive)";
  if (a.aligned != 0 && a.aligned != 1) return "aligned must be 0 or 1";
  if (a.canonical_scale < 1) return "canonical_scale must be >= 1";
  if (a.first_level < 0 || a.first_level > 30) return "first_level must be in 0..30";
  return {};
}

// Reads one integer field whatever integer type the producer used (the ONNX parser passes kINT32;
// Python users may pass other widths). False for a non-integer or empty field.
bool read_int_field(const PluginField& field, int32_t* value) {
  if (field.data == nullptr || field.length < 1) return false;
  switch (field.type) {
    case PluginFieldType::kINT32: *value = *static_cast<const int32_t*>(field.data); return true;
    case PluginFieldType::kINT64: {
      const int64_t v = *static_cast<const int64_t*>(field.data);
      if (v < INT32_MIN || v > INT32_MAX) return false;
      *value = static_cast<int32_t>(v);
      return true;
    }
    case PluginFieldType::kINT16: *value = *static_cast<const int16_t*>(field.data); return true;
    case PluginFieldType::kINT8: *value = *static_cast<const int8_t*>(field.data); return true;
    default: return false;
  }
}

// Name of the one serialized field that is not an attribute: the number of feature maps, which
// enqueue() cannot see (it gets no input count). Not in getFieldNames(), so no ONNX attribute of
// this name reaches the plugin; only engines carry it.
constexpr char kNumLevelsField[] = "num_levels";

// Attributes from a field collection (missing fields keep their defaults), and the serialized
// number of levels (0 when absent). Empty string on success.
std::string parse_fields(const PluginFieldCollection* fc, Attributes* out, int32_t* num_levels) {
  Attributes a;
  int32_t levels = 0;
  if (fc != nullptr) {
    if (fc->nbFields > 0 && fc->fields == nullptr) return "null field array";
    for (int32_t i = 0; i < fc->nbFields; ++i) {
      const PluginField& field = fc->fields[i];
      if (field.name == nullptr) continue;
      bool known = false;
      if (std::strcmp(field.name, kNumLevelsField) == 0) {
        known = true;
        if (!read_int_field(field, &levels) || levels < 1 || levels > kMaxLevels) {
          return "field 'num_levels' must be an integer in 1..8";
        }
      }
      for (const FieldSlot& slot : kFields) {
        if (std::strcmp(field.name, slot.name) == 0) {
          known = true;
          if (!read_int_field(field, &(a.*slot.member))) {
            return std::string("field '") + slot.name + "' must be an integer scalar";
          }
        }
      }
      if (!known) {
        log(ILogger::Severity::kWARNING, std::string("ignoring unknown field '") + field.name + "'");
      }
    }
  }
  std::string problem = check_attributes(a);
  if (problem.empty()) {
    *out = a;
    *num_levels = levels;
  }
  return problem;
}

std::string describe(const Attributes& a) {
  std::ostringstream s;
  s << "output_size=" << a.output_size << ",sampling_ratio=" << a.sampling_ratio
    << ",aligned=" << a.aligned << ",canonical_scale=" << a.canonical_scale
    << ",canonical_level=" << a.canonical_level << ",first_level=" << a.first_level;
  return s.str();
}

bool is_feature_type(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF; }

// ---------------------------------------------------------------------------------------------

class MultiLevelRoiAlignPlugin final : public IPluginV3,
                                      public IPluginV3OneCore,
                                      public IPluginV3OneBuild,
                                      public IPluginV3OneRuntime {
 public:
  MultiLevelRoiAlignPlugin(const Attributes& attributes, int32_t num_levels, std::string plugin_namespace)
      : attrs_(attributes),
        namespace_(std::move(plugin_namespace)),
        metadata_(describe(attributes)),
        num_levels_(num_levels) {}

  MultiLevelRoiAlignPlugin(const MultiLevelRoiAlignPlugin& other)
      : attrs_(other.attrs_), namespace_(other.namespace_), metadata_(other.metadata_), num_levels_(other.num_levels_) {}
  MultiLevelRoiAlignPlugin& operator=(const MultiLevelRoiAlignPlugin&) = delete;
  ~MultiLevelRoiAlignPlugin() override = default;

  // IPluginV3 --------------------------------------------------------------------------------

  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }

  IPluginV3* clone() noexcept override {
    try {
      return new MultiLevelRoiAlignPlugin(*this);
    } catch (const std::exception& e) {
      log_error(std::string("clone failed: ") + e.what());
    }
    return nullptr;
  }

  // IPluginV3OneCore -------------------------------------------------------------------------

  const char* getPluginName() const noexcept override { return kPluginName; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return namespace_.c_str(); }

  // IPluginV3OneBuild ------------------------------------------------------------------------

  int32_t getNbOutputs() const noexcept override { return 1; }

  int32_t configurePlugin(const DynamicPluginTensorDesc* in, int32_t nbInputs,
                          const DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept override {
    if (in == nullptr || out == nullptr || !io_counts_ok(nbInputs, nbOutputs)) return 1;
    num_levels_ = nbInputs - 1;
    // Build-time dims may hold -1 (dynamic); check what is known.
    const auto& rois = in[0].desc.dims;
    if (rois.nbDims != 3 || (rois.d[2] != -1 && rois.d[2] != 4)) {
      log_error("input 0 (rois) must be [B, R, 4]");
      return 1;
    }
    int64_t channels = -1;
    for (int32_t i = 1; i < nbInputs; ++i) {
      const auto& f = in[i].desc.dims;
      if (f.nbDims != 4) {
        log_error("feature inputs must be 4-D [B, C, H, W]");
        return 1;
      }
      if (f.d[1] != -1) {
        if (channels != -1 && f.d[1] != channels) {
          log_error("all feature maps must have the same number of channels");
          return 1;
        }
        channels = f.d[1];
      }
      if (f.d[0] != -1 && rois.d[0] != -1 && f.d[0] != rois.d[0]) {
        log_error("feature maps and rois must have the same batch size");
        return 1;
      }
    }
    return 0;
  }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (outputTypes == nullptr || inputTypes == nullptr || !io_counts_ok(nbInputs, nbOutputs)) return 1;
    if (!is_feature_type(inputTypes[1])) {
      log_error("features must be float32 or float16");
      return 1;
    }
    outputTypes[0] = inputTypes[1];
    return 0;
  }

  int32_t getOutputShapes(const DimsExprs* inputs, int32_t nbInputs, const DimsExprs* /*shapeInputs*/,
                          int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& exprBuilder) noexcept override {
    if (inputs == nullptr || outputs == nullptr || !io_counts_ok(nbInputs, nbOutputs)) return 1;
    if (inputs[0].nbDims != 3) {
      log_error("input 0 (rois) must be [B, R, 4]");
      return 1;
    }
    for (int32_t i = 1; i < nbInputs; ++i) {
      if (inputs[i].nbDims != 4) {
        log_error("feature inputs must be 4-D [B, C, H, W]");
        return 1;
      }
    }
    num_levels_ = nbInputs - 1;
    const nvinfer1::IDimensionExpr* pooled = exprBuilder.constant(attrs_.output_size);
    if (pooled == nullptr) return 1;
    outputs[0].nbDims = 5;
    outputs[0].d[0] = inputs[0].d[0];  // B
    outputs[0].d[1] = inputs[0].d[1];  // R
    outputs[0].d[2] = inputs[1].d[1];  // C
    outputs[0].d[3] = pooled;
    outputs[0].d[4] = pooled;
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (inOut == nullptr || !io_counts_ok(nbInputs, nbOutputs) || pos < 0 || pos >= nbInputs + nbOutputs) {
      return false;
    }
    const PluginTensorDesc& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return desc.type == DataType::kFLOAT;  // box coordinates keep full precision
    if (pos == 1) return is_feature_type(desc.type);
    return desc.type == inOut[1].desc.type;  // every other map and the output: the first map's type
  }

  size_t getWorkspaceSize(const DynamicPluginTensorDesc* /*inputs*/, int32_t /*nbInputs*/,
                          const DynamicPluginTensorDesc* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override {
    return 0;
  }

  // The attributes decide the kernel's behaviour beyond the I/O shapes and formats, so they make the
  // timing-cache key (TensorRT adds the shapes and formats itself).
  const char* getTimingCacheID() noexcept override { return metadata_.c_str(); }
  const char* getMetadataString() noexcept override { return metadata_.c_str(); }

  // IPluginV3OneRuntime ----------------------------------------------------------------------

  int32_t onShapeChange(const PluginTensorDesc* in, int32_t nbInputs, const PluginTensorDesc* out,
                        int32_t nbOutputs) noexcept override {
    if (in == nullptr || out == nullptr || !io_counts_ok(nbInputs, nbOutputs)) return 1;
    num_levels_ = nbInputs - 1;
    MultiLevelRoiAlignParams p{};
    std::string problem = make_params(in, nbInputs, nullptr, nullptr, &p);
    if (problem.empty()) {
      const auto& o = out[0].dims;
      if (o.nbDims != 5 || o.d[0] != p.batch || o.d[1] != p.num_rois || o.d[2] != p.channels ||
          o.d[3] != attrs_.output_size || o.d[4] != attrs_.output_size) {
        problem = "the output must be [B, R, C, output_size, output_size]";
      } else if (out[0].type != in[1].type) {
        problem = "the output type must be the features' type";
      }
    }
    if (!problem.empty()) {
      log_error(problem);
      return 1;
    }
    return 0;
  }

  int32_t enqueue(const PluginTensorDesc* inputDesc, const PluginTensorDesc* outputDesc,
                  const void* const* inputs, void* const* outputs, void* /*workspace*/,
                  cudaStream_t stream) noexcept override {
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr) return 1;
    if (num_levels_ < 1) {
      log_error("enqueue before the number of inputs is known (no onShapeChange, no serialized num_levels)");
      return 1;
    }
    MultiLevelRoiAlignParams p{};
    const std::string problem = make_params(inputDesc, 1 + num_levels_, inputs, outputs[0], &p);
    if (!problem.empty()) {
      log_error(problem);
      return 1;
    }
    const cudaError_t status = roialign::launch_multilevel_roi_align(p, stream);
    if (status != cudaSuccess) {
      log_error(std::string("kernel launch failed: ") + cudaGetErrorString(status));
      return 1;
    }
    return 0;
  }

  IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

  const PluginFieldCollection* getFieldsToSerialize() noexcept override {
    serialized_.clear();
    for (const FieldSlot& slot : kFields) {
      serialized_.emplace_back(slot.name, &(attrs_.*slot.member), PluginFieldType::kINT32, 1);
    }
    if (num_levels_ > 0) {
      serialized_.emplace_back(kNumLevelsField, &num_levels_, PluginFieldType::kINT32, 1);
    }
    serialized_fc_.nbFields = static_cast<int32_t>(serialized_.size());
    serialized_fc_.fields = serialized_.data();
    return &serialized_fc_;
  }

 private:
  static bool io_counts_ok(int32_t nbInputs, int32_t nbOutputs) {
    if (nbOutputs != 1 || nbInputs < 2 || nbInputs > 1 + kMaxLevels) {
      log_error("expects 1 rois input, 1 to 8 feature inputs and 1 output");
      return false;
    }
    return true;
  }

  // Fills `p` from runtime tensor descriptions (all dims concrete). inputs / output may be null (a
  // shape-only check). Empty string on success.
  std::string make_params(const PluginTensorDesc* in, int32_t nbInputs, const void* const* inputs,
                          void* output, MultiLevelRoiAlignParams* p) const {
    if (nbInputs < 2 || nbInputs > 1 + kMaxLevels) {
      return "expects 1 rois input and 1 to 8 feature inputs";
    }
    const auto& rois = in[0].dims;
    if (rois.nbDims != 3 || rois.d[2] != 4) return "input 0 (rois) must be [B, R, 4]";
    if (in[0].type != DataType::kFLOAT) return "rois must be float32";
    if (!is_feature_type(in[1].type)) return "features must be float32 or float16";
    p->rois = inputs ? static_cast<const float*>(inputs[0]) : nullptr;
    p->num_levels = nbInputs - 1;
    if (rois.d[0] < 0 || rois.d[1] < 0 || rois.d[0] > INT32_MAX || rois.d[1] > INT32_MAX) {
      return "bad rois shape";
    }
    p->batch = static_cast<int32_t>(rois.d[0]);
    p->num_rois = static_cast<int32_t>(rois.d[1]);
    p->channels = -1;
    for (int32_t i = 1; i < nbInputs; ++i) {
      const auto& f = in[i].dims;
      if (f.nbDims != 4) return "feature inputs must be 4-D [B, C, H, W]";
      if (in[i].type != in[1].type) return "all feature maps must have the same type";
      if (in[i].format != TensorFormat::kLINEAR) return "feature maps must be linear (NCHW)";
      if (f.d[0] != rois.d[0]) return "feature maps and rois must have the same batch size";
      if (f.d[1] < 0 || f.d[1] > INT32_MAX || f.d[2] < 1 || f.d[2] > INT32_MAX || f.d[3] < 1 || f.d[3] > INT32_MAX) {
        return "bad feature map shape";
      }
      if (p->channels != -1 && f.d[1] != p->channels) return "all feature maps must have the same channels";
      p->channels = static_cast<int32_t>(f.d[1]);
      p->features[i - 1] = inputs ? inputs[i] : nullptr;
      p->heights[i - 1] = static_cast<int32_t>(f.d[2]);
      p->widths[i - 1] = static_cast<int32_t>(f.d[3]);
    }
    p->output_size = attrs_.output_size;
    p->sampling_ratio = attrs_.sampling_ratio;
    p->aligned = attrs_.aligned;
    p->canonical_scale = attrs_.canonical_scale;
    p->canonical_level = attrs_.canonical_level;
    p->first_level = attrs_.first_level;
    p->dtype = in[1].type == DataType::kHALF ? roialign::DType::kFloat16 : roialign::DType::kFloat32;
    p->output = output;
    if (inputs != nullptr) {
      const char* problem = roialign::check_params(*p);
      if (problem != nullptr) return problem;
    }
    return {};
  }

  Attributes attrs_;
  std::string namespace_;
  std::string metadata_;
  // Feature maps per call: learnt from configurePlugin / getOutputShapes (build), onShapeChange
  // (runtime) or the serialized "num_levels" field; 0 while unknown. enqueue() needs it.
  int32_t num_levels_ = 0;
  std::vector<PluginField> serialized_;
  PluginFieldCollection serialized_fc_{};
};

// ---------------------------------------------------------------------------------------------

class MultiLevelRoiAlignCreator final : public IPluginCreatorV3One {
 public:
  MultiLevelRoiAlignCreator() {
    for (const FieldSlot& slot : kFields) {
      field_names_.emplace_back(slot.name, nullptr, PluginFieldType::kINT32, 1);
    }
    fc_.nbFields = static_cast<int32_t>(field_names_.size());
    fc_.fields = field_names_.data();
  }

  IPluginV3* createPlugin(const char* name, const PluginFieldCollection* fc, TensorRTPhase phase) noexcept override {
    try {
      Attributes attrs;
      int32_t num_levels = 0;
      const std::string problem = parse_fields(fc, &attrs, &num_levels);
      if (!problem.empty()) {
        log_error(std::string(name ? name : "<unnamed>") + ": " + problem);
        return nullptr;
      }
      (void)phase;  // the same object serves both phases (it has all three capabilities)
      return new MultiLevelRoiAlignPlugin(attrs, num_levels, namespace_);
    } catch (const std::exception& e) {
      log_error(std::string("createPlugin failed: ") + e.what());
    }
    return nullptr;
  }

  const PluginFieldCollection* getFieldNames() noexcept override { return &fc_; }
  const char* getPluginName() const noexcept override { return kPluginName; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return namespace_.c_str(); }

 private:
  std::vector<PluginField> field_names_;
  PluginFieldCollection fc_{};
  std::string namespace_;  // "" (the contract's namespace)
};

// TensorRT's C++ interfaces (the vtables of IPluginRegistry, ILogger, the plugin classes) differ
// between major versions, so a library built with one major's headers must never talk to another
// major's libnvinfer: true when getInferLibVersion() has this build's major, else says why on
// stderr (TensorRT's logger is one of those interfaces).
bool library_major_matches() noexcept {
  const int32_t version = getInferLibVersion();
  const int32_t major = version / 10000;
  if (major == NV_TENSORRT_MAJOR) return true;
  std::fprintf(stderr,
               "[maskrt] %s: this plugin library was built against TensorRT %d headers but the "
               "process's libnvinfer is TensorRT %d (getInferLibVersion() = %d); rebuild it against "
               "this TensorRT (plugins/README.md, Building)\n",
               kPluginName, NV_TENSORRT_MAJOR, major, version);
  return false;
}

MultiLevelRoiAlignCreator& creator() {
  static MultiLevelRoiAlignCreator instance;
  return instance;
}

}  // namespace
}  // namespace trt
}  // namespace maskrt

extern "C" {

// Dynamic loading entry point (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, plugin
// libraries serialized into version-compatible engines).
// No creator for a libnvinfer of another major (loadLibrary then reports the library as empty).
MASKRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  if (!maskrt::trt::library_major_matches()) {
    nbCreators = 0;
    return nullptr;
  }
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&maskrt::trt::creator()};
  nbCreators = 1;
  return creators;
}

// Dynamic loading entry point: the logger TensorRT wants plugins to use.
MASKRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  if (!maskrt::trt::library_major_matches()) return;
  maskrt::trt::g_logger_finder = finder;
}

// Explicit registration for a library loaded by dlopen/ctypes (maskrt.plugins.load()), like
// initLibNvInferPlugins: registers the creator with the global registry (namespace "") unless a
// creator of this name and version is registered already. `logger` is an nvinfer1::ILogger* or null.
// False, touching nothing of TensorRT, when libnvinfer's major is not this build's.
MASKRT_EXPORT bool initMaskrtPlugins(void* logger) {
  if (!maskrt::trt::library_major_matches()) return false;
  if (logger != nullptr) {
    maskrt::trt::g_logger = static_cast<nvinfer1::ILogger*>(logger);
  }
  nvinfer1::IPluginRegistry* registry = getPluginRegistry();
  if (registry == nullptr) {
    maskrt::trt::log_error("getPluginRegistry() returned null");
    return false;
  }
  if (registry->getCreator(maskrt::trt::kPluginName, maskrt::trt::kPluginVersion, "") != nullptr) {
    return true;
  }
  if (!registry->registerCreator(maskrt::trt::creator(), "")) {
    maskrt::trt::log_error("registering the plugin creator failed");
    return false;
  }
  return true;
}

}  // extern "C"
