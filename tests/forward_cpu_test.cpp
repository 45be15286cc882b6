// The runtime API on the CPU backend: device selection, the engine's kernel table and binary
// cache, config handling and errors, through the same harness `jitattn check` uses. (The
// kernels' numerics over the whole feature grid are cpu_kernel_test's.)
#include <gtest/gtest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "jitattn/jitattn.h"
#include "runtime/device/cpu_jit.h"
#include "runtime/harness.h"
#include "tests/test_util.h"

namespace jitattn {
namespace {

using harness::ProblemDesc;

class ForwardCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!device::cpu_jit_available()) GTEST_SKIP() << "built without LLVM (JITATTN_WITH_LLVM=OFF)";
  }
  test::TempDir dir_{"jitattn-fwdcpu"};
  EngineOptions options() const {
    EngineOptions o;
    o.cache_path = (dir_ / "cache.db").string();
    return o;
  }
};

ProblemDesc cpu_problem(DType dtype, int d) {
  ProblemDesc p;
  p.device = Device::cpu();
  p.dtype = dtype;
  p.batch = 2;
  p.heads_q = 4;
  p.heads_kv = 2;
  p.seqlen_q = 67;
  p.seqlen_k = 93;
  p.head_dim = d;
  return p;
}

TEST_F(ForwardCpu, HarnessProblemsMatchTheReference) {
  Engine engine(options());
  std::vector<ProblemDesc> cases;
  cases.push_back(cpu_problem(DType::f32, 64));
  auto p = cpu_problem(DType::bf16, 80);
  p.mask = MaskKind::causal_bottom_right;
  p.lse = true;
  cases.push_back(p);
  p = cpu_problem(DType::f16, 128);
  p.varlen = VarlenKind::packed;
  p.bias = "1hqk";
  cases.push_back(p);
  p = cpu_problem(DType::f32, 96);
  p.head_dim_v = 40;
  p.layout = {0, 2, 1, 3};
  p.window = Window{16, 4};
  p.alibi = true;
  p.softcap = 20.0f;
  p.lse = true;
  cases.push_back(p);
  p = cpu_problem(DType::bf16, 256);
  p.varlen = VarlenKind::padded;
  p.mask = MaskKind::causal;
  cases.push_back(p);
  for (const ProblemDesc& c : cases) {
    const harness::CheckResult r = harness::check(engine, c);
    EXPECT_TRUE(r.pass) << harness::describe(c) << ": rel err " << r.rel_err << " lse " << r.lse_rel_err
                        << " seed " << r.seed;
    EXPECT_EQ(r.kernel.backend, "cpu");
    EXPECT_EQ(r.kernel.device, -1);
    EXPECT_EQ(r.kernel.target, device::host_cpu().arch_key());
    EXPECT_NE(r.kernel.name.find("attn_fwd_cpu_"), std::string::npos) << r.kernel.name;
  }
}

// Host memory with the device left automatic runs on the CPU (also on a machine with a GPU).
TEST_F(ForwardCpu, AutomaticDeviceRunsHostMemoryOnTheCpu) {
  auto rng = test::seeded_rng();
  auto q = test::random_tensor(DType::f32, {1, 33, 2, 64}, rng);
  auto k = test::random_tensor(DType::f32, {1, 40, 2, 64}, rng);
  auto v = test::random_tensor(DType::f32, {1, 40, 2, 64}, rng);
  auto o = test::poisoned_tensor(DType::f32, {1, 33, 2, 64});
  AttentionArgs a;
  a.q = q.ref;
  a.k = k.ref;
  a.v = v.ref;
  a.o = o.ref;
  ASSERT_EQ(a.device.kind, Device::Kind::automatic);
  Engine engine(options());
  const KernelReport r = engine.forward(a);
  EXPECT_EQ(r.backend, "cpu");
  for (double x : test::to_double(o.ref)) ASSERT_TRUE(std::isfinite(x));
}

TEST_F(ForwardCpu, SecondEngineLoadsTheCachedObjectWithoutCompiling) {
  const ProblemDesc p = cpu_problem(DType::bf16, 72);
  {
    Engine first(options());
    const harness::CheckResult r = harness::check(first, p);
    ASSERT_TRUE(r.pass);
    EXPECT_TRUE(r.kernel.compiled_now);
    EXPECT_FALSE(r.kernel.binary_from_cache);
    EXPECT_EQ(first.compile_count(), 1);
    // The same engine reuses its loaded kernel.
    const harness::CheckResult again = harness::check(first, p);
    EXPECT_FALSE(again.kernel.compiled_now);
    EXPECT_EQ(first.compile_count(), 1);
  }
  Engine second(options());
  const harness::CheckResult r = harness::check(second, p);
  EXPECT_TRUE(r.pass);
  EXPECT_TRUE(r.kernel.binary_from_cache);
  EXPECT_FALSE(r.kernel.compiled_now);
  EXPECT_EQ(second.compile_count(), 0);
}

TEST_F(ForwardCpu, OnFirstUseTunesOnceThenTheCacheServesIt) {
  EngineOptions eo = options();
  eo.tune = TunePolicy::on_first_use;
  eo.tune_budget_seconds = 1;
  ProblemDesc p = cpu_problem(DType::f32, 48);
  p.mask = MaskKind::causal;
  {
    Engine tuning(eo);
    const auto first = harness::check(tuning, p);  // tunes, then runs the winner
    EXPECT_TRUE(first.pass);
    EXPECT_EQ(first.kernel.config_source, "tuned-now") << first.kernel.config_reason;
    const auto second = harness::check(tuning, p);  // same process: no second tuning
    EXPECT_TRUE(second.pass);
    EXPECT_EQ(second.kernel.config, first.kernel.config);
  }
  eo.tune = TunePolicy::off;
  Engine later(eo);  // a new engine: the tuned row and the winner's object come from the file
  const auto r = harness::check(later, p);
  EXPECT_TRUE(r.pass);
  EXPECT_EQ(r.kernel.config_source, "exact") << r.kernel.config_reason;
  EXPECT_TRUE(r.kernel.binary_from_cache);
  EXPECT_EQ(later.compile_count(), 0);
}

TEST_F(ForwardCpu, ForcedConfigIsUsedAndIllegalOnesAreRefused) {
  Engine engine(options());
  ProblemDesc p = cpu_problem(DType::f32, 64);
  ForwardOptions fo;
  fo.config = "cpu_bm16_bn32";
  const harness::CheckResult r = harness::check(engine, p, fo);
  EXPECT_TRUE(r.pass);
  EXPECT_EQ(r.kernel.config, "cpu_bm16_bn32");
  EXPECT_EQ(r.kernel.config_source, "forced");
  for (const char* bad : {"cpu_bm7_bn32", "bm128_bn64_w4_s2"}) {
    fo.config = bad;
    try {
      harness::check(engine, p, fo);
      ADD_FAILURE() << bad << ": expected InvalidArgument";
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(e.argument(), "config") << e.what();
    }
  }
}

TEST_F(ForwardCpu, ConcurrentCallersShareTheEngineAndThePool) {
  Engine engine(options());
  std::vector<int> ok(4, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      ProblemDesc p = cpu_problem(i % 2 ? DType::f32 : DType::bf16, 64 + 8 * (i / 2));
      ok[static_cast<size_t>(i)] = harness::check(engine, p).pass ? 1 : 0;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(ok[static_cast<size_t>(i)], 1) << "thread " << i;
}

TEST_F(ForwardCpu, NoKeysGivesZeroOutputAndNegInfLse) {
  auto rng = test::seeded_rng();
  auto q = test::random_tensor(DType::bf16, {2, 19, 3, 64}, rng);
  auto o = test::poisoned_tensor(DType::bf16, {2, 19, 3, 64});
  std::vector<float> lse(2 * 3 * 19, std::nanf(""));
  AttentionArgs a;
  a.device = Device::cpu();
  a.q = q.ref;
  a.k = TensorRef::contiguous(nullptr, DType::bf16, {2, 0, 3, 64});
  a.v = TensorRef::contiguous(nullptr, DType::bf16, {2, 0, 3, 64});
  a.o = o.ref;
  a.lse = lse.data();
  Engine engine(options());
  engine.forward(a);
  for (double x : test::to_double(o.ref)) ASSERT_EQ(x, 0.0);
  for (float x : lse) ASSERT_TRUE(std::isinf(x) && x < 0) << x;
}

TEST_F(ForwardCpu, BadInputIsRefusedBeforeAnythingRuns) {
  auto rng = test::seeded_rng();
  auto q = test::random_tensor(DType::f32, {1, 8, 2, 64}, rng);
  auto k = test::random_tensor(DType::f32, {1, 8, 2, 64}, rng);
  auto v = test::random_tensor(DType::f32, {1, 8, 2, 32}, rng);
  auto o = test::poisoned_tensor(DType::f32, {1, 8, 2, 64});  // dv is 32
  AttentionArgs a;
  a.device = Device::cpu();
  a.q = q.ref;
  a.k = k.ref;
  a.v = v.ref;
  a.o = o.ref;
  Engine engine(options());
  try {
    engine.forward(a);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument().rfind("o.shape", 0), 0u) << e.what();
  }
  EXPECT_EQ(engine.compile_count(), 0);
  for (double x : test::to_double(o.ref)) ASSERT_TRUE(std::isnan(x));  // untouched
}

TEST(DeviceParse, NamesAndOrdinals) {
  EXPECT_EQ(Device::parse("auto"), Device{});
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("cuda"), Device::cuda(0));
  EXPECT_EQ(Device::parse("cuda:3"), Device::cuda(3));
  EXPECT_EQ(Device::parse("2"), Device::cuda(2));
  EXPECT_EQ(Device::cuda(3).str(), "cuda:3");
  for (const char* bad : {"", "cuda:", "cuda:x", "tpu", "-1", "cuda:99999"}) {
    try {
      Device::parse(bad);
      ADD_FAILURE() << "'" << bad << "' parsed";
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(e.argument(), "device");
    }
  }
}

}  // namespace
}  // namespace jitattn
