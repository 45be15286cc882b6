// Validation of AttentionArgs into a normalised Problem. Pure host code: no CUDA calls, so it is
// tested anywhere; the engine adds the checks that need the driver (pointer devices, streams).
#pragma once

#include <cstdint>

#include "jitattn/attention.h"

namespace jitattn {

/// A validated problem: sizes resolved, defaults applied.
struct Problem {
  DType dtype = DType::bf16;
  int batch = 0;
  int heads_q = 0;
  int heads_kv = 0;
  int seqlen_q = 0;  ///< per batch (none/padded) or the maximum (packed)
  int seqlen_k = 0;
  int total_q = 0;   ///< rows of q/o along the seq dim (packed: total tokens; else seqlen_q)
  int total_k = 0;
  int head_dim = 0;
  int head_dim_v = 0;
  float scale = 0.0f;  ///< resolved (default 1/sqrt(head_dim))
  float softcap = 0.0f;
  MaskKind mask = MaskKind::none;
  bool window = false;
  int window_left = -1;
  int window_right = -1;
  VarlenKind varlen = VarlenKind::none;
  bool bias = false;
  bool bias_tileable = false;  ///< bias rows 16-byte aligned with a contiguous key dim
  bool alibi = false;
  bool lse = false;
  float dropout_p = 0.0f;  ///< 0 = off
  bool dbias = false;      ///< backward writes a bias gradient
  int64_t dbias_elements = 0;  ///< elements of dbias (its shape's product)

  bool dropout() const { return dropout_p > 0.0f; }
  /// batch == 0 or a zero sequence length: a valid no-op.
  bool empty() const;
  /// There are query rows to write. With no keys (seqlen_k == 0) the problem is empty() but its
  /// rows are fully masked: the output is 0 and the LSE -inf, so the kernel still runs.
  bool has_output_rows() const { return batch > 0 && heads_q > 0 && seqlen_q > 0 && total_q > 0; }
};

/// The kernels' dropout threshold for probability p: a probability is kept when its 32-bit
/// Philox word is >= floor(p * 2^32) (templates/philox.h).
uint32_t dropout_threshold(float p);

/// Checks every argument that can be checked without a device and returns the normalised
/// problem. Throws InvalidArgument naming the argument (e.g. "q.shape[2]", "bias.shape[3]",
/// "window.left") and what was expected. Requirements checked:
///  - q/k/v/o non-null (unless the problem is empty), dtype f16/bf16, all the same dtype;
///  - logical shapes: q [b, sq, hq, d], k [b, sk, hkv, d], v [b, sk, hkv, dv], o [b, sq, hq, dv];
///    packed varlen: batch dim 1, seq = total tokens, args.batch sequences;
///  - stride[3] == 1; other strides non-negative multiples of 8 elements and data 16-byte aligned
///    (the kernel moves 16-byte vectors);
///  - hq a multiple of hkv; d and dv multiples of 8 in [8, kMaxHeadDim];
///  - bias (if given): dtype equal to q's, each dim equal to the problem's or 1 (broadcast);
///  - window sides >= -1; softcap >= 0 and finite; scale finite and > 0 if given;
///  - varlen: packed needs cu_seqlens_q/k, batch > 0, max_seqlen_q/k > 0; padded allows
///    seqused_q/k; varlen none forbids those pointers;
///  - lse pointer 4-byte aligned.
///  - dropout_p finite and in [0, 1).
Problem validate(const AttentionArgs& args);

/// validate() plus the backward's own arguments: lse present (the forward's), d_o with o's shape,
/// dq/dk/dv with q/k/v's shapes, all q's dtype and laid out like q/k/v/o (16-byte rows, last dim
/// contiguous, written dims with non-zero strides); dbias only with a bias, with the bias's
/// shape. Throws InvalidArgument naming the argument ("lse", "d_o.shape[1]", "dk.dtype", ...).
Problem validate_backward(const AttentionArgs& args, const BackwardArgs& grads);

}  // namespace jitattn
