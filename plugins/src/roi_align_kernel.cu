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

template <typename T>
void launch_typed(const MultiLevelRoiAlignParams& p, dim3 grid, int cpb, cudaStream_t stream) {
  switch (specialised_grid(p.sampling_ratio)) {
    case 1:
      multilevel_roi_align_kernel<T, 1><<<grid, kBlockThreads, 0, stream>>>(p, cpb);
      break;
    case 2:
      multilevel_roi_align_kernel<T, 2><<<grid, kBlockThreads, 0, stream>>>(p, cpb);
      break;
    default:
      multilevel_roi_align_kernel<T, 0><<<grid, kBlockThreads, 0, stream>>>(p, cpb);
      break;
  }
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

}  // namespace

cudaError_t launch_multilevel_roi_align(const MultiLevelRoiAlignParams& p, cudaStream_t stream) {
  if (check_params(p) != nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t total_rois = static_cast<int64_t>(p.batch) * p.num_rois;
  if (total_rois == 0 || p.channels == 0) {
    return cudaSuccess;
  }
  // a few resident blocks per SM (2048 threads per SM on sm_80/90)
  const int64_t target_blocks = static_cast<int64_t>(sm_count()) * (2048 / kBlockThreads);
  const int cpb = channels_per_block(p.channels, total_rois, p.output_size, target_blocks);
  const int chunks = (p.channels + cpb - 1) / cpb;
  if (chunks > 65535) {  // gridDim.y limit (only reachable with hundreds of thousands of channels)
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(total_rois), static_cast<unsigned>(chunks));
  if (p.dtype == DType::kFloat16) {
    launch_typed<__half>(p, grid, cpb, stream);
  } else {
    launch_typed<float>(p, grid, cpb, stream);
  }
  return cudaGetLastError();
}

}  // namespace roialign
}  // namespace maskrt
