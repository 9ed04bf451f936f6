// A stand-in libnvinfer.so.<major> for building and loading the plugin library without TensorRT:
// the few symbols the plugin links against (getPluginRegistry, getInferLibVersion, getLogger) and a
// plugin registry that keeps what is registered, compiled against one TensorRT version's headers.
// getLogger() (TensorRT's global logger) returns what standinSetLogger() last set, null before.
// STANDIN_VERSION (default: the headers' NV_TENSORRT_VERSION) is what getInferLibVersion() reports,
// so a test can pretend to be another major's library. Built by tests/tensorrt_toolchain.py.
#include <NvInferRuntime.h>

#include <cstring>
#include <vector>

#ifndef STANDIN_VERSION
#define STANDIN_VERSION NV_TENSORRT_VERSION
#endif

namespace {

using namespace nvinfer1;

class Registry final : public IPluginRegistry {
 public:
  bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override {
    if (find(creator_name(creator), creator_version(creator), ns) != nullptr) return false;
    creators_.push_back({&creator, ns ? ns : ""});
    list_.push_back(&creator);
    return true;
  }
  IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
    *n = static_cast<int32_t>(list_.size());
    return list_.data();
  }
  IPluginCreatorInterface* getCreator(AsciiChar const* const name, AsciiChar const* const version,
                                      AsciiChar const* const ns) noexcept override {
    return find(name, version, ns);
  }
  bool deregisterCreator(IPluginCreatorInterface const&) noexcept override { return false; }
  IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
    return getAllCreators(n);
  }
  void setErrorRecorder(IErrorRecorder* const) noexcept override {}
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
  bool isParentSearchEnabled() const override { return false; }
  void setParentSearchEnabled(bool const) override {}
  PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
  void deregisterLibrary(PluginLibraryHandle) noexcept override {}
  IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
  int32_t releasePluginResource(AsciiChar const*) noexcept override { return -1; }
#if NV_TENSORRT_MAJOR < 11
  bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
  IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override {
    *n = 0;
    return nullptr;
  }
  IPluginCreator* getPluginCreator(AsciiChar const*, AsciiChar const*, AsciiChar const*) noexcept override {
    return nullptr;
  }
  bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#endif

 private:
  struct Entry {
    IPluginCreatorInterface* creator;
    const char* ns;
  };
  static const char* creator_name(IPluginCreatorInterface& c) {
    return static_cast<IPluginCreatorV3One&>(c).getPluginName();
  }
  static const char* creator_version(IPluginCreatorInterface& c) {
    return static_cast<IPluginCreatorV3One&>(c).getPluginVersion();
  }
  IPluginCreatorInterface* find(const char* name, const char* version, const char* ns) const {
    for (const Entry& e : creators_) {
      if (std::strcmp(creator_name(*e.creator), name) == 0 && std::strcmp(creator_version(*e.creator), version) == 0 &&
          std::strcmp(e.ns, ns ? ns : "") == 0) {
        return e.creator;
      }
    }
    return nullptr;
  }
  std::vector<Entry> creators_;
  std::vector<IPluginCreatorInterface*> list_;
};

}  // namespace

extern "C" {
__attribute__((visibility("default"))) nvinfer1::IPluginRegistry* getPluginRegistry() noexcept {
  static Registry registry;
  return &registry;
}
__attribute__((visibility("default"))) int32_t getInferLibVersion() noexcept { return STANDIN_VERSION; }
static nvinfer1::ILogger* g_global_logger = nullptr;
__attribute__((visibility("default"))) nvinfer1::ILogger* getLogger() noexcept { return g_global_logger; }
__attribute__((visibility("default"))) void standinSetLogger(nvinfer1::ILogger* logger) noexcept {
  g_global_logger = logger;
}
}
