#include "tests/test_util.h"

#include <unistd.h>

#include <atomic>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>

#include <gtest/gtest.h>

#include "runtime/numeric.h"

namespace jitattn::test {
namespace {

constexpr size_t kAlignment = 16;

size_t to_size(int64_t n) { return static_cast<size_t>(n); }

// Offset in elements of the last element + 1 (0 for a tensor with no elements).
int64_t extent(const TensorRef& t) {
  int64_t last = 0;
  for (size_t i = 0; i < 4; ++i) {
    if (t.shape[i] == 0) return 0;
    last += (t.shape[i] - 1) * t.stride[i];
  }
  return last + 1;
}

void fill_nan(void* data, DType dtype, int64_t count) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t i = 0; i < count; ++i) store_from_float(data, dtype, i, nan);
}

// Calls f(offset, logical_index) for every element in logical row-major order.
template <typename F>
void for_each_element(const TensorRef& t, F f) {
  int64_t n = 0;
  for (int64_t a = 0; a < t.shape[0]; ++a)
    for (int64_t b = 0; b < t.shape[1]; ++b)
      for (int64_t c = 0; c < t.shape[2]; ++c)
        for (int64_t d = 0; d < t.shape[3]; ++d)
          f(a * t.stride[0] + b * t.stride[1] + c * t.stride[2] + d * t.stride[3], n++);
}

}  // namespace

std::array<int64_t, 4> permuted_strides(std::array<int64_t, 4> shape, std::array<int, 4> perm,
                                        int64_t row_pad) {
  std::array<int64_t, 4> stride{};
  int64_t step = 1;
  for (int p = 3; p >= 0; --p) {
    const auto dim = static_cast<size_t>(perm[static_cast<size_t>(p)]);
    stride[dim] = step;
    // Like torch, a zero-size dim counts as 1 so that strides stay distinct.
    step *= std::max<int64_t>(shape[dim], 1) + (p == 3 ? row_pad : 0);
  }
  return stride;
}

HostTensor poisoned_tensor(DType dtype, std::array<int64_t, 4> shape, std::array<int, 4> perm,
                           int64_t row_pad) {
  HostTensor t;
  t.ref.dtype = dtype;
  t.ref.shape = shape;
  t.ref.stride = permuted_strides(shape, perm, row_pad);
  const int64_t count = extent(t.ref);
  t.span_bytes = to_size(count * dtype_size(dtype));
  t.storage.resize(t.span_bytes + kAlignment);
  void* base = t.storage.data();
  size_t space = t.storage.size();
  t.ref.data = std::align(kAlignment, t.span_bytes, base, space);
  fill_nan(t.data(), dtype, count);
  return t;
}

HostTensor random_tensor(DType dtype, std::array<int64_t, 4> shape, std::mt19937_64& rng, float lo,
                         float hi, std::array<int, 4> perm, int64_t row_pad) {
  HostTensor t = poisoned_tensor(dtype, shape, perm, row_pad);
  std::uniform_real_distribution<float> dist(lo, hi);
  void* data = t.data();
  for_each_element(t.ref, [&](int64_t offset, int64_t) {
    // Redraw values that round to zero: a zero could hide a kernel that drops the element.
    do {
      store_from_float(data, dtype, offset, dist(rng));
    } while (load_as_double(data, dtype, offset) == 0.0);
  });
  return t;
}

std::vector<double> to_double(const TensorRef& t) {
  int64_t count = 1;
  for (int64_t s : t.shape) count *= s;
  std::vector<double> out(to_size(count));
  for_each_element(t, [&](int64_t offset, int64_t n) {
    out[to_size(n)] = load_as_double(t.data, t.dtype, offset);
  });
  return out;
}

std::mt19937_64 seeded_rng() {
  uint64_t seed = 0;
  if (const char* env = std::getenv("JITATTN_TEST_SEED"); env != nullptr && *env != '\0') {
    seed = std::strtoull(env, nullptr, 0);
  } else {
    std::random_device device;
    seed = (uint64_t{device()} << 32) ^ device();
  }
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  std::cerr << "[ seed     ] JITATTN_TEST_SEED=" << seed << "\n";
  return std::mt19937_64(seed);
}

bool has_env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' && std::strcmp(value, "0") != 0;
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : fallback;
}

TempDir::TempDir(const std::string& prefix) {
  static std::atomic<int> counter{0};
  std::random_device rd;
  path_ = std::filesystem::temp_directory_path() /
          (prefix + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++) + "-" +
           std::to_string(rd()));
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace jitattn::test

namespace jitattn {
void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }
}  // namespace jitattn
