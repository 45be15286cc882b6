// Helpers shared by the GPU test binaries: the skip-without-a-GPU guard, one cache-less engine, the
// common base problem and the failure text of a forward check.
#pragma once

#include <gtest/gtest.h>

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

/// What a failed forward check prints: the problem, config, seed and every error figure.
std::string check_failure(const harness::ProblemDesc& d, const harness::CheckResult& r);

}  // namespace jitattn::test
