// PyTorch binding of the multi-level RoIAlign CUDA kernel (the same kernel the TensorRT plugin
// launches) and of the grouped NMS kernel (plugins/nms), built on demand by
// maskrt.plugins.torch_ext with torch.utils.cpp_extension. No TensorRT header here.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <vector>

#include "grouped_nms.h"
#include "roi_align_kernel.h"
#include "roi_align_params.h"

namespace {

at::Tensor multilevel_roi_align(const at::Tensor& rois, const std::vector<at::Tensor>& features,
                                   int64_t output_size, int64_t sampling_ratio, bool aligned,
                                   int64_t canonical_scale, int64_t canonical_level, int64_t first_level) {
  using maskrt::roialign::DType;
  TORCH_CHECK(rois.is_cuda(), "rois must be a CUDA tensor");
  TORCH_CHECK(rois.dim() == 3 && rois.size(2) == 4, "rois must be [B, R, 4], got ", rois.sizes());
  TORCH_CHECK(rois.scalar_type() == at::kFloat, "rois must be float32");
  TORCH_CHECK(!features.empty() && features.size() <= 8, "expects 1 to 8 feature maps, got ", features.size());
  const auto dtype = features[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf, "features must be float32 or float16");
  const int64_t batch = rois.size(0);
  const int64_t channels = features[0].dim() == 4 ? features[0].size(1) : -1;
  for (const auto& f : features) {
    TORCH_CHECK(f.device() == rois.device(), "features and rois must be on the same device");
    TORCH_CHECK(f.dim() == 4, "feature maps must be [B, C, H, W], got ", f.sizes());
    TORCH_CHECK(f.scalar_type() == dtype, "all feature maps must have the same dtype");
    TORCH_CHECK(f.size(0) == batch, "feature maps and rois must have the same batch size");
    TORCH_CHECK(f.size(1) == channels, "all feature maps must have the same channels");
  }
  TORCH_CHECK(batch * rois.size(1) <= INT32_MAX && channels <= INT32_MAX, "too many RoIs or channels");

  const c10::cuda::CUDAGuard guard(rois.device());
  const at::Tensor rois_c = rois.contiguous();
  std::vector<at::Tensor> feats_c;
  feats_c.reserve(features.size());
  for (const auto& f : features) feats_c.push_back(f.contiguous());
  at::Tensor out = at::empty({batch, rois.size(1), channels, output_size, output_size}, features[0].options());

  maskrt::roialign::MultiLevelRoiAlignParams p{};
  p.rois = rois_c.data_ptr<float>();
  p.num_levels = static_cast<int32_t>(feats_c.size());
  for (size_t l = 0; l < feats_c.size(); ++l) {
    p.features[l] = feats_c[l].data_ptr();
    TORCH_CHECK(feats_c[l].size(2) <= INT32_MAX && feats_c[l].size(3) <= INT32_MAX, "feature map too large");
    p.heights[l] = static_cast<int32_t>(feats_c[l].size(2));
    p.widths[l] = static_cast<int32_t>(feats_c[l].size(3));
  }
  p.batch = static_cast<int32_t>(batch);
  p.num_rois = static_cast<int32_t>(rois.size(1));
  p.channels = static_cast<int32_t>(channels);
  p.output_size = static_cast<int32_t>(output_size);
  p.sampling_ratio = static_cast<int32_t>(sampling_ratio);
  p.aligned = aligned ? 1 : 0;
  p.canonical_scale = static_cast<int32_t>(canonical_scale);
  p.canonical_level = static_cast<int32_t>(canonical_level);
  p.first_level = static_cast<int32_t>(first_level);
  p.dtype = dtype == at::kHalf ? DType::kFloat16 : DType::kFloat32;
  p.output = out.data_ptr();
  const char* problem = maskrt::roialign::check_params(p);
  TORCH_CHECK(problem == nullptr, "multilevel_roi_align: ", problem ? problem : "");
  const cudaError_t status = maskrt::roialign::launch_multilevel_roi_align(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(status == cudaSuccess, "multilevel_roi_align launch failed: ", cudaGetErrorString(status));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "maskrt CUDA kernels: multi-level RoIAlign (the TensorRT plugin's kernel), grouped NMS";
  m.def("multilevel_roi_align", &multilevel_roi_align, "Multi-level RoIAlign, one launch for all levels",
        pybind11::arg("rois"), pybind11::arg("features"), pybind11::arg("output_size"),
        pybind11::arg("sampling_ratio"), pybind11::arg("aligned"), pybind11::arg("canonical_scale") = 224,
        pybind11::arg("canonical_level") = 4, pybind11::arg("first_level") = 2);
  m.def("grouped_nms_keep", &grouped_nms_keep,
        "Grouped NMS without a host sync: bool [G, N] of the boxes kept, no per-group limit",
        pybind11::arg("boxes"), pybind11::arg("scores"), pybind11::arg("iou_threshold"),
        pybind11::arg("score_threshold"));
}
