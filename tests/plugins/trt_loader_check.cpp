// Loads the BUILT plugin library (CMake output) the way TensorRT does and drives it without a GPU.
// Linked against a libnvinfer.so.<major>, which is either
//   - the stand-in (libnvinfer_standin.cpp; tests/test_plugin_build.py): loadLibrary's steps done
//     here (dlopen, getCreators() twice, setLoggerFinder()), then maskrt.plugins.load()'s
//     initMaskrtPlugins() twice, which registers the creator once with the stand-in registry; or
//   - TensorRT's own library (the lean runtime's libnvinfer_lean under that name;
//     tests/test_plugin_registry.py): the real IPluginRegistry::loadLibrary loads the plugin and
//     the creator is taken from the real registry.
//
//   trt_loader_check <libmaskrt_plugins.so> <cases file> [gpu]
//
// Per line of the cases file, `<float32|float16> <levels> <field>=<int> ...` (a plugin node of a
// freshly exported tensorrt-target ONNX: its INT attributes as the parser passes them, int32
// fields), what the builder and the runtime do: createPlugin(kBUILD), every capability interface,
// output types and shapes, formats, configurePlugin, getFieldsToSerialize, createPlugin(kRUNTIME)
// from those fields, clone, attachToContext, onShapeChange, and (without `gpu`) enqueue, which must
// fail cleanly. With the stand-in, plugin errors must reach TensorRT's logger: libnvinfer's global
// one (getLogger()) before a logger finder is set, the finder's after, never stderr.
// Prints "OK <n> checks, <whose> registry, libnvinfer <version>" and exits 0, or each failed check
// and exits 1.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "trt_standins.h"

namespace {

using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
using SetLoggerFinder = void (*)(ILoggerFinder*);
using InitPlugins = bool (*)(void*);

struct Case {
  DataType features;
  int32_t levels;
  std::vector<std::pair<std::string, int32_t>> fields;
};

std::vector<Case> read_cases(const char* path) {
  std::vector<Case> cases;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string type;
    Case c{};
    if (!(words >> type >> c.levels)) continue;
    c.features = type == "float16" ? DataType::kHALF : DataType::kFLOAT;
    std::string field;
    while (words >> field) {
      const auto eq = field.find('=');
      c.fields.emplace_back(field.substr(0, eq), std::stoi(field.substr(eq + 1)));
    }
    cases.push_back(c);
  }
  return cases;
}

// enqueue() is called on host memory only where there is no GPU (it must then fail cleanly); on a
// GPU the kernel would run on those pointers, so it is left to trt_enqueue_check.cpp.
void run_case(IPluginCreatorV3One* creator, const Case& c, bool gpu) {
  std::vector<std::pair<const char*, int32_t>> named;
  for (const auto& [name, value] : c.fields) named.emplace_back(name.c_str(), value);
  Fields onnx(named);
  IPluginV3* built = creator->createPlugin("node", &onnx.fc, TensorRTPhase::kBUILD);
  CHECK(built != nullptr);
  if (built == nullptr) return;
  const Caps b = caps(built);
  CHECK(b.core && b.build && b.runtime);
  const int32_t size = field_value(&onnx.fc, "output_size");
  const int32_t nb_in = 1 + c.levels;
  const int64_t B = 2, R = 5, C = 8;

  std::vector<DataType> in_types(static_cast<size_t>(nb_in), c.features);
  in_types[0] = DataType::kFLOAT;
  DataType out_type{};
  CHECK(b.build->getOutputDataTypes(&out_type, 1, in_types.data(), nb_in) == 0 && out_type == c.features);

  ExprBuilder exprs;
  std::vector<DimsExprs> in_exprs(static_cast<size_t>(nb_in));
  in_exprs[0].nbDims = 3;
  in_exprs[0].d[0] = exprs.constant(B);
  in_exprs[0].d[1] = exprs.constant(R);
  in_exprs[0].d[2] = exprs.constant(4);
  for (int32_t l = 1; l < nb_in; ++l) {
    in_exprs[static_cast<size_t>(l)].nbDims = 4;
    for (int32_t k = 0; k < 4; ++k) in_exprs[static_cast<size_t>(l)].d[k] = exprs.constant(k == 1 ? C : (k == 0 ? B : 64 >> l));
  }
  DimsExprs out_exprs{};
  CHECK(b.build->getOutputShapes(in_exprs.data(), nb_in, nullptr, 0, &out_exprs, 1, exprs) == 0);
  CHECK(out_exprs.nbDims == 5 && out_exprs.d[3]->getConstantValue() == size);

  std::vector<PluginTensorDesc> descs;
  descs.push_back(tensor({B, R, 4}, DataType::kFLOAT));
  for (int32_t l = 1; l < nb_in; ++l) descs.push_back(tensor({B, C, 64 >> l, 64 >> l}, c.features));
  const PluginTensorDesc out_desc = tensor({B, R, C, size, size}, c.features);
  std::vector<DynamicPluginTensorDesc> io;
  for (const auto& d : descs) io.push_back(dynamic(d));
  io.push_back(dynamic(out_desc));
  for (int32_t pos = 0; pos <= nb_in; ++pos) {
    CHECK(b.build->supportsFormatCombination(pos, io.data(), nb_in, 1));
  }
  CHECK(b.build->configurePlugin(io.data(), nb_in, &io.back(), 1) == 0);

  // the engine keeps getFieldsToSerialize(); deserialization re-creates the plugin from a copy
  const PluginFieldCollection* saved = b.runtime->getFieldsToSerialize();
  CHECK(saved != nullptr && field_value(saved, "num_levels") == c.levels);
  for (const auto& [name, value] : c.fields) CHECK(field_value(saved, name.c_str()) == value);
  std::vector<int32_t> values;
  std::vector<PluginField> copied;
  values.reserve(static_cast<size_t>(saved->nbFields));
  for (int32_t i = 0; i < saved->nbFields; ++i) values.push_back(*static_cast<const int32_t*>(saved->fields[i].data));
  for (int32_t i = 0; i < saved->nbFields; ++i) {
    copied.emplace_back(saved->fields[i].name, &values[static_cast<size_t>(i)], PluginFieldType::kINT32, 1);
  }
  const PluginFieldCollection copy{static_cast<int32_t>(copied.size()), copied.data()};
  const int32_t saved_count = saved->nbFields;
  delete built;

  IPluginV3* runtime = creator->createPlugin("node", &copy, TensorRTPhase::kRUNTIME);
  CHECK(runtime != nullptr);
  if (runtime == nullptr) return;
  IPluginV3* cloned = runtime->clone();  // what the builder and each execution context do
  CHECK(cloned != nullptr && cloned != runtime);
  if (cloned != nullptr) {
    const PluginFieldCollection* again = caps(cloned).runtime->getFieldsToSerialize();
    CHECK(again != nullptr && again->nbFields == saved_count && field_value(again, "num_levels") == c.levels);
    for (const auto& [name, value] : c.fields) CHECK(field_value(again, name.c_str()) == value);
    CHECK(std::strcmp(caps(cloned).core->getPluginName(), "MaskrtMultiLevelRoIAlign") == 0);
    delete cloned;
  }
  IPluginV3* attached = caps(runtime).runtime->attachToContext(nullptr);
  CHECK(attached != nullptr);
  if (attached != nullptr) {
    const Caps r = caps(attached);
    CHECK(r.runtime->onShapeChange(descs.data(), nb_in, &out_desc, 1) == 0);
    std::vector<float> rois(static_cast<size_t>(B * R * 4), 1.0F);
    std::vector<float> feature(static_cast<size_t>(B * C * 32 * 32), 0.0F);
    std::vector<const void*> inputs(static_cast<size_t>(nb_in), feature.data());
    inputs[0] = rois.data();
    std::vector<float> output(static_cast<size_t>(B * R * C * size * size));
    void* outputs[] = {output.data()};
    // no GPU: the launcher's device queries fail and enqueue reports it instead of crashing
    if (!gpu) CHECK(r.runtime->enqueue(descs.data(), &out_desc, inputs.data(), outputs, nullptr, nullptr) != 0);
    delete attached;
  }
  delete runtime;
}

// A plugin with a bad field: the creator refuses it and says why through TensorRT's logger.
void refuse_bad_field(IPluginCreatorV3One* creator) {
  Fields bad({{"output_size", 0}});
  CHECK(creator->createPlugin("bad_node", &bad.fc, TensorRTPhase::kBUILD) == nullptr);
}

// The stand-in: loadLibrary's steps by hand, then maskrt.plugins.load()'s registration.
IPluginCreatorV3One* load_by_hand(void* lib, IPluginRegistry* registry, Logger& logger, Logger& global) {
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto set_logger_finder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  auto init = reinterpret_cast<InitPlugins>(dlsym(lib, "initMaskrtPlugins"));
  CHECK(get_creators && set_logger_finder && init);
  if (!get_creators || !set_logger_finder || !init) return nullptr;
  int32_t n = -1, again = -1;
  IPluginCreatorInterface* const* creators = get_creators(n);
  IPluginCreatorInterface* const* second = get_creators(again);
  CHECK(n == 1 && again == 1 && creators != nullptr && second != nullptr && creators[0] == second[0]);
  if (n != 1 || creators == nullptr) return nullptr;
  const InterfaceInfo info = creators[0]->getInterfaceInfo();
  CHECK(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1);
  auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);

  // no logger finder (a library preloaded by maskrt.plugins.load()): libnvinfer's global logger
  refuse_bad_field(creator);
  CHECK(global.said("bad_node: output_size must be in 1..256"));
  Finder finder(&logger);
  set_logger_finder(&finder);  // loadLibrary's: from now on the finder's logger
  global.messages.clear();
  refuse_bad_field(creator);
  CHECK(logger.said("bad_node: output_size must be in 1..256") && global.messages.empty());

  CHECK(init(&logger) && init(nullptr));  // twice: registered once, the second call a no-op
  int32_t registered = 0;
  registry->getAllCreators(&registered);
  CHECK(registered == 1 && registry->getCreator("MaskrtMultiLevelRoIAlign", "1", "") == creators[0]);
  return creator;
}

// TensorRT's own registry: its loadLibrary, then maskrt.plugins.load()'s registration on top.
// (Where the plugin's messages go is checked with the stand-in: TensorRT's global logger is a
// runtime's, and a runtime needs a GPU; without one the plugin falls back to stderr.)
IPluginCreatorV3One* load_with_tensorrt(const char* path, IPluginRegistry* registry) {
  CHECK(registry->loadLibrary(path) != nullptr);
  IPluginCreatorInterface* found = registry->getCreator("MaskrtMultiLevelRoIAlign", "1", "");
  CHECK(found != nullptr);
  if (found == nullptr) return nullptr;
  const InterfaceInfo info = found->getInterfaceInfo();
  CHECK(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1);
  auto* creator = static_cast<IPluginCreatorV3One*>(found);
  refuse_bad_field(creator);
  void* lib = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);  // loadLibrary's copy
  auto init = lib ? reinterpret_cast<InitPlugins>(dlsym(lib, "initMaskrtPlugins")) : nullptr;
  CHECK(init != nullptr && init(nullptr));  // already registered: a no-op, not a second creator
  int32_t all = 0, ours = 0;
  IPluginCreatorInterface* const* creators = registry->getAllCreators(&all);
  for (int32_t i = 0; i < all; ++i) ours += creators[i] == found ? 1 : 0;
  CHECK(ours == 1);
  return creator;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4 || (argc == 4 && std::strcmp(argv[3], "gpu") != 0)) {
    std::fprintf(stderr, "usage: %s <libmaskrt_plugins.so> <cases file> [gpu]\n", argv[0]);
    return 2;
  }
  const bool gpu = argc == 4;
  using SetGlobalLogger = void (*)(ILogger*);
  auto set_global_logger = reinterpret_cast<SetGlobalLogger>(dlsym(RTLD_DEFAULT, "standinSetLogger"));
  IPluginRegistry* registry = getPluginRegistry();
  CHECK(registry != nullptr);
  if (registry == nullptr) return 1;
  Logger logger, global;
  IPluginCreatorV3One* creator = nullptr;
  if (set_global_logger != nullptr) {
    set_global_logger(&global);
    void* lib = dlopen(argv[1], RTLD_LAZY | RTLD_LOCAL);
    if (lib == nullptr) {
      std::printf("FAILED dlopen: %s\n", dlerror());
      return 1;
    }
    CHECK(dlsym(lib, "getPluginCreators") == nullptr);  // the deprecated V2 entry point is not offered
    creator = load_by_hand(lib, registry, logger, global);
  } else {
    creator = load_with_tensorrt(argv[1], registry);
  }
  if (creator == nullptr) {
    std::printf("FAILED: no creator\n");
    logger.print("tensorrt");
    return 1;
  }
  CHECK(std::strcmp(creator->getPluginName(), "MaskrtMultiLevelRoIAlign") == 0);
  CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0 && std::strcmp(creator->getPluginNamespace(), "") == 0);

  const std::vector<Case> cases = read_cases(argv[2]);
  CHECK(!cases.empty());
  for (const Case& c : cases) run_case(creator, c, gpu);
  if (set_global_logger != nullptr && !gpu) {
    CHECK(logger.said("kernel launch failed"));  // enqueue's failure went to TensorRT's logger
  }
  CHECK(!logger.said("ignoring unknown field"));

  if (g_failures == 0) {
    std::printf("OK %d checks, %s registry, libnvinfer %d\n", g_checks,
                set_global_logger != nullptr ? "the stand-in's" : "TensorRT's", getInferLibVersion());
    return 0;
  }
  std::printf("%d of %d checks failed\n", g_failures, g_checks);
  logger.print("tensorrt");
  global.print("global");
  return 1;
}
