// Grouped NMS on the GPU without a host synchronisation (grouped_nms_torch.cu): bool [G, N], true
// for the boxes kept, before any per-group limit.
#pragma once

#include <ATen/core/Tensor.h>

at::Tensor grouped_nms_keep(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                            double score_threshold);
