// Per-sample arithmetic of multi-level RoIAlign, shared by the CUDA kernel, the host reference and
// the host emulation of the kernel (tests compile this header for the CPU).
//
// Every function reproduces torchvision's float32 arithmetic operation for operation (same
// operands, same order), so that results match torchvision.ops.roi_align / MultiScaleRoIAlign:
//   - level_index:  torchvision.ops.poolers.LevelMapper
//   - roi_geometry: the prologue of torchvision's roi_align_forward_kernel_impl
//   - sample_coord: the sample position inside a bin
//   - axis_sample:  bilinear_interpolate, split per axis (the boundary rules only look at one axis
//                   at a time, and the four weights are products of per-axis factors)
//   - bilinear:     the four-tap weighted sum
//
// This header has no CUDA or TensorRT dependency: compiled by nvcc the functions are
// __host__ __device__; compiled by a plain C++ compiler they are ordinary inline functions.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define MASKRT_HD __host__ __device__ __forceinline__
#else
#define MASKRT_HD inline
#endif

namespace maskrt {
namespace roialign {

// Most feature maps one op accepts (FPN uses 4 or 5).
constexpr int kMaxLevels = 8;

// Upper bound of the adaptive sampling grid (sampling_ratio == 0) per bin side. torchvision has no
// bound; this one is only reached by a RoI more than 512 * output_size feature pixels long on its
// level (e.g. > 114,000 canvas pixels at P5 for output 7), never by boxes inside an image. It keeps
// the int conversion defined and the work per bin finite for absurd inputs.
constexpr int kMaxAdaptiveGrid = 512;

// 0-based index of the feature map (FPN level - first_level) that torchvision's LevelMapper picks:
//   k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6), clamped to
//   [first_level, first_level + num_levels - 1], area = (x2 - x1) * (y2 - y1) in canvas pixels,
// evaluated in float32 exactly as torch does (sqrt, divide, log2, add, add eps, floor, clamp).
//
// Returns -1 when the level is undefined (the area is NaN: a box with exactly one negative side, or
// NaN coordinates). torchvision's float->int64 cast of NaN matches no level there, so such a RoI
// keeps the zeros its output starts with; callers write zeros for -1.
// With a single feature map torchvision skips the mapper entirely, and so does this (always 0).
MASKRT_HD int level_index(float x1, float y1, float x2, float y2, int canonical_scale,
                          int canonical_level, int first_level, int num_levels) {
  if (num_levels <= 1) {
    return 0;
  }
  const float area = (x2 - x1) * (y2 - y1);
  const float s = sqrtf(area);
  const float lvl = static_cast<float>(canonical_level) + log2f(s / static_cast<float>(canonical_scale));
  float k = floorf(lvl + 1e-6f);
  if (k != k) {  // NaN
    return -1;
  }
  const float k_min = static_cast<float>(first_level);
  const float k_max = static_cast<float>(first_level + num_levels - 1);
  k = k < k_min ? k_min : (k > k_max ? k_max : k);  // also maps -inf (empty box) to k_min
  return static_cast<int>(k) - first_level;
}

// Spatial scale of feature map `index`: 2^-(first_level + index), exact in float.
MASKRT_HD float level_scale(int first_level, int index) {
  return ldexpf(1.0f, -(first_level + index));
}

// Where the bins of one RoI lie on its feature map.
struct RoiGeometry {
  float start_h;  // top of the RoI, feature pixels (after the aligned offset)
  float start_w;  // left of the RoI
  float bin_h;    // bin height, feature pixels
  float bin_w;    // bin width
  int grid_h;     // samples per bin along y (sampling_ratio, or adaptive); may be 0
  int grid_w;     // samples per bin along x
  float count;    // divisor of the sum: max(grid_h * grid_w, 1)
};

// ceil(v) as the adaptive grid size; <= 0 and NaN give 0 (torchvision: the sample loops do not run
// for a non-positive grid, so the bin is 0 either way), and the bound above applies.
MASKRT_HD int adaptive_grid(float v) {
  const float c = ceilf(v);
  if (!(c > 0.0f)) {
    return 0;
  }
  return c > static_cast<float>(kMaxAdaptiveGrid) ? kMaxAdaptiveGrid : static_cast<int>(c);
}

MASKRT_HD RoiGeometry roi_geometry(float x1, float y1, float x2, float y2, float spatial_scale,
                                   int pooled, int sampling_ratio, bool aligned) {
  RoiGeometry g;
  // torchvision: "Do not using rounding; this implementation detail is critical"
  const float offset = aligned ? 0.5f : 0.0f;
  g.start_w = x1 * spatial_scale - offset;
  g.start_h = y1 * spatial_scale - offset;
  const float end_w = x2 * spatial_scale - offset;
  const float end_h = y2 * spatial_scale - offset;
  float roi_w = end_w - g.start_w;
  float roi_h = end_h - g.start_h;
  if (!aligned) {
    // Force malformed RoIs to be 1x1 (torchvision's legacy behaviour)
    roi_w = roi_w > 1.0f ? roi_w : 1.0f;
    roi_h = roi_h > 1.0f ? roi_h : 1.0f;
  }
  g.bin_h = roi_h / static_cast<float>(pooled);
  g.bin_w = roi_w / static_cast<float>(pooled);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_h / static_cast<float>(pooled));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_w / static_cast<float>(pooled));
  const int n = g.grid_h * g.grid_w;
  g.count = static_cast<float>(n > 1 ? n : 1);
  return g;
}

// Position of sample `i` (of `grid`) inside bin `bin` along one axis, in feature pixels.
MASKRT_HD float sample_coord(float start, int bin, float bin_size, int i, int grid) {
  return start + static_cast<float>(bin) * bin_size +
         static_cast<float>(i + 0.5f) * bin_size / static_cast<float>(grid);
}

// One axis of a bilinear sample: the two taps and their weights.
struct AxisSample {
  int low;    // first tap (an index, or a premultiplied row offset in the kernel's tables)
  int high;   // second tap
  float l;    // weight of `high` (torchvision's ly / lx)
  float h;    // weight of `low`  (torchvision's hy / hx)
  int valid;  // 0: the coordinate is outside [-1, size], the sample contributes 0
};

// torchvision's bilinear_interpolate boundary rules for one axis of length `size`:
//   outside [-1, size] (or NaN): no contribution; clamp to 0 below; at or past the last pixel use
//   the last pixel with weight 1.
MASKRT_HD AxisSample axis_sample(float v, int size) {
  AxisSample s;
  if (!(v >= -1.0f && v <= static_cast<float>(size))) {
    s.low = 0;
    s.high = 0;
    s.l = 0.0f;
    s.h = 0.0f;
    s.valid = 0;
    return s;
  }
  if (v <= 0.0f) {
    v = 0.0f;
  }
  int low = static_cast<int>(v);
  int high;
  if (low >= size - 1) {
    high = low = size - 1;
    v = static_cast<float>(low);
  } else {
    high = low + 1;
  }
  s.low = low;
  s.high = high;
  s.l = v - static_cast<float>(low);
  s.h = 1.0f - s.l;
  s.valid = 1;
  return s;
}

// The bilinear value from the four taps v1 = (y.low, x.low), v2 = (y.low, x.high),
// v3 = (y.high, x.low), v4 = (y.high, x.high); weights and sum in torchvision's order.
MASKRT_HD float bilinear(const AxisSample& y, const AxisSample& x, float v1, float v2, float v3,
                         float v4) {
  const float w1 = y.h * x.h;
  const float w2 = y.h * x.l;
  const float w3 = y.l * x.h;
  const float w4 = y.l * x.l;
  return w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4;
}

}  // namespace roialign
}  // namespace maskrt
