// Launcher of the multi-level RoIAlign CUDA kernel. Independent of TensorRT and PyTorch: the
// TensorRT plugin (roi_align_plugin.cpp) and the PyTorch binding (roi_align_torch.cpp) both call it.
#pragma once

#include <cuda_runtime_api.h>

#include "roi_align_params.h"

namespace maskrt {
namespace roialign {

// Enqueues ONE kernel launch on `stream` that computes every RoI of every image on its FPN level.
// Returns cudaErrorInvalidValue (without launching) when check_params(p) rejects `p`, else the
// launch status. A call with no work (no RoIs or no channels) launches nothing.
cudaError_t launch_multilevel_roi_align(const MultiLevelRoiAlignParams& p, cudaStream_t stream);

}  // namespace roialign
}  // namespace maskrt
