// The work of one thread block of the multi-level RoIAlign kernel, written as __host__ __device__
// functions so that the very code the GPU runs can also be run (block by block, thread by thread)
// on the CPU by the tests: roi_align_host.cpp emulates the launch, roi_align_kernel.cu launches it.
//
// Work decomposition (see plugins/roi_align/README.md, "Kernel design"):
//   grid.x = RoI (all images, all levels: one launch), grid.y = chunk of channels.
//   Phase 1: every thread derives the RoI's level and bin geometry (a few dozen flops, no memory
//            traffic beyond the 16-byte box), then the block writes the per-axis sample tables
//            (tap indices + weights of each sample row / column) to shared memory.
//   Phase 2: threads walk the chunk's outputs (c, ph, pw) with pw fastest, so the lanes of a warp
//            read neighbouring pixels of the same feature rows (NCHW: contiguous along x) and
//            write contiguous output; each output sums its grid_h x grid_w samples in fp32.
#pragma once

#include <stdint.h>

#include "roi_align_math.cuh"
#include "roi_align_params.h"

#if defined(__CUDACC__)
#define MASKRT_HAS_FP16 1
#elif defined(__has_include)
#if __has_include(<cuda_fp16.h>)
#define MASKRT_HAS_FP16 1
#endif
#endif

#if defined(MASKRT_HAS_FP16)
#include <cuda_fp16.h>
#endif

namespace maskrt {
namespace roialign {

static_assert(sizeof(MultiLevelRoiAlignParams{}.heights) / sizeof(int32_t) == kMaxLevels,
              "roi_align_params.h and roi_align_math.cuh disagree on the number of levels");

constexpr int kBlockThreads = 256;
// Samples per axis the shared tables hold: output_size * grid must fit (output 7: grid <= 18,
// output 14: grid <= 9). RoIs that need more take the table-free path (same arithmetic).
constexpr int kMaxAxisSamples = 128;
// Largest channel chunk of one block; smaller chunks are used when there are few RoIs, so that the
// GPU still gets enough blocks.
constexpr int kMaxChannelsPerBlock = 64;

struct SampleTables {
  AxisSample y[kMaxAxisSamples];  // low/high premultiplied by the map width (row offsets)
  AxisSample x[kMaxAxisSamples];
};

MASKRT_HD float to_float(float v) { return v; }
MASKRT_HD void store_float(float* dst, float v) { *dst = v; }
#if defined(MASKRT_HAS_FP16)
MASKRT_HD float to_float(__half v) { return __half2float(v); }
MASKRT_HD void store_float(__half* dst, float v) { *dst = __float2half_rn(v); }
#endif

// A feature value as float: through the read-only data cache on the GPU (the maps are not written
// during the launch).
template <typename T>
MASKRT_HD float load_float(const T* p) {
#if defined(__CUDA_ARCH__)
  return to_float(__ldg(p));
#else
  return to_float(*p);
#endif
}

// What the block needs to know about its RoI.
struct RoiJob {
  int roi;         // global RoI index: b * num_rois + r
  int batch;       // image b
  int level;       // feature map index; -1: undefined level, the output is zeros
  int height;      // of that map
  int width;
  int use_tables;  // the per-axis samples fit in SampleTables
  RoiGeometry g;
};

MASKRT_HD RoiJob make_job(const MultiLevelRoiAlignParams& p, int roi) {
  RoiJob job;
  job.roi = roi;
  job.batch = roi / p.num_rois;
  const float* box = p.rois + static_cast<int64_t>(roi) * 4;
  const float x1 = box[0];
  const float y1 = box[1];
  const float x2 = box[2];
  const float y2 = box[3];
  job.level = level_index(x1, y1, x2, y2, p.canonical_scale, p.canonical_level, p.first_level,
                          p.num_levels);
  if (job.level < 0) {
    job.height = job.width = 0;
    job.use_tables = 0;
    job.g = RoiGeometry{0.0f, 0.0f, 0.0f, 0.0f, 0, 0, 1.0f};
    return job;
  }
  job.height = p.heights[job.level];
  job.width = p.widths[job.level];
  job.g = roi_geometry(x1, y1, x2, y2, level_scale(p.first_level, job.level), p.output_size,
                       p.sampling_ratio, p.aligned != 0);
  job.use_tables = p.output_size * job.g.grid_h <= kMaxAxisSamples &&
                   p.output_size * job.g.grid_w <= kMaxAxisSamples;
  return job;
}

// Phase 1: the per-axis sample tables of the block's RoI (threads tid, tid + nthreads, ...).
MASKRT_HD void fill_tables(const MultiLevelRoiAlignParams& p, const RoiJob& job, SampleTables& t,
                           int tid, int nthreads) {
  const int P = p.output_size;
  const RoiGeometry& g = job.g;
  for (int i = tid; i < P * g.grid_h; i += nthreads) {
    const int ph = i / g.grid_h;
    const int iy = i - ph * g.grid_h;
    AxisSample s = axis_sample(sample_coord(g.start_h, ph, g.bin_h, iy, g.grid_h), job.height);
    s.low *= job.width;
    s.high *= job.width;
    t.y[i] = s;
  }
  for (int i = tid; i < P * g.grid_w; i += nthreads) {
    const int pw = i / g.grid_w;
    const int ix = i - pw * g.grid_w;
    t.x[i] = axis_sample(sample_coord(g.start_w, pw, g.bin_w, ix, g.grid_w), job.width);
  }
}

// Phase 2: outputs [c_begin, c_end) x P x P of the block's RoI. kGrid > 0 fixes the sampling grid
// at compile time (the caller guarantees grid_h == grid_w == kGrid) so the loads of one output are
// unrolled and issued together; kGrid == 0 reads the grid from the geometry.
template <typename T, int kGrid>
MASKRT_HD void compute_outputs(const MultiLevelRoiAlignParams& p, const RoiJob& job,
                               const SampleTables& t, int c_begin, int c_end, int tid,
                               int nthreads) {
  const int P = p.output_size;
  const int PP = P * P;
  const int n = (c_end - c_begin) * PP;
  T* const out = static_cast<T*>(p.output) + (static_cast<int64_t>(job.roi) * p.channels + c_begin) * PP;
  if (job.level < 0) {
    for (int i = tid; i < n; i += nthreads) {
      store_float(out + i, 0.0f);
    }
    return;
  }
  const int64_t hw = static_cast<int64_t>(job.height) * job.width;
  const T* const feat = static_cast<const T*>(p.features[job.level]) +
                        (static_cast<int64_t>(job.batch) * p.channels + c_begin) * hw;
  const RoiGeometry g = job.g;
  const int gh = kGrid > 0 ? kGrid : g.grid_h;
  const int gw = kGrid > 0 ? kGrid : g.grid_w;

  for (int i = tid; i < n; i += nthreads) {
    const int c = i / PP;
    const int rem = i - c * PP;
    const int ph = rem / P;
    const int pw = rem - ph * P;
    const T* const plane = feat + c * hw;
    float acc = 0.0f;
    if (job.use_tables) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int iy = 0; iy < gh; ++iy) {
        const AxisSample ys = t.y[ph * gh + iy];
        if (!ys.valid) {
          continue;
        }
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
        for (int ix = 0; ix < gw; ++ix) {
          const AxisSample xs = t.x[pw * gw + ix];
          if (!xs.valid) {
            continue;
          }
          acc += bilinear(ys, xs, load_float(plane + ys.low + xs.low), load_float(plane + ys.low + xs.high),
                          load_float(plane + ys.high + xs.low), load_float(plane + ys.high + xs.high));
        }
      }
    } else {
      // Same arithmetic without the tables (RoIs whose adaptive grid is too large for them).
      for (int iy = 0; iy < gh; ++iy) {
        AxisSample ys = axis_sample(sample_coord(g.start_h, ph, g.bin_h, iy, gh), job.height);
        if (!ys.valid) {
          continue;
        }
        ys.low *= job.width;
        ys.high *= job.width;
        for (int ix = 0; ix < gw; ++ix) {
          const AxisSample xs = axis_sample(sample_coord(g.start_w, pw, g.bin_w, ix, gw), job.width);
          if (!xs.valid) {
            continue;
          }
          acc += bilinear(ys, xs, load_float(plane + ys.low + xs.low), load_float(plane + ys.low + xs.high),
                          load_float(plane + ys.high + xs.low), load_float(plane + ys.high + xs.high));
        }
      }
    }
    store_float(out + i, acc / g.count);
  }
}

// Channels per block: enough outputs to keep every thread of the block busy (>= one output per
// thread), few enough that the launch has about `target_blocks` blocks (a few per SM) when there
// are few RoIs, and at most kMaxChannelsPerBlock so that the blocks resident at one time (which
// walk RoIs fastest) share one channel slice of the maps in L2.
MASKRT_HD int channels_per_block(int channels, int64_t total_rois, int output_size,
                                 int64_t target_blocks) {
  if (channels <= 0) {
    return 1;
  }
  const int pp = output_size * output_size;
  const int min_c = (kBlockThreads + pp - 1) / pp;
  int64_t chunks = total_rois > 0 ? (target_blocks + total_rois - 1) / total_rois : 1;
  if (chunks < 1) {
    chunks = 1;
  }
  int64_t c = (channels + chunks - 1) / chunks;
  if (c < min_c) {
    c = min_c;
  }
  if (c > kMaxChannelsPerBlock) {
    c = kMaxChannelsPerBlock;
  }
  if (c > channels) {
    c = channels;
  }
  return static_cast<int>(c);
}

// The sampling grid the kernel specialises for (torchvision models use 2), or 0 for the runtime one.
MASKRT_HD int specialised_grid(int sampling_ratio) {
  return (sampling_ratio == 1 || sampling_ratio == 2) ? sampling_ratio : 0;
}

}  // namespace roialign
}  // namespace maskrt
