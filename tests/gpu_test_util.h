// Helpers shared by the GPU test binaries: the skip-without-a-GPU guard, one cache-less engine, the
// common base problem, the feature cases every suite shares and the failure text of a forward check.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "jitattn/engine.h"
#include "runtime/device/driver.h"
#include "runtime/harness.h"

/// Skips the test (with the reason) when there is no CUDA driver or device.
#define JITATTN_REQUIRE_GPU()                                                         \
  do {                                                                                \
    std::string why_;                                                                 \
    if (!::jitattn::device::driver_available(&why_) ||                                \
        ::jitattn::device::device_count() == 0) {                                     \
      GTEST_SKIP() << "no CUDA device: " << (why_.empty() ? "no GPU found" : why_);   \
    }                                                                                 \
  } while (0)

namespace jitattn::test {

/// The engine GPU tests share. It has no cache, so results never depend on what earlier runs
/// stored.
Engine& gpu_engine();

/// bf16 (or `dt`), batch 2, 3 heads, seqlen 190 x 211, head dim `d`, LSE on: small, odd-sized,
/// sq != sk.
harness::ProblemDesc gpu_base(int d, DType dt = DType::bf16);

/// Adds a feature case: its test name and problem.
using AddCase = std::function<void(std::string, harness::ProblemDesc)>;

/// Masks every GPU suite covers per head dim, from gpu_base(d): bottom-right causal with more keys
/// than queries, then with rows that see no key (output 0 / zero gradients, never NaN), a window
/// on both sides, causal with a left window.
void add_mask_cases(int d, const AddCase& add);

/// Head and sequence layouts every GPU suite covers per head dim: GQA, MQA causal, packed varlen
/// causal, padded varlen bottom-right causal.
void add_layout_cases(int d, const AddCase& add);

/// What a failed forward check prints: the problem, config, seed and every error figure.
std::string check_failure(const harness::ProblemDesc& d, const harness::CheckResult& r);

}  // namespace jitattn::test
