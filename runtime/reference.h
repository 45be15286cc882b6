// Float64 CPU reference of the forward pass: the judge for tests, `jitattn check` and the tuner's
// verify step. Written for clarity of semantics first; it follows include/jitattn/attention.h
// literally and shares nothing with the kernels or the generator.
#pragma once

#include <cstdint>
#include <vector>

#include "jitattn/attention.h"

namespace jitattn::reference {

struct Result {
  /// [rows_q][heads_q][head_dim_v]; row = b * seqlen_q + i (none/padded) or the packed row.
  /// The same order as gathering o in logical [batch, seq, heads, dim] order.
  std::vector<double> out;
  /// Natural-log LSE, -inf for rows with no allowed key (and padded rows i >= seqused_q[b]):
  /// [batch][heads_q][seqlen_q] (none/padded) or [heads_q][total_q] (packed), as the API's lse.
  std::vector<double> lse;
  int64_t rows_q = 0;
  int64_t heads_q = 0;
  int64_t head_dim_v = 0;
};

/// Computes the forward pass of `host_args` in float64. Every pointer in host_args (q, k, v and
/// bias data, alibi_slopes, cu_seqlens_*, seqused_*) must be HOST memory. o and lse are not
/// written; o's shape and dtype are validated (its data may be null here). Runs validate()
/// first, then checks the host-readable sequence metadata: cu_seqlens must be non-decreasing
/// within [0, total] with lengths <= max_seqlen, seqused within [0, seqlen]; violations throw
/// InvalidArgument. `threads` = 0 uses std::thread::hardware_concurrency().
/// With dropout (args.dropout_p > 0) the output uses the kernels' keep decisions
/// (templates/philox.h); the LSE is that of the probabilities before dropout.
/// Also accepts f32 q/k/v/o/bias (all of them), for finite-difference tests.
Result forward(const AttentionArgs& host_args, int threads = 0);

struct Gradients {
  Result forward;  ///< the forward pass of the same problem
  /// [rows_q][heads_q][head_dim], rows as Result::out; rows with no allowed key (and padded
  /// rows) are 0.
  std::vector<double> dq;
  /// [rows_k][heads_kv][head_dim], row = b * seqlen_k + j (none/padded) or the packed row;
  /// summed over the query heads of each GQA group. Keys no query sees (and padded keys) are 0.
  std::vector<double> dk;
  std::vector<double> dv;  ///< [rows_k][heads_kv][head_dim_v]
  /// bias.shape in row-major order, each entry the sum of dL/dscore over the positions it is
  /// broadcast to; empty unless asked for.
  std::vector<double> dbias;
};

/// Gradients of L = sum(d_o * o) with respect to q, k, v (and the bias tensor when `want_dbias`)
/// in float64, for every forward feature (masks, window, varlen, GQA, bias, ALiBi, softcap,
/// dropout). d_o is a host tensor with o's logical shape. Same pointer and validation rules as
/// forward(); throws InvalidArgument("d_o...") when d_o does not match o.
Gradients backward(const AttentionArgs& host_args, const TensorRef& d_o, bool want_dbias,
                   int threads = 0);

}  // namespace jitattn::reference
