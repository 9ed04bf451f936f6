// CPU implementations of multi-level RoIAlign, built by the tests into a small shared library and
// driven through ctypes (tests/test_plugin_math.py). Two entry points:
//   - maskrt_roi_align_reference: plain loops over RoIs / channels / bins / samples calling the
//     per-sample functions of roi_align_math.cuh (the arithmetic the kernel uses);
//   - maskrt_roi_align_emulate: runs the CUDA kernel's own block code (roi_align_kernel.cuh) on the
//     CPU, block by block and thread by thread, with the launcher's channel chunking, so that the
//     kernel's indexing, tables and template paths are tested without a GPU.
// Compiles with nvcc (as host code) or a plain C++17 compiler; float16 needs <cuda_fp16.h>.
#include <stdint.h>

#include <vector>

#include "roi_align_kernel.cuh"

namespace {

using maskrt::roialign::AxisSample;
using maskrt::roialign::DType;
using maskrt::roialign::MultiLevelRoiAlignParams;
using maskrt::roialign::RoiGeometry;

MultiLevelRoiAlignParams make_params(const float* rois, int batch, int num_rois,
                                     const void* const* features, const int* heights,
                                     const int* widths, int num_levels, int channels, int dtype,
                                     int output_size, int sampling_ratio, int aligned,
                                     int canonical_scale, int canonical_level, int first_level,
                                     void* output) {
  MultiLevelRoiAlignParams p{};
  p.rois = rois;
  p.num_levels = num_levels;
  for (int l = 0; l < num_levels && l < maskrt::roialign::kMaxLevels; ++l) {
    p.features[l] = features[l];
    p.heights[l] = heights[l];
    p.widths[l] = widths[l];
  }
  p.batch = batch;
  p.num_rois = num_rois;
  p.channels = channels;
  p.output_size = output_size;
  p.sampling_ratio = sampling_ratio;
  p.aligned = aligned;
  p.canonical_scale = canonical_scale;
  p.canonical_level = canonical_level;
  p.first_level = first_level;
  p.dtype = static_cast<DType>(dtype);
  p.output = output;
  return p;
}

template <typename T>
void reference(const MultiLevelRoiAlignParams& p) {
  using namespace maskrt::roialign;
  const int P = p.output_size;
  T* out = static_cast<T*>(p.output);
  for (int b = 0; b < p.batch; ++b) {
    for (int r = 0; r < p.num_rois; ++r) {
      const float* box = p.rois + (static_cast<int64_t>(b) * p.num_rois + r) * 4;
      const int level = level_index(box[0], box[1], box[2], box[3], p.canonical_scale,
                                    p.canonical_level, p.first_level, p.num_levels);
      for (int c = 0; c < p.channels; ++c) {
        T* o = out + ((static_cast<int64_t>(b) * p.num_rois + r) * p.channels + c) * P * P;
        if (level < 0) {
          for (int i = 0; i < P * P; ++i) store_float(o + i, 0.0f);
          continue;
        }
        const int H = p.heights[level];
        const int W = p.widths[level];
        const T* plane = static_cast<const T*>(p.features[level]) +
                         (static_cast<int64_t>(b) * p.channels + c) * H * W;
        const RoiGeometry g = roi_geometry(box[0], box[1], box[2], box[3],
                                           level_scale(p.first_level, level), P, p.sampling_ratio,
                                           p.aligned != 0);
        for (int ph = 0; ph < P; ++ph) {
          for (int pw = 0; pw < P; ++pw) {
            float acc = 0.0f;
            for (int iy = 0; iy < g.grid_h; ++iy) {
              const AxisSample y = axis_sample(sample_coord(g.start_h, ph, g.bin_h, iy, g.grid_h), H);
              for (int ix = 0; ix < g.grid_w; ++ix) {
                const AxisSample x = axis_sample(sample_coord(g.start_w, pw, g.bin_w, ix, g.grid_w), W);
                if (!(y.valid && x.valid)) continue;  // torchvision adds 0
                acc += bilinear(y, x, to_float(plane[y.low * W + x.low]), to_float(plane[y.low * W + x.high]),
                                to_float(plane[y.high * W + x.low]), to_float(plane[y.high * W + x.high]));
              }
            }
            store_float(o + ph * P + pw, acc / g.count);
          }
        }
      }
    }
  }
}

template <typename T, int kGrid>
void emulate_launch(const MultiLevelRoiAlignParams& p, int cpb, int nthreads) {
  using namespace maskrt::roialign;
  const int total = p.batch * p.num_rois;
  const int chunks = (p.channels + cpb - 1) / cpb;
  std::vector<SampleTables> tables(1);
  for (int chunk = 0; chunk < chunks; ++chunk) {    // blockIdx.y
    for (int roi = 0; roi < total; ++roi) {         // blockIdx.x
      const int c_begin = chunk * cpb;
      const int c_end = c_begin + cpb < p.channels ? c_begin + cpb : p.channels;
      // every thread computes the job; they agree, so one copy stands for all
      const RoiJob job = make_job(p, roi);
      if (job.level >= 0 && job.use_tables) {
        for (int tid = 0; tid < nthreads; ++tid) fill_tables(p, job, tables[0], tid, nthreads);
      }
      // __syncthreads()
      for (int tid = 0; tid < nthreads; ++tid) {
        compute_outputs<T, kGrid>(p, job, tables[0], c_begin, c_end, tid, nthreads);
      }
    }
  }
}

template <typename T>
void emulate(const MultiLevelRoiAlignParams& p, int64_t target_blocks, int nthreads) {
  using namespace maskrt::roialign;
  const int64_t total = static_cast<int64_t>(p.batch) * p.num_rois;
  if (total == 0 || p.channels == 0) return;
  const int cpb = channels_per_block(p.channels, total, p.output_size, target_blocks);
  switch (specialised_grid(p.sampling_ratio)) {
    case 1: emulate_launch<T, 1>(p, cpb, nthreads); break;
    case 2: emulate_launch<T, 2>(p, cpb, nthreads); break;
    default: emulate_launch<T, 0>(p, cpb, nthreads); break;
  }
}

}  // namespace

extern "C" {

// 1 when this build handles float16 features (dtype 1).
int maskrt_host_has_fp16() {
#if defined(MASKRT_HAS_FP16)
  return 1;
#else
  return 0;
#endif
}

// The level index (0-based) of one box, or -1 for an undefined level.
int maskrt_level_index(float x1, float y1, float x2, float y2, int canonical_scale,
                       int canonical_level, int first_level, int num_levels) {
  return maskrt::roialign::level_index(x1, y1, x2, y2, canonical_scale, canonical_level,
                                       first_level, num_levels);
}

// Channels per block the launcher picks (exposed for the tests).
int maskrt_channels_per_block(int channels, int64_t total_rois, int output_size, int64_t target_blocks) {
  return maskrt::roialign::channels_per_block(channels, total_rois, output_size, target_blocks);
}

// mode 0: reference loops; mode 1: kernel emulation with `target_blocks` / `nthreads`.
// Returns 0 on success, 1 for parameters check_params rejects, 2 for float16 without support.
int maskrt_roi_align_host(const float* rois, int batch, int num_rois, const void* const* features,
                          const int* heights, const int* widths, int num_levels, int channels,
                          int dtype, int output_size, int sampling_ratio, int aligned,
                          int canonical_scale, int canonical_level, int first_level, void* output,
                          int mode, int64_t target_blocks, int nthreads) {
  if (num_levels < 1 || num_levels > maskrt::roialign::kMaxLevels) return 1;
  const MultiLevelRoiAlignParams p =
      make_params(rois, batch, num_rois, features, heights, widths, num_levels, channels, dtype,
                  output_size, sampling_ratio, aligned, canonical_scale, canonical_level,
                  first_level, output);
  if (maskrt::roialign::check_params(p) != nullptr || nthreads < 1) return 1;
  if (p.dtype == DType::kFloat16) {
#if defined(MASKRT_HAS_FP16)
    if (mode == 0) reference<__half>(p); else emulate<__half>(p, target_blocks, nthreads);
    return 0;
#else
    return 2;
#endif
  }
  if (mode == 0) reference<float>(p); else emulate<float>(p, target_blocks, nthreads);
  return 0;
}

}  // extern "C"
