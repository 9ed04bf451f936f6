// Arguments of one multi-level RoIAlign call. Plain C++ (no CUDA, no TensorRT) so that the kernel,
// the TensorRT plugin, the PyTorch binding and the host reference all share it.
#pragma once

#include <cstdint>

namespace maskrt {
namespace roialign {

enum class DType : int32_t {
  kFloat32 = 0,
  kFloat16 = 1,
};

// rois:     float32 [batch, num_rois, 4], x1 y1 x2 y2 in canvas pixels; RoIs of image b use
//           features[l][b].
// features: num_levels maps [batch, channels, heights[l], widths[l]], contiguous (NCHW), all of
//           `dtype`; map l is FPN level first_level + l with spatial scale 2^-(first_level + l).
// output:   [batch, num_rois, channels, output_size, output_size] of `dtype`, contiguous.
struct MultiLevelRoiAlignParams {
  const float* rois;
  const void* features[8];  // kMaxLevels (roi_align_math.cuh)
  int32_t heights[8];
  int32_t widths[8];
  int32_t num_levels;
  int32_t batch;
  int32_t num_rois;
  int32_t channels;
  int32_t output_size;
  int32_t sampling_ratio;  // samples per bin side; 0: adaptive ceil(roi_size / output_size)
  int32_t aligned;         // 0/1, torchvision's roi_align(aligned=...)
  int32_t canonical_scale;
  int32_t canonical_level;
  int32_t first_level;
  DType dtype;
  void* output;
};

// nullptr when `p` describes a call the kernel supports, else what is wrong with it.
inline const char* check_params(const MultiLevelRoiAlignParams& p) {
  if (p.num_levels < 1 || p.num_levels > 8) return "the number of feature maps must be 1..8";
  if (p.batch < 0 || p.num_rois < 0 || p.channels < 0) return "negative batch, RoI or channel count";
  if (static_cast<int64_t>(p.batch) * p.num_rois > 2147483647LL) return "batch * num_rois exceeds 2^31 - 1";
  if (p.output_size < 1 || p.output_size > 256) return "output_size must be 1..256";
  if (p.sampling_ratio < 0) return "sampling_ratio must be >= 0";
  if (p.aligned != 0 && p.aligned != 1) return "aligned must be 0 or 1";
  if (p.canonical_scale < 1) return "canonical_scale must be >= 1";
  if (p.first_level < 0 || p.first_level > 30) return "first_level must be 0..30";
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16) return "features must be float32 or float16";
  for (int l = 0; l < p.num_levels; ++l) {
    if (p.heights[l] < 1 || p.widths[l] < 1) return "a feature map is empty";
    if (static_cast<int64_t>(p.heights[l]) * p.widths[l] > 2147483647LL) return "a feature map has more than 2^31 - 1 pixels";
  }
  const bool work = static_cast<int64_t>(p.batch) * p.num_rois * p.channels > 0;
  if (work) {
    if (p.rois == nullptr || p.output == nullptr) return "null rois or output";
    for (int l = 0; l < p.num_levels; ++l) {
      if (p.features[l] == nullptr) return "null feature map";
    }
  }
  return nullptr;
}

}  // namespace roialign
}  // namespace maskrt
