// CUDA kernel of multi-level RoIAlign: one launch for all FPN levels and all RoIs of the batch.
// The per-block work lives in roi_align_kernel.cuh (host-testable); this file only launches it.
// No TensorRT or PyTorch header here: this translation unit builds into the TensorRT plugin
// library and into the PyTorch extension alike.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "roi_align_kernel.cuh"
#include "roi_align_kernel.h"

namespace maskrt {
namespace roialign {
namespace {

template <typename T, int kGrid>
__global__ void __launch_bounds__(kBlockThreads, 4)
    multilevel_roi_align_kernel(const MultiLevelRoiAlignParams p, int channels_per_block) {
  __shared__ SampleTables tables;
  const RoiJob job = make_job(p, static_cast<int>(blockIdx.x));
  const int c_begin = static_cast<int>(blockIdx.y) * channels_per_block;
  const int c_end = min(c_begin + channels_per_block, p.channels);
  // job is the same in every thread of the block, so the branch and the barrier are uniform
  if (job.level >= 0 && job.use_tables) {
    fill_tables(p, job, tables, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
  }
  __syncthreads();
  compute_outputs<T, kGrid>(p, job, tables, c_begin, c_end, static_cast<int>(threadIdx.x),
                            static_cast<int>(blockDim.x));
}

// Multiprocessor count of the current device, cached per device (a benign race: every writer
// stores the same value).
int sm_count() {
  constexpr int kMaxDevices = 64;
  static int cache[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    return 132;
  }
  if (device < 0 || device >= kMaxDevices) {
    int n = 0;
    return cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) == cudaSuccess ? n : 132;
  }
  if (cache[device] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) {
      return 132;
    }
    cache[device] = n;
  }
  return cache[device];
}

// Blocks of the (T, kGrid) kernel resident per SM on the current device, as the hardware really
// schedules them (registers, shared memory, threads): cudaOccupancyMaxActiveBlocksPerMultiprocessor,
// cached per device (a benign race, as in sm_count). The query's error when it fails (no device).
template <typename T, int kGrid>
cudaError_t resident_blocks_per_sm(int* blocks) {
  constexpr int kMaxDevices = 64;
  static int cache[kMaxDevices] = {};
  int device = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  const bool cached = device >= 0 && device < kMaxDevices;
  if (cached && cache[device] > 0) {
    *blocks = cache[device];
    return cudaSuccess;
  }
  status = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, multilevel_roi_align_kernel<T, kGrid>,
                                                         kBlockThreads, 0);
  if (status != cudaSuccess) return status;
  if (*blocks < 1) return cudaErrorLaunchOutOfResources;
  if (cached) cache[device] = *blocks;
  return cudaSuccess;
}

// One launch of the kernel instantiation for (T, kGrid), the grid sized for the blocks that are
// really resident at a time.
template <typename T, int kGrid>
cudaError_t launch(const MultiLevelRoiAlignParams& p, int64_t total_rois, cudaStream_t stream) {
  int per_sm = 0;
  const cudaError_t status = resident_blocks_per_sm<T, kGrid>(&per_sm);
  if (status != cudaSuccess) return status;
  const int64_t target_blocks = static_cast<int64_t>(sm_count()) * per_sm;
  const int cpb = channels_per_block(p.channels, total_rois, p.output_size, target_blocks);
  const int chunks = (p.channels + cpb - 1) / cpb;
  if (chunks > 65535) {  // gridDim.y limit (only reachable with hundreds of thousands of channels)
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(total_rois), static_cast<unsigned>(chunks));
  multilevel_roi_align_kernel<T, kGrid><<<grid, kBlockThreads, 0, stream>>>(p, cpb);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const MultiLevelRoiAlignParams& p, int64_t total_rois, cudaStream_t stream) {
  switch (specialised_grid(p.sampling_ratio)) {
    case 1: return launch<T, 1>(p, total_rois, stream);
    case 2: return launch<T, 2>(p, total_rois, stream);
    default: return launch<T, 0>(p, total_rois, stream);
  }
}

}  // namespace

cudaError_t launch_multilevel_roi_align(const MultiLevelRoiAlignParams& p, cudaStream_t stream) {
  if (check_params(p) != nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t total_rois = static_cast<int64_t>(p.batch) * p.num_rois;
  if (total_rois == 0 || p.channels == 0) {
    return cudaSuccess;
  }
  return p.dtype == DType::kFloat16 ? launch_typed<__half>(p, total_rois, stream)
                                    : launch_typed<float>(p, total_rois, stream);
}

}  // namespace roialign
}  // namespace maskrt
