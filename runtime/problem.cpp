// validate(): every check on AttentionArgs that needs no device, in the order a user would fix
// them (types, then shapes, then layouts). Each failure names the argument and says what was
// expected and what was given, so the message alone is enough to fix the call.
#include "runtime/problem.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "generator/kernel_spec.h"
#include "jitattn/error.h"

namespace jitattn {

uint32_t dropout_threshold(float p) {
  return static_cast<uint32_t>(std::min(std::floor(double(p) * 4294967296.0), 4294967295.0));
}

bool Problem::empty() const {
  return batch == 0 || heads_q == 0 || seqlen_q == 0 || seqlen_k == 0 || total_q == 0 ||
         total_k == 0;
}

namespace {

std::string address(const void* p) { return fmt::format("{:#x}", reinterpret_cast<uintptr_t>(p)); }

std::string dim_name(const char* tensor, const char* field, size_t i) {
  return fmt::format("{}.{}[{}]", tensor, field, i);
}

int64_t element_count(const TensorRef& t) {
  int64_t n = 1;
  for (int64_t s : t.shape) n *= s;
  return n;
}

const char* varlen_name(VarlenKind v) {
  switch (v) {
    case VarlenKind::none: return "none";
    case VarlenKind::packed: return "packed";
    case VarlenKind::padded: return "padded";
  }
  return "?";
}

// Sizes end up in int kernel parameters, so every dim must fit an int.
void check_shape_range(const TensorRef& t, const char* name) {
  for (size_t i = 0; i < 4; ++i) {
    if (t.shape[i] < 0 || t.shape[i] > std::numeric_limits<int>::max()) {
      throw InvalidArgument(
          dim_name(name, "shape", i),
          fmt::format("must be in [0, {}], got {}", std::numeric_limits<int>::max(), t.shape[i]));
    }
  }
}

void expect_dim(const TensorRef& t, const char* name, size_t i, int64_t expected,
                const char* meaning) {
  if (t.shape[i] != expected) {
    throw InvalidArgument(dim_name(name, "shape", i),
                          fmt::format("expected {} ({}), got {}", expected, meaning, t.shape[i]));
  }
}

void check_head_dim(int64_t d, const char* name, const char* tensor_dim) {
  if (d < 8 || d > kMaxHeadDim || d % 8 != 0) {
    throw InvalidArgument(name, fmt::format("supported head dims are multiples of 8 from 8 to {}, "
                                            "got {} ({})",
                                            kMaxHeadDim, d, tensor_dim));
  }
}

// q/k/v/o: the kernel moves 16-byte vectors along the last dim, so every row must start on a
// 16-byte boundary. A dim of size 1 is never stepped along, so its stride is ignored (as torch
// does for contiguity).
// A tensor with no elements is never touched, so its pointer and strides are not checked
// (torch hands out null or arbitrary pointers for those).
void check_io_layout(const TensorRef& t, const char* name, bool written) {
  if (element_count(t) == 0) return;
  if (t.data == nullptr) {
    throw InvalidArgument(
        fmt::format("{}.data", name),
        fmt::format("must not be null for a tensor with {} elements", element_count(t)));
  }
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) {
    throw InvalidArgument(fmt::format("{}.data", name),
                          fmt::format("must be 16-byte aligned, got {}", address(t.data)));
  }
  if (t.stride[3] != 1) {
    throw InvalidArgument(
        dim_name(name, "stride", 3),
        fmt::format("last dim must be contiguous (stride 1), got {}", t.stride[3]));
  }
  for (size_t i = 0; i < 3; ++i) {
    if (t.shape[i] <= 1) continue;
    if (t.stride[i] < 0 || t.stride[i] % 8 != 0) {
      throw InvalidArgument(dim_name(name, "stride", i),
                            fmt::format("must be a non-negative multiple of 8 elements (16 "
                                        "bytes), got {}",
                                        t.stride[i]));
    }
    // A zero stride on an output dim would make several rows write the same memory.
    if (written && t.stride[i] == 0) {
      throw InvalidArgument(dim_name(name, "stride", i),
                            fmt::format("must be > 0 for an output dim of size {} (rows would "
                                        "overlap), got 0",
                                        t.shape[i]));
    }
  }
}

void check_bias(const AttentionArgs& args, const Problem& p) {
  const TensorRef& b = args.bias;
  if (b.dtype != p.dtype) {
    throw InvalidArgument("bias.dtype", fmt::format("must equal q's dtype ({}), got {}",
                                                    dtype_name(p.dtype), dtype_name(b.dtype)));
  }
  check_shape_range(b, "bias");
  const bool packed = p.varlen == VarlenKind::packed;
  const int64_t wanted[4] = {p.batch, p.heads_q, p.seqlen_q, p.seqlen_k};
  const char* meaning[4] = {"batch", "heads_q", "seqlen_q", "seqlen_k"};
  for (size_t i = 0; i < 4; ++i) {
    const int64_t got = b.shape[i];
    if (got == 1 || got == wanted[i]) continue;
    // Packed: the seq dims are indexed within each sequence, so anything covering the longest
    // sequence works (e.g. one bias allocated for a larger max_seqlen).
    if (packed && i >= 2 && got >= wanted[i]) continue;
    throw InvalidArgument(
        dim_name("bias", "shape", i),
        fmt::format("must be {}{} ({}{}) or 1 (broadcast), got {}", packed && i >= 2 ? ">= " : "",
                    wanted[i], packed && i >= 2 ? "max_" : "", meaning[i], got));
  }
  // Bias rows are read element-wise, not in 16-byte vectors: seqlen_k need not be a multiple
  // of 8 (4097-long biases are common), so only natural alignment is required.
  if (reinterpret_cast<uintptr_t>(b.data) % static_cast<uintptr_t>(dtype_size(b.dtype)) != 0) {
    throw InvalidArgument("bias.data", fmt::format("must be {}-byte aligned, got {}",
                                                   dtype_size(b.dtype), address(b.data)));
  }
  for (size_t i = 0; i < 4; ++i) {
    if (b.shape[i] <= 1) continue;  // broadcast: stride ignored
    if (i == 3 && b.stride[3] != 1) {
      throw InvalidArgument(
          "bias.stride[3]",
          fmt::format("seqlen_k dim must be contiguous (stride 1), got {}", b.stride[3]));
    }
    if (b.stride[i] < 0) {
      throw InvalidArgument(dim_name("bias", "stride", i),
                            fmt::format("must be non-negative, got {}", b.stride[i]));
    }
  }
}

void forbid_pointer(const void* ptr, const char* name, VarlenKind varlen, const char* used_with) {
  if (ptr != nullptr) {
    throw InvalidArgument(name, fmt::format("is only used with {} varlen, but varlen is {} "
                                            "(set it to null)",
                                            used_with, varlen_name(varlen)));
  }
}

void check_packed_counts(const AttentionArgs& args, Problem& p) {
  if (args.batch < 0) {
    throw InvalidArgument(
        "batch", fmt::format("must be >= 0 (number of packed sequences), got {}", args.batch));
  }
  p.batch = args.batch;
  p.seqlen_q = args.max_seqlen_q;
  p.seqlen_k = args.max_seqlen_k;
  const bool nothing_to_do = p.batch == 0 || p.total_q == 0 || p.total_k == 0 || p.heads_q == 0;
  const int lowest = nothing_to_do ? 0 : 1;
  if (args.max_seqlen_q < lowest || args.max_seqlen_q > p.total_q) {
    throw InvalidArgument("max_seqlen_q", fmt::format("must be in [{}, {}] (total query tokens), "
                                                      "got {}",
                                                      lowest, p.total_q, args.max_seqlen_q));
  }
  if (args.max_seqlen_k < lowest || args.max_seqlen_k > p.total_k) {
    throw InvalidArgument("max_seqlen_k", fmt::format("must be in [{}, {}] (total key tokens), "
                                                      "got {}",
                                                      lowest, p.total_k, args.max_seqlen_k));
  }
  if (nothing_to_do) return;  // no offsets are read
  if (args.cu_seqlens_q == nullptr) {
    throw InvalidArgument("cu_seqlens_q", "packed varlen needs batch+1 int32 offsets, got null");
  }
  if (args.cu_seqlens_k == nullptr) {
    throw InvalidArgument("cu_seqlens_k", "packed varlen needs batch+1 int32 offsets, got null");
  }
}

}  // namespace

Problem validate(const AttentionArgs& args) {
  const TensorRef& q = args.q;
  const TensorRef& k = args.k;
  const TensorRef& v = args.v;
  const TensorRef& o = args.o;
  Problem p;

  // Types. f32 is valid here; only the CPU backend runs it (the GPU path refuses it).
  if (q.dtype != DType::f16 && q.dtype != DType::bf16 && q.dtype != DType::f32) {
    throw InvalidArgument("q.dtype",
                          fmt::format("must be f16, bf16 or f32, got {}", dtype_name(q.dtype)));
  }
  p.dtype = q.dtype;
  const std::pair<const TensorRef*, const char*> others[] = {{&k, "k"}, {&v, "v"}, {&o, "o"}};
  for (const auto& [t, name] : others) {
    if (t->dtype != q.dtype) {
      throw InvalidArgument(fmt::format("{}.dtype", name),
                            fmt::format("must equal q's dtype ({}), got {}", dtype_name(q.dtype),
                                        dtype_name(t->dtype)));
    }
  }

  // Shapes: sizes come from q (batch, seq, heads, dim), k (seq, heads) and v (dim).
  check_shape_range(q, "q");
  check_shape_range(k, "k");
  check_shape_range(v, "v");
  check_shape_range(o, "o");
  p.varlen = args.varlen;
  const bool packed = args.varlen == VarlenKind::packed;
  if (packed) {
    const char* meaning = "packed varlen holds all sequences in batch dim 1";
    expect_dim(q, "q", 0, 1, meaning);
    expect_dim(k, "k", 0, 1, meaning);
    expect_dim(v, "v", 0, 1, meaning);
    expect_dim(o, "o", 0, 1, meaning);
  } else {
    expect_dim(k, "k", 0, q.shape[0], "batch of q");
    expect_dim(v, "v", 0, q.shape[0], "batch of q");
    expect_dim(o, "o", 0, q.shape[0], "batch of q");
  }
  p.batch = static_cast<int>(q.shape[0]);
  p.total_q = static_cast<int>(q.shape[1]);
  p.total_k = static_cast<int>(k.shape[1]);
  p.seqlen_q = p.total_q;
  p.seqlen_k = p.total_k;
  p.heads_q = static_cast<int>(q.shape[2]);
  p.heads_kv = static_cast<int>(k.shape[2]);
  p.head_dim = static_cast<int>(q.shape[3]);
  p.head_dim_v = static_cast<int>(v.shape[3]);
  expect_dim(k, "k", 3, p.head_dim, "head_dim of q");
  expect_dim(v, "v", 1, p.total_k, "seqlen of k");
  expect_dim(v, "v", 2, p.heads_kv, "heads of k");
  expect_dim(o, "o", 1, p.total_q, "seqlen of q");
  expect_dim(o, "o", 2, p.heads_q, "heads of q");
  expect_dim(o, "o", 3, p.head_dim_v, "head_dim of v");
  if (p.heads_kv == 0 ? p.heads_q != 0 : p.heads_q % p.heads_kv != 0) {
    throw InvalidArgument("k.shape[2]", fmt::format("heads_q ({}) must be a multiple of heads_kv "
                                                    "({})",
                                                    p.heads_q, p.heads_kv));
  }
  check_head_dim(p.head_dim, "head_dim", "q.shape[3]");
  check_head_dim(p.head_dim_v, "head_dim_v", "v.shape[3]");

  // Sequence layout.
  switch (args.varlen) {
    case VarlenKind::none:
      forbid_pointer(args.cu_seqlens_q, "cu_seqlens_q", args.varlen, "packed");
      forbid_pointer(args.cu_seqlens_k, "cu_seqlens_k", args.varlen, "packed");
      forbid_pointer(args.seqused_q, "seqused_q", args.varlen, "padded");
      forbid_pointer(args.seqused_k, "seqused_k", args.varlen, "padded");
      break;
    case VarlenKind::padded:
      forbid_pointer(args.cu_seqlens_q, "cu_seqlens_q", args.varlen, "packed");
      forbid_pointer(args.cu_seqlens_k, "cu_seqlens_k", args.varlen, "packed");
      break;
    case VarlenKind::packed:
      // seqused would be silently ignored by packed kernels: refuse it instead.
      forbid_pointer(args.seqused_q, "seqused_q", args.varlen, "padded");
      forbid_pointer(args.seqused_k, "seqused_k", args.varlen, "padded");
      check_packed_counts(args, p);
      break;
  }

  // Memory layouts.
  check_io_layout(q, "q", false);
  check_io_layout(k, "k", false);
  check_io_layout(v, "v", false);
  check_io_layout(o, "o", true);

  // Modifiers.
  p.mask = args.mask;
  if (args.window) {
    if (args.window->left < -1) {
      throw InvalidArgument(
          "window.left", fmt::format("must be >= -1 (-1 = unbounded), got {}", args.window->left));
    }
    if (args.window->right < -1) {
      throw InvalidArgument("window.right", fmt::format("must be >= -1 (-1 = unbounded), got {}",
                                                        args.window->right));
    }
    p.window = true;
    p.window_left = args.window->left;
    p.window_right = args.window->right;
  }
  if (!std::isfinite(args.softcap) || args.softcap < 0.0f) {
    throw InvalidArgument("softcap",
                          fmt::format("must be finite and >= 0 (0 = off), got {}", args.softcap));
  }
  p.softcap = args.softcap;
  if (args.scale) {
    if (!std::isfinite(*args.scale) || *args.scale <= 0.0f) {
      throw InvalidArgument("scale", fmt::format("must be finite and > 0, got {}", *args.scale));
    }
    p.scale = *args.scale;
  } else {
    p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.head_dim)));
  }
  if (!args.bias.empty()) {
    check_bias(args, p);
    p.bias = true;
    // The kernels stream bias tiles into shared memory (16-byte cp.async chunks on the mma.sync
    // family, TMA boxes on the Hopper family) when every row starts 16-byte aligned and holds whole
    // chunks (so no chunk reads past a row's end, which memcheck flags even when the copy size is
    // clamped), and the query dim holds distinct rows (a TMA box cannot repeat one row). Other
    // layouts (seqlen_k 211, key or query broadcast, expanded stride-0 dims) read per element.
    const TensorRef& t = args.bias;
    auto aligned_stride = [&](size_t d) {
      return t.shape[d] == 1 || (t.stride[d] % 8 == 0 && t.stride[d] != 0);
    };
    p.bias_tileable = t.shape[3] > 1 && t.shape[3] % 8 == 0 && t.stride[3] == 1 &&
                      (t.shape[2] > 1 || p.seqlen_q <= 1) && aligned_stride(0) && aligned_stride(1) &&
                      aligned_stride(2) && reinterpret_cast<uintptr_t>(t.data) % 16 == 0;
  }
  if (args.alibi_slopes != nullptr) {
    if (reinterpret_cast<uintptr_t>(args.alibi_slopes) % alignof(float) != 0) {
      throw InvalidArgument("alibi_slopes", fmt::format("must be 4-byte aligned (fp32), got {}",
                                                        address(args.alibi_slopes)));
    }
    p.alibi = true;
  }
  if (args.lse != nullptr) {
    if (reinterpret_cast<uintptr_t>(args.lse) % alignof(float) != 0) {
      throw InvalidArgument(
          "lse", fmt::format("must be 4-byte aligned (fp32), got {}", address(args.lse)));
    }
    p.lse = true;
  }
  if (!std::isfinite(args.dropout_p) || args.dropout_p < 0.0f || args.dropout_p >= 1.0f) {
    throw InvalidArgument("dropout_p", fmt::format("must be in [0, 1) (0 = off), got {}",
                                                   args.dropout_p));
  }
  p.dropout_p = args.dropout_p;
  return p;
}

namespace {

// A gradient (or dO) must have the logical shape of the tensor it belongs to.
void expect_same_shape(const TensorRef& t, const char* name, const TensorRef& like,
                       const char* like_name) {
  for (size_t i = 0; i < 4; ++i) {
    if (t.shape[i] != like.shape[i]) {
      throw InvalidArgument(dim_name(name, "shape", i),
                            fmt::format("must equal {}.shape[{}] ({}), got {}", like_name, i,
                                        like.shape[i], t.shape[i]));
    }
  }
}

void expect_dtype(const TensorRef& t, const char* name, DType want) {
  if (t.dtype != want) {
    throw InvalidArgument(fmt::format("{}.dtype", name),
                          fmt::format("must equal q's dtype ({}), got {}", dtype_name(want),
                                      dtype_name(t.dtype)));
  }
}

}  // namespace

Problem validate_backward(const AttentionArgs& args, const BackwardArgs& grads) {
  Problem p = validate(args);
  if (p.has_output_rows() && !p.empty() && args.lse == nullptr) {
    throw InvalidArgument("lse", "backward needs the forward's log-sum-exp (run forward with lse "
                                 "set), got null");
  }
  const std::pair<const TensorRef*, const char*> like[] = {
      {&args.o, "o"}, {&args.q, "q"}, {&args.k, "k"}, {&args.v, "v"}};
  const std::pair<const TensorRef*, const char*> grad[] = {
      {&grads.d_o, "d_o"}, {&grads.dq, "dq"}, {&grads.dk, "dk"}, {&grads.dv, "dv"}};
  for (size_t i = 0; i < 4; ++i) {
    expect_dtype(*grad[i].first, grad[i].second, p.dtype);
    check_shape_range(*grad[i].first, grad[i].second);
    expect_same_shape(*grad[i].first, grad[i].second, *like[i].first, like[i].second);
    check_io_layout(*grad[i].first, grad[i].second, /*written=*/i > 0);
  }
  if (!grads.dbias.empty()) {
    if (!p.bias) {
      throw InvalidArgument("dbias", "is only written for a bias tensor, but bias is empty");
    }
    expect_dtype(grads.dbias, "dbias", p.dtype);
    check_shape_range(grads.dbias, "dbias");
    expect_same_shape(grads.dbias, "dbias", args.bias, "bias");
    if (reinterpret_cast<uintptr_t>(grads.dbias.data) % 2 != 0) {
      throw InvalidArgument("dbias.data", fmt::format("must be 2-byte aligned, got {}",
                                                      address(grads.dbias.data)));
    }
    for (size_t i = 0; i < 4; ++i) {
      if (grads.dbias.shape[i] > 1 && grads.dbias.stride[i] <= 0) {
        throw InvalidArgument(dim_name("dbias", "stride", i),
                              fmt::format("must be > 0 for an output dim of size {}, got {}",
                                          grads.dbias.shape[i], grads.dbias.stride[i]));
      }
    }
    p.dbias = true;
    p.dbias_elements = element_count(grads.dbias);
  }
  return p;
}

}  // namespace jitattn
