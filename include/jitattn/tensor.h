// Element types and strided tensor references passed to the API.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace jitattn {

/// Element type of a tensor. Attention inputs are f16 or bf16 (fp32 accumulation inside); the
/// CPU backend also takes f32.
enum class DType { f16, bf16, f32 };

/// Bytes per element.
constexpr int dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }
/// "f16", "bf16", "f32".
std::string_view dtype_name(DType t);
/// Parses "f16"/"fp16"/"half", "bf16", "f32"/"fp32"; throws InvalidArgument otherwise.
DType parse_dtype(std::string_view s);

/// A view of device memory with a logical 4-d shape and strides in elements.
///
/// Q, K, V and O use the logical order [batch, seq, heads, dim]; any physical layout is expressed
/// through strides (the last, `dim`, must have stride 1). For example a [batch, heads, seq, dim]
/// buffer is shape {b, s, h, d} with strides {h*s*d, d, s*d, 1}. Packed variable-length inputs use
/// batch 1 and seq = total tokens. A bias tensor uses the order [batch, heads, seq_q, seq_k] and
/// broadcasts a dimension whose size is 1 (its stride is then ignored).
struct TensorRef {
  const void* data = nullptr;
  DType dtype = DType::bf16;
  std::array<int64_t, 4> shape{};
  std::array<int64_t, 4> stride{};

  bool empty() const { return data == nullptr; }
  /// A contiguous tensor of the given logical shape (row-major in that order).
  static TensorRef contiguous(const void* data, DType dtype, std::array<int64_t, 4> shape);
};

}  // namespace jitattn
