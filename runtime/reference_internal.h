// Pieces of the float64 reference shared by its forward (reference.cpp) and backward
// (reference_backward.cpp): reading tensors as doubles and resolving each sequence's extents.
#pragma once

#include <cstdint>
#include <vector>

#include "jitattn/attention.h"
#include "runtime/problem.h"

namespace jitattn::reference::detail {

// Where one sequence lives in the tensors and in the result.
struct Sequence {
  int64_t batch_index = 0;  // index into dim 0 of q/k/v (0 when packed)
  int64_t q_row0 = 0;       // first row along q's seq dim
  int64_t k_row0 = 0;       // first row along k/v's seq dim
  int64_t len_q = 0;
  int64_t len_k = 0;
  int64_t bias_batch = 0;  // sequence number, for the bias batch dim
};

/// Reads n elements t[offset + s * stride] (f16, bf16 or f32) into out[s * out_stride].
void gather(const TensorRef& t, int64_t offset, int64_t stride, int64_t n, double* out,
            int64_t out_stride);

/// Every sequence's extents; checks the host-readable cu_seqlens / seqused (InvalidArgument).
std::vector<Sequence> sequences(const AttentionArgs& args, const Problem& p);

/// validate() for the reference, which also takes f32 q/k/v/o/bias (finite-difference tests
/// perturb inputs by amounts no 16-bit type holds); the kernels never see f32 inputs.
Problem validate_for_reference(const AttentionArgs& args);

/// The keep factor of dropout for (sequence b, query head h, row i, column j): 0 when dropped,
/// 1 / (1 - p) when kept, 1 without dropout. Same decision as the kernels (templates/philox.h).
double dropout_factor(const AttentionArgs& args, const Problem& p, int64_t b, int64_t h,
                      int64_t i, int64_t j);

}  // namespace jitattn::reference::detail
