// Helpers shared by all tests: aligned host tensors with chosen physical layouts, filled with
// fresh random values; reproducible seeds; gathering tensors into logical order.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "jitattn/tensor.h"

namespace jitattn::test {

/// Host memory holding one tensor; `ref` points into `storage` at a 16-byte aligned address.
/// Move-only: copying the vector would leave `ref.data` pointing at the old buffer.
struct HostTensor {
  std::vector<std::byte> storage;
  TensorRef ref;
  /// Bytes from ref.data to the end of the last element (what to copy to a device buffer, which
  /// then takes the same shape and strides).
  size_t span_bytes = 0;

  HostTensor() = default;
  HostTensor(HostTensor&&) = default;
  HostTensor& operator=(HostTensor&&) = default;
  HostTensor(const HostTensor&) = delete;
  HostTensor& operator=(const HostTensor&) = delete;

  void* data() { return const_cast<void*>(ref.data); }
  const void* data() const { return ref.data; }
};

/// Strides for logical `shape` stored in the physical dim order `perm` (physical dim p holds
/// logical dim perm[p]; {0,1,2,3} is contiguous, {0,2,1,3} is [batch, heads, seq, dim]).
/// `row_pad` extra elements are added to the stride of the second-innermost physical dim
/// (a pitched layout); keep it a multiple of 8 for q/k/v/o.
std::array<int64_t, 4> permuted_strides(std::array<int64_t, 4> shape, std::array<int, 4> perm,
                                        int64_t row_pad = 0);

/// An uninitialised-looking tensor: every byte of the buffer (padding included) holds NaN, so a
/// kernel that skips an element, or reads padding, shows up as NaN.
HostTensor poisoned_tensor(DType dtype, std::array<int64_t, 4> shape,
                           std::array<int, 4> perm = {0, 1, 2, 3}, int64_t row_pad = 0);

/// A tensor of uniform values in [lo, hi] (rounded to dtype, never exactly 0) in the physical
/// layout `perm` (see permuted_strides). Padding between rows stays NaN.
HostTensor random_tensor(DType dtype, std::array<int64_t, 4> shape, std::mt19937_64& rng,
                         float lo = -1.0f, float hi = 1.0f, std::array<int, 4> perm = {0, 1, 2, 3},
                         int64_t row_pad = 0);

/// The elements of a host tensor in logical [d0][d1][d2][d3] order ([b][s][h][d] for q/k/v/o),
/// as doubles. Comparable element for element with reference::Result::out.
std::vector<double> to_double(const TensorRef& t);

/// A generator seeded from JITATTN_TEST_SEED when set, else from std::random_device. The seed is
/// recorded as the test property "seed" and printed, so a failure can be replayed with
/// JITATTN_TEST_SEED=<seed>.
std::mt19937_64 seeded_rng();

/// True when the environment variable is set to a non-empty value other than "0".
bool has_env(const char* name);
/// The variable's value, or `fallback` when unset.
std::string env_or(const char* name, const std::string& fallback);

/// A fresh folder under the system temp dir (unique per process and call), removed with
/// everything in it at scope exit.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "jitattn-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

}  // namespace jitattn::test

namespace jitattn {
/// Lets GoogleTest print DType parameters by name (found by argument-dependent lookup).
void PrintTo(DType t, std::ostream* os);
}  // namespace jitattn
