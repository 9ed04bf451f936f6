// Grouped NMS on the GPU with a fixed-size output and no host synchronisation, so that the deploy
// graph's torch.ops.maskrt.grouped_nms can be captured in a CUDA graph (torchvision's CUDA nms
// copies its suppression mask to the host to finish the greedy sweep; this sweep stays on the GPU).
//
// Same decisions as model/deploy.py's composite: candidates score above `score_threshold`; in
// descending score order a candidate is kept unless a kept box of its group overlaps it with IoU
// above `iou_threshold`; IoU in float64 against the threshold rounded to float32 (the composite's
// arithmetic on CUDA for its single-call path: torchvision's CUDA nms on float64 boxes).
// Limiting each group to its best `max_per_group` kept boxes is left to the caller (shared code).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

#include "grouped_nms.h"

namespace {

constexpr int kBits = 64;  // boxes per mask word

__device__ inline bool overlaps(const float* a, const float* b, double threshold) {
  const double left = fmax(static_cast<double>(a[0]), static_cast<double>(b[0]));
  const double top = fmax(static_cast<double>(a[1]), static_cast<double>(b[1]));
  const double right = fmin(static_cast<double>(a[2]), static_cast<double>(b[2]));
  const double bottom = fmin(static_cast<double>(a[3]), static_cast<double>(b[3]));
  const double inter = fmax(right - left, 0.0) * fmax(bottom - top, 0.0);
  const double area_a = (static_cast<double>(a[2]) - a[0]) * (static_cast<double>(a[3]) - a[1]);
  const double area_b = (static_cast<double>(b[2]) - b[0]) * (static_cast<double>(b[3]) - b[1]);
  return inter / (area_a + area_b - inter) > threshold;
}

// One block per (group, row word, column word): bit j of mask[g][i][w] says that sorted box i
// suppresses sorted box 64 w + j (j > i). Candidates are a prefix of the sorted order, so a
// block whose rows or columns start past it has nothing to do.
__global__ void suppression_mask(const float* __restrict__ boxes, const int64_t* __restrict__ order,
                                 const float* __restrict__ sorted, int n, int words, float score_threshold,
                                 double iou_threshold, uint64_t* __restrict__ mask) {
  const int group = blockIdx.z;
  const int row_word = blockIdx.y;
  const int col_word = blockIdx.x;
  if (col_word < row_word) return;
  const float* key = sorted + static_cast<int64_t>(group) * n;
  const int row_start = row_word * kBits;
  const int col_start = col_word * kBits;
  if (!(key[row_start] > score_threshold) || !(key[col_start] > score_threshold)) return;
  const int rows = min(n - row_start, kBits);
  const int cols = min(n - col_start, kBits);
  __shared__ float block_boxes[kBits * 4];
  const int64_t* group_order = order + static_cast<int64_t>(group) * n;
  const float* group_boxes = boxes + static_cast<int64_t>(group) * n * 4;
  if (threadIdx.x < cols) {
    const float* box = group_boxes + group_order[col_start + threadIdx.x] * 4;
    for (int c = 0; c < 4; ++c) block_boxes[threadIdx.x * 4 + c] = box[c];
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;
  const int i = row_start + threadIdx.x;
  const float* box = group_boxes + group_order[i] * 4;
  uint64_t bits = 0;
  for (int j = (row_word == col_word ? threadIdx.x + 1 : 0); j < cols; ++j) {
    if (key[col_start + j] > score_threshold && overlaps(box, block_boxes + j * 4, iou_threshold)) {
      bits |= 1ULL << j;
    }
  }
  mask[(static_cast<int64_t>(group) * n + i) * words + col_word] = bits;
}

// One block per group: the greedy sweep over the candidates in score order, the removed set in
// shared memory (one word per thread).
__global__ void sweep(const int64_t* __restrict__ order, const float* __restrict__ sorted, int n, int words,
                      float score_threshold, const uint64_t* __restrict__ mask, bool* __restrict__ keep) {
  extern __shared__ uint64_t removed[];
  const int group = blockIdx.x;
  for (int w = threadIdx.x; w < words; w += blockDim.x) removed[w] = 0;
  __syncthreads();
  const float* key = sorted + static_cast<int64_t>(group) * n;
  const int64_t* group_order = order + static_cast<int64_t>(group) * n;
  const uint64_t* group_mask = mask + static_cast<int64_t>(group) * n * words;
  for (int i = 0; i < n && key[i] > score_threshold; ++i) {
    const bool kept = !(removed[i / kBits] & (1ULL << (i % kBits)));
    __syncthreads();  // every thread has read removed[] before it changes
    if (kept) {
      if (threadIdx.x == 0) keep[static_cast<int64_t>(group) * n + group_order[i]] = true;
      for (int w = i / kBits + threadIdx.x; w < words; w += blockDim.x) removed[w] |= group_mask[static_cast<int64_t>(i) * words + w];
    }
    __syncthreads();
  }
}

}  // namespace

at::Tensor grouped_nms_keep(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                            double score_threshold) {
  TORCH_CHECK(boxes.is_cuda() && scores.is_cuda(), "grouped_nms: boxes and scores must be CUDA tensors");
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(2) == 4, "grouped_nms: boxes must be [G, N, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 2 && scores.size(0) == boxes.size(0) && scores.size(1) == boxes.size(1),
              "grouped_nms: scores must be [G, N] for boxes [G, N, 4], got ", scores.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kFloat && scores.scalar_type() == at::kFloat,
              "grouped_nms: boxes and scores must be float32");
  const int64_t groups = scores.size(0);
  const int64_t n = scores.size(1);
  TORCH_CHECK(n <= 65536 && groups <= 65535, "grouped_nms: at most 65535 groups of 65536 boxes");
  const c10::cuda::CUDAGuard guard(scores.device());
  at::Tensor keep = at::zeros({groups, n}, scores.options().dtype(at::kBool));
  if (groups == 0 || n == 0) return keep;
  const float threshold = static_cast<float>(score_threshold);
  // non-candidates (NaN included) sort last, so the candidates are a prefix of each group
  const at::Tensor key = at::where(scores.gt(threshold), scores,
                                   at::full_like(scores, -std::numeric_limits<float>::infinity()));
  const auto [sorted, order] = at::sort(key, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  const at::Tensor boxes_c = boxes.contiguous();
  const int words = static_cast<int>((n + kBits - 1) / kBits);
  at::Tensor mask = at::empty({groups, n, words}, scores.options().dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const dim3 grid(words, words, static_cast<unsigned>(groups));
  suppression_mask<<<grid, kBits, 0, stream>>>(
      boxes_c.data_ptr<float>(), order.data_ptr<int64_t>(), sorted.data_ptr<float>(), static_cast<int>(n), words,
      threshold, static_cast<double>(static_cast<float>(iou_threshold)),
      reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int threads = words < 1024 ? ((words + 31) / 32) * 32 : 1024;
  sweep<<<static_cast<unsigned>(groups), threads, words * sizeof(uint64_t), stream>>>(
      order.data_ptr<int64_t>(), sorted.data_ptr<float>(), static_cast<int>(n), words, threshold,
      reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()), keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}
