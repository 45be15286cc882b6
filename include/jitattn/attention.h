// The attention problem as the caller describes it: tensors, mask, modifiers, sequence layout.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "jitattn/tensor.h"

namespace jitattn {

/// Which keys a query may attend to before any window is applied.
///   none                 every key
///   causal               key j <= query i (aligned top-left)
///   causal_bottom_right  key j <= i + seqlen_k - seqlen_q (aligned bottom-right, as FA2 >= 2.1)
enum class MaskKind { none, causal, causal_bottom_right };

/// A local (sliding) window around the diagonal: query i sees keys j with
/// -left <= j - (i + offset) <= right, where offset is seqlen_k - seqlen_q when the mask is
/// causal_bottom_right and 0 otherwise. -1 means unbounded on that side.
struct Window {
  int left = -1;
  int right = -1;
};

/// Variable sequence lengths per batch.
///   none    every batch has seqlen_q queries and seqlen_k keys
///   packed  q/k/v/o hold all sequences back to back (shape {1, total, heads, dim});
///           cu_seqlens_q/k (int32, batch+1 entries, device memory) give the offsets
///   padded  q/k/v/o are [batch, max_seq, heads, dim]; seqused_q/k (int32, batch entries, device
///           memory; either may be null = full length) give each batch's lengths. Query rows at
///           or beyond a batch's length are written as 0 (and LSE -inf).
enum class VarlenKind { none, packed, padded };

/// Where a call runs.
///   automatic  the CUDA device that owns q's memory when q is device memory, else the CPU backend
///   cpu        the CPU backend (clang/LLVM JIT); all pointers are host memory; runs synchronously
///   cuda       CUDA device `ordinal`; all pointers are its device memory
struct Device {
  enum class Kind { automatic, cpu, cuda };
  Kind kind = Kind::automatic;
  int ordinal = 0;

  static Device cpu() { return {Kind::cpu, 0}; }
  static Device cuda(int ordinal = 0) { return {Kind::cuda, ordinal}; }
  /// "auto", "cpu", "cuda", "cuda:N" (a bare "N" means cuda:N); throws InvalidArgument("device").
  static Device parse(std::string_view text);
  /// "auto", "cpu" or "cuda:N".
  std::string str() const;
  bool operator==(const Device&) const = default;
};

/// Everything one forward call needs. Pointers must all belong to one device (or all be host memory).
///
/// Scores: s = scale * (q . k); if softcap > 0, s = softcap * tanh(s / softcap); then the bias
/// tensor and ALiBi (-slope_h * |i + offset - j|) are added; masked keys get -inf. The output is
/// softmax(s) @ v. A row with every key masked gives 0 and LSE -inf, never NaN.
struct AttentionArgs {
  TensorRef q;  ///< [batch, seqlen_q, heads_q, head_dim]      f16 or bf16 (f32 on the CPU)
  TensorRef k;  ///< [batch, seqlen_k, heads_kv, head_dim]     same dtype
  TensorRef v;  ///< [batch, seqlen_k, heads_kv, head_dim_v]   same dtype
  TensorRef o;  ///< [batch, seqlen_q, heads_q, head_dim_v]    written; same dtype

  /// Optional log-sum-exp (natural log) per query row, fp32, contiguous [batch, heads_q, seqlen_q]
  /// ([heads_q, total_q] when packed).
  float* lse = nullptr;

  MaskKind mask = MaskKind::none;
  std::optional<Window> window;

  /// Optional additive bias, logical [batch, heads_q, seqlen_q, seqlen_k], same dtype as q; any
  /// dimension of size 1 is broadcast. Packed varlen: seqlen dims index within each sequence.
  TensorRef bias;
  /// Optional ALiBi slopes, fp32 device memory, one per query head.
  const float* alibi_slopes = nullptr;

  /// Softmax scale; default 1/sqrt(head_dim). Baked into the kernel (one kernel per value).
  std::optional<float> scale;
  /// tanh soft-capping of scores (Gemma 2, Grok); 0 = off. Baked into the kernel.
  float softcap = 0.0f;

  VarlenKind varlen = VarlenKind::none;
  const int32_t* cu_seqlens_q = nullptr;  ///< packed: batch+1 offsets
  const int32_t* cu_seqlens_k = nullptr;  ///< packed: batch+1 offsets
  const int32_t* seqused_q = nullptr;     ///< padded: per-batch query lengths (optional)
  const int32_t* seqused_k = nullptr;     ///< padded: per-batch key lengths (optional)
  int batch = 0;                          ///< packed: number of sequences
  int max_seqlen_q = 0;                   ///< packed: longest query sequence
  int max_seqlen_k = 0;                   ///< packed: longest key sequence

  /// Dropout on the attention probabilities (training). Each probability is dropped with
  /// probability dropout_p and the kept ones are scaled by 1 / (1 - dropout_p). The keep decision
  /// is a deterministic function of (dropout_seed, dropout_offset, batch, query head, row,
  /// column) (Philox4x32-10, templates/philox.h; batch = sequence number and row/column within
  /// the sequence for packed varlen), so backward regenerates the mask without storing it. The
  /// LSE is that of the probabilities before dropout. dropout_p in [0, 1); 0 = off.
  float dropout_p = 0.0f;
  uint64_t dropout_seed = 0;
  uint64_t dropout_offset = 0;

  /// CUDA stream (CUstream) to launch on; null = the default stream of the pointers' device.
  /// Ignored on the CPU, where the call returns when the output is written.
  void* stream = nullptr;

  /// Where to run (see Device); automatic follows q's memory.
  Device device;
};

/// What backward() reads beyond the forward's AttentionArgs (whose `o` is then the forward's
/// output and `lse` its log-sum-exp, both read), and the gradients it writes. Gradient tensors
/// may have any strides (last dim contiguous), like the inputs they belong to.
struct BackwardArgs {
  TensorRef d_o;  ///< [batch, seqlen_q, heads_q, head_dim_v] gradient of o; q's dtype
  TensorRef dq;   ///< written, q's shape and dtype
  TensorRef dk;   ///< written, k's shape: summed over the query heads of a GQA group
  TensorRef dv;   ///< written, v's shape
  /// Optional, written: gradient of the bias tensor, bias's shape and dtype, summed over the
  /// bias's broadcast dimensions. Leave empty when the bias needs no gradient.
  TensorRef dbias;
};

}  // namespace jitattn
