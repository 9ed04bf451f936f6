// Stand-ins for what TensorRT hands a plugin at build and run time, for the host-only plugin checks
// (trt_plugin_check.cpp, trt_loader_check.cpp): an IExprBuilder of constants (TensorRT's own has no
// public constructor), tensor descriptions, int32 field collections (what the ONNX parser makes of
// INT attributes), the plugin's capability interfaces, a logger that keeps what it is told (and
// its finder), and a CHECK that counts failures.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace nvinfer1;

// Checks count and report instead of aborting, so one run lists every failure.
int g_checks = 0;
int g_failures = 0;

#define CHECK(cond)                                                              \
  do {                                                                           \
    ++g_checks;                                                                  \
    if (!(cond)) {                                                               \
      ++g_failures;                                                              \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);              \
    }                                                                            \
  } while (0)


// --- a logger that keeps warnings and errors, and a logger finder that hands it out --------------
class Logger final : public ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) messages.emplace_back(msg);
  }
  bool said(const char* text) const {
    for (const auto& m : messages) {
      if (m.find(text) != std::string::npos) return true;
    }
    return false;
  }
  void print(const char* who) const {
    for (const auto& m : messages) std::printf("%s log: %s\n", who, m.c_str());
  }
  std::vector<std::string> messages;
};

class Finder final : public ILoggerFinder {
 public:
  explicit Finder(ILogger* logger) : logger_(logger) {}
  ILogger* findLogger() override { return logger_; }

 private:
  ILogger* logger_;
};

// --- a stand-in IExprBuilder (TensorRT's has no public constructor) --------------------------
class ConstExprImpl final : public apiv::VDimensionExpr {
 public:
  explicit ConstExprImpl(int64_t v) : value_(v) {}
  bool isConstant() const override { return true; }
  int64_t getConstantValue() const override { return value_; }
  bool isSizeTensor() const override { return false; }

 private:
  int64_t value_;
};

class ConstExpr final : public IDimensionExpr {
 public:
  explicit ConstExpr(int64_t v) : impl_(v) { mImpl = &impl_; }
  ~ConstExpr() noexcept override = default;

 private:
  ConstExprImpl impl_;
};

class ExprBuilderImpl final : public apiv::VExprBuilder {
 public:
  const IDimensionExpr* constant(int64_t value) override {
    exprs_.push_back(std::make_unique<ConstExpr>(value));
    return exprs_.back().get();
  }
  const IDimensionExpr* operation(DimensionOperation, const IDimensionExpr&, const IDimensionExpr&) override {
    return nullptr;
  }
  const IDimensionExpr* declareSizeTensor(int32_t, const IDimensionExpr&, const IDimensionExpr&) override {
    return nullptr;
  }

 private:
  std::vector<std::unique_ptr<ConstExpr>> exprs_;
};

class ExprBuilder final : public IExprBuilder {
 public:
  ExprBuilder() { mImpl = &impl_; }
  ~ExprBuilder() noexcept override = default;

 private:
  ExprBuilderImpl impl_;
};

// --- helpers ---------------------------------------------------------------------------------
PluginTensorDesc tensor(std::vector<int64_t> dims, DataType type, TensorFormat format = TensorFormat::kLINEAR) {
  PluginTensorDesc d{};
  d.dims.nbDims = static_cast<int32_t>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) d.dims.d[i] = dims[i];
  d.type = type;
  d.format = format;
  d.scale = -1.0F;
  return d;
}

DynamicPluginTensorDesc dynamic(const PluginTensorDesc& d) {
  DynamicPluginTensorDesc out{};
  out.desc = d;
  out.min = out.max = out.opt = d.dims;
  return out;
}

struct Fields {
  std::vector<int32_t> values;
  std::vector<PluginField> fields;
  PluginFieldCollection fc{};
  Fields(std::vector<std::pair<const char*, int32_t>> named) {
    values.reserve(named.size());
    for (auto& [name, v] : named) values.push_back(v);
    for (size_t i = 0; i < named.size(); ++i) {
      fields.emplace_back(named[i].first, &values[i], PluginFieldType::kINT32, 1);
    }
    fc.nbFields = static_cast<int32_t>(fields.size());
    fc.fields = fields.data();
  }
};

[[maybe_unused]] int32_t field_value(const PluginFieldCollection* fc, const char* name) {
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    if (std::strcmp(fc->fields[i].name, name) == 0 && fc->fields[i].type == PluginFieldType::kINT32) {
      return *static_cast<const int32_t*>(fc->fields[i].data);
    }
  }
  return -12345;
}

struct Caps {
  IPluginV3OneCore* core;
  IPluginV3OneBuild* build;
  IPluginV3OneRuntime* runtime;
};

Caps caps(IPluginV3* p) {
  return {static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE)),
          static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD)),
          static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME))};
}

}  // namespace
