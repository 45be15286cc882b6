// DType names and contiguous TensorRef construction.
#include "jitattn/tensor.h"

#include <algorithm>
#include <cctype>
#include <string>

#include "jitattn/attention.h"
#include "jitattn/error.h"

namespace jitattn {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f32: return "f32";
  }
  return "unknown";
}

DType parse_dtype(std::string_view s) {
  // Case-insensitive so that CLI users can write "BF16" or "Half" as torch prints them.
  std::string lower(s);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower == "f16" || lower == "fp16" || lower == "half" || lower == "float16") return DType::f16;
  if (lower == "bf16" || lower == "bfloat16") return DType::bf16;
  if (lower == "f32" || lower == "fp32" || lower == "float32" || lower == "float")
    return DType::f32;
  throw InvalidArgument("dtype",
                        "expected one of f16/fp16/half/float16, bf16/bfloat16, "
                        "f32/fp32/float32, got \"" +
                            std::string(s) + "\"");
}

TensorRef TensorRef::contiguous(const void* data, DType dtype, std::array<int64_t, 4> shape) {
  TensorRef t;
  t.data = data;
  t.dtype = dtype;
  t.shape = shape;
  int64_t stride = 1;
  for (int i = 3; i >= 0; --i) {
    t.stride[static_cast<size_t>(i)] = stride;
    stride *= shape[static_cast<size_t>(i)];
  }
  return t;
}



Device Device::parse(std::string_view text) {
  auto ordinal = [&](std::string_view digits) {
    if (digits.empty() || digits.size() > 4 ||
        !std::all_of(digits.begin(), digits.end(), [](unsigned char c) { return std::isdigit(c); })) {
      throw InvalidArgument("device", "expected auto, cpu, cuda or cuda:N (N a device ordinal), got \"" +
                                          std::string(text) + "\"");
    }
    return std::stoi(std::string(digits));
  };
  if (text == "auto") return Device{};
  if (text == "cpu") return Device::cpu();
  if (text == "cuda" || text == "gpu") return Device::cuda(0);
  if (text.rfind("cuda:", 0) == 0) return Device::cuda(ordinal(text.substr(5)));
  return Device::cuda(ordinal(text));
}

std::string Device::str() const {
  switch (kind) {
    case Kind::automatic: return "auto";
    case Kind::cpu: return "cpu";
    case Kind::cuda: return "cuda:" + std::to_string(ordinal);
  }
  return "auto";
}

}  // namespace jitattn
