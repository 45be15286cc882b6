// The CPU device layer: in-process clang compile, ORC loading, and the thread pool.
#include "runtime/device/cpu_jit.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "jitattn/error.h"

namespace jitattn::device {
namespace {

// The kernel ABI with a trivial body: p points at {float* out, float add}; item i writes i + add.
constexpr const char* kSource = R"(
struct P { float* out; float add; };
static float twice(float x) { return x + x; }
extern "C" void test_kernel(const void* params, long long begin, long long end) {
  const P* p = static_cast<const P*>(params);
  for (long long i = begin; i < end; ++i) p->out[i] = twice(static_cast<float>(i)) * 0.5f + p->add;
}
)";

struct P {
  float* out;
  float add;
};

class CpuJit : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cpu_jit_available()) GTEST_SKIP() << "built without LLVM (JITATTN_WITH_LLVM=OFF)";
  }
};

TEST_F(CpuJit, CompilesLoadsAndRuns) {
  const CpuCompileResult r = compile_cpu(kSource, "test_kernel");
  ASSERT_FALSE(r.object.empty());
  EXPECT_EQ(r.kernel_name, "test_kernel");
  EXPECT_GT(r.compile_ms, 0.0);
  const CpuModule m = CpuModule::load(r.object, "test_kernel");
  ASSERT_NE(m.kernel(), nullptr);
  std::vector<float> out(1000, -1.0f);
  P p{out.data(), 3.5f};
  m.kernel()(&p, 10, 900);
  EXPECT_EQ(out[9], -1.0f);
  EXPECT_EQ(out[10], 13.5f);
  EXPECT_EQ(out[899], 902.5f);
  EXPECT_EQ(out[900], -1.0f);
}

TEST_F(CpuJit, ObjectBytesReloadInAnotherModule) {
  // What the binary cache does: keep the object, load it later without compiling.
  const std::vector<char> object = compile_cpu(kSource, "test_kernel").object;
  CpuModule a = CpuModule::load(object, "test_kernel");
  CpuModule b = CpuModule::load(object, "test_kernel");
  EXPECT_NE(a.kernel(), b.kernel());  // two JIT instances, two copies of the code
  std::vector<float> out(4, 0.0f);
  P p{out.data(), 1.0f};
  b.kernel()(&p, 0, 4);
  a = CpuModule();  // unloading one leaves the other working
  b.kernel()(&p, 0, 4);
  EXPECT_EQ(out[3], 4.0f);
}

TEST_F(CpuJit, CompileErrorCarriesDiagnostics) {
  try {
    compile_cpu("extern \"C\" void k(const void*, long long, long long) { undeclared_thing(); }", "k");
    FAIL() << "expected CompileError";
  } catch (const CompileError& e) {
    EXPECT_NE(e.log().find("undeclared_thing"), std::string::npos) << e.log();
    EXPECT_NE(e.options().find("-O3"), std::string::npos);
  }
}

TEST_F(CpuJit, MissingKernelIsACompileError) {
  EXPECT_THROW(compile_cpu(kSource, "not_defined_here"), CompileError);
}

TEST_F(CpuJit, NoStandardHeaders) {
  // Generated CPU code must be self-contained: the in-process compile has no include paths.
  EXPECT_THROW(compile_cpu("#include <cmath>\nextern \"C\" void k(const void*, long long, long long) {}", "k"),
               CompileError);
}

TEST_F(CpuJit, HostCpuIsDescribed) {
  const HostCpu& cpu = host_cpu();
  EXPECT_FALSE(cpu.triple.empty());
  EXPECT_FALSE(cpu.name.empty());
  EXPECT_GE(cpu.threads, 1);
  EXPECT_EQ(cpu.arch_key().rfind("cpu-" + cpu.name + "-", 0), 0u) << cpu.arch_key();
  EXPECT_NE(llvm_version(), "none");
}

TEST(ParallelFor, EveryItemExactlyOnce) {
  for (long long items : {1LL, 7LL, 1000LL, 12345LL}) {
    for (long long grain : {1LL, 3LL, 64LL}) {
      std::vector<std::atomic<int>> seen(static_cast<size_t>(items));
      parallel_for(items, grain, [&](long long b, long long e) {
        ASSERT_LE(e - b, grain);
        for (long long i = b; i < e; ++i) seen[static_cast<size_t>(i)].fetch_add(1);
      });
      for (long long i = 0; i < items; ++i) ASSERT_EQ(seen[static_cast<size_t>(i)].load(), 1) << items << " " << grain << " " << i;
    }
  }
}

// Kernels keep up to kCpuScratchBudget of blocks on the stack: items run on the pool's own
// threads, whose stacks hold several MiB, never on the caller's.
TEST(ParallelFor, RunsOnWorkersWithLargeStacks) {
  const auto caller = std::this_thread::get_id();
  std::atomic<int> on_caller{0};
  std::atomic<long long> sum{0};
  parallel_for(8, 1, [&](long long b, long long) {
    if (std::this_thread::get_id() == caller) ++on_caller;
    volatile char big[12 << 20];  // 12 MiB: more than an ordinary 8 MiB thread or main stack
    big[0] = static_cast<char>(b);
    big[sizeof(big) - 1] = 1;
    sum += big[0] + big[sizeof(big) - 1];
  });
  EXPECT_EQ(on_caller.load(), 0);
  EXPECT_EQ(sum.load(), 28 + 8);
}

TEST(ParallelFor, RethrowsTheFirstError) {
  std::atomic<int> calls{0};
  EXPECT_THROW(parallel_for(100, 1,
                            [&](long long b, long long) {
                              ++calls;
                              if (b == 5) throw std::runtime_error("item 5");
                            }),
               std::runtime_error);
  // The pool is usable after an error.
  std::atomic<long long> sum{0};
  parallel_for(100, 1, [&](long long b, long long e) {
    for (long long i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 4950);
}

}  // namespace
}  // namespace jitattn::device
