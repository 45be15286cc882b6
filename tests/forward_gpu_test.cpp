// Forward kernels on a GPU against the float64 reference, over the feature grid. Every case
// draws fresh random inputs and poisons the outputs first (runtime/harness.cpp). Skipped with a
// message when there is no GPU.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <thread>

#include "jitattn/jitattn.h"
#include "runtime/device/driver.h"
#include "runtime/harness.h"
#include "tests/gpu_test_util.h"

namespace jitattn {
namespace {

using harness::ProblemDesc;

// Tests run without the user's cache so results never depend on what earlier runs stored.
Engine& engine() { return test::gpu_engine(); }

void expect_pass(const ProblemDesc& d, const ForwardOptions& opt = {}) {
  const harness::CheckResult r = harness::check(engine(), d, opt);
  EXPECT_TRUE(r.pass) << test::check_failure(d, r);
  // A bias with 16-byte aligned rows and distinct query rows must take the shared-memory (tiled)
  // path; a query-broadcast one ([b, 1, 1, sk]) is read per element.
  const bool tileable = d.bias != "none" && d.bias[2] == 'q' && d.bias[3] == 'k' && d.seqlen_k % 8 == 0;
  if (d.bias != "none" && !tileable) {
    EXPECT_EQ(r.kernel.name.find("biastile"), std::string::npos) << r.kernel.name;
  }
  if (tileable) {
    EXPECT_NE(r.kernel.name.find("biastile"), std::string::npos) << r.kernel.name;
  }
  // Defaults must not spill; explicitly requested configs may (they are tuning candidates).
  if (opt.config.empty()) EXPECT_EQ(r.kernel.spill_bytes, 0) << r.kernel.name;
}

ProblemDesc base(int d, DType dt = DType::bf16) { return test::gpu_base(d, dt); }

// ---- every head dim, both dtypes -----------------------------------------------------------
class HeadDims : public ::testing::TestWithParam<std::tuple<int, DType>> {};
TEST_P(HeadDims, MatchesReference) {
  JITATTN_REQUIRE_GPU();
  auto [d, dt] = GetParam();
  ProblemDesc p = base(d, dt);
  expect_pass(p);
  p.mask = MaskKind::causal;
  expect_pass(p);
}
INSTANTIATE_TEST_SUITE_P(ForwardGpu, HeadDims,
                         ::testing::Combine(::testing::Range(8, 264, 8),
                                            ::testing::Values(DType::bf16, DType::f16)),
                         [](const auto& info) {
                           return fmt::format("d{}_{}", std::get<0>(info.param),
                                              dtype_name(std::get<1>(info.param)));
                         });

// ---- masks, modifiers, shapes -----------------------------------------------------------------
struct Case {
  std::string name;
  ProblemDesc desc;
  std::string config;  // empty = default
};

std::vector<Case> feature_cases() {
  std::vector<Case> cs;
  auto add = [&](std::string name, ProblemDesc p, std::string cfg = "") { cs.push_back({std::move(name), p, std::move(cfg)}); };
  const test::AddCase add_plain = [&](std::string name, ProblemDesc p) { add(std::move(name), p); };
  for (int d : {64, 80, 128, 256}) {
    test::add_mask_cases(d, add_plain);
    test::add_layout_cases(d, add_plain);
    ProblemDesc p = base(d);
    p.window = Window{-1, 5};
    add(fmt::format("window_right_only_d{}", d), p);
    p = base(d);
    p.alibi = true;
    add(fmt::format("alibi_d{}", d), p);
    p.mask = MaskKind::causal;
    add(fmt::format("alibi_causal_d{}", d), p);
    p = base(d);
    p.softcap = 5.0f;
    add(fmt::format("softcap_d{}", d), p);
    p = base(d);
    p.scale = 1.0f;
    p.dtype = DType::f16;
    add(fmt::format("scale_one_f16_d{}", d), p);
    for (const char* b : {"bhqk", "1hqk", "b1qk", "11qk", "b11k", "bh1k", "111k", "bhq1"}) {
      p = base(d);
      p.bias = b;
      add(fmt::format("bias_{}_d{}", b, d), p);
    }
    // seqlen_k 256: bias rows are 16-byte aligned, so the bias streams through shared memory
    // (spec bias_tiled); padded varlen makes chunks straddle each batch's end.
    for (const char* b : {"bhqk", "1hqk", "b1qk", "11qk", "b11k"}) {
      p = base(d);
      p.seqlen_k = 256;
      p.bias = b;
      add(fmt::format("biastile_{}_d{}", b, d), p);
    }
    p = base(d);
    p.seqlen_k = 256;
    p.bias = "1hqk";
    p.varlen = VarlenKind::padded;
    p.mask = MaskKind::causal_bottom_right;
    add(fmt::format("biastile_padded_causal_br_d{}", d), p);
    p.varlen = VarlenKind::packed;
    p.alibi = true;
    p.softcap = 10.0f;
    add(fmt::format("biastile_packed_alibi_softcap_d{}", d), p);
    add(fmt::format("biastile_packed_alibi_softcap_single_buffer_d{}", d), p, "bm64_bn64_w4_s1");
    p = base(d);
    p.layout = {0, 2, 1, 3};
    add(fmt::format("layout_bhsd_d{}", d), p);
    p = base(d);
    p.alibi = true;
    p.bias = "1hqk";
    p.softcap = 20.0f;
    p.mask = MaskKind::causal;
    p.window = Window{64, 0};
    p.varlen = VarlenKind::packed;
    p.heads_q = 6;
    p.heads_kv = 2;
    add(fmt::format("everything_d{}", d), p);
  }
  for (auto [d, dv] : {std::pair{72, 40}, {128, 64}, {64, 128}, {40, 200}, {256, 8}, {8, 256}}) {
    ProblemDesc p = base(d);
    p.head_dim_v = dv;
    p.mask = MaskKind::causal;
    add(fmt::format("d{}_dv{}", d, dv), p);
  }
  for (auto [sq, sk] : {std::pair{1, 1}, {1, 17}, {17, 1}, {17, 17}, {1000, 1000}, {4097, 4097}, {4097, 100}, {100, 4097}}) {
    ProblemDesc p = base(128);
    p.seqlen_q = sq;
    p.seqlen_k = sk;
    p.heads_q = p.heads_kv = 2;
    p.batch = 1;
    add(fmt::format("seqlens_{}_{}", sq, sk), p);
    p.mask = MaskKind::causal;
    add(fmt::format("seqlens_{}_{}_causal", sq, sk), p);
  }
  // Non-default tile configs compute the same function.
  for (const char* cfg : {"bm64_bn32_w4_s2", "bm64_bn64_w2_s3", "bm128_bn128_w4_s2", "bm128_bn64_w4_s4",
                          "bm64_bn64_w4_s2_qr", "bm128_bn32_w8_s3", "bm32_bn64_w2_s2", "bm64_bn64_w4_s1",
                          "bm128_bn64_w8_s1", "bm128_bn32_w4_s1_qr"}) {
    for (int d : {40, 64, 96}) {
      ProblemDesc p = base(d);
      p.mask = MaskKind::causal_bottom_right;
      p.alibi = true;
      add(fmt::format("config_{}_d{}", cfg, d), p, cfg);
    }
  }
  return cs;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name << " [" << harness::describe(c.desc) << "]"; }

class Features : public ::testing::TestWithParam<Case> {};
TEST_P(Features, MatchesReference) {
  JITATTN_REQUIRE_GPU();
  ForwardOptions opt;
  opt.config = GetParam().config;
  expect_pass(GetParam().desc, opt);
}
INSTANTIATE_TEST_SUITE_P(ForwardGpu, Features, ::testing::ValuesIn(feature_cases()),
                         [](const auto& info) { return info.param.name; });

// ---- runtime behaviour ------------------------------------------------------------------------
TEST(ForwardGpu, SecondCallReusesCompiledKernel) {
  JITATTN_REQUIRE_GPU();
  Engine e(EngineOptions{"off", false});
  ProblemDesc p = base(96);
  const auto first = harness::check(e, p);
  const auto second = harness::check(e, p);
  EXPECT_TRUE(first.kernel.compiled_now);
  EXPECT_FALSE(second.kernel.compiled_now);
  EXPECT_EQ(first.kernel.name, second.kernel.name);
  EXPECT_TRUE(second.pass);
}

TEST(ForwardGpu, WarmCacheLoadsBinariesWithoutNvrtc) {
  JITATTN_REQUIRE_GPU();
  const auto dir = std::filesystem::temp_directory_path() /
                   fmt::format("jitattn_warm_{}_{}", ::getpid(), std::random_device{}());
  std::filesystem::create_directories(dir);
  EngineOptions eo;
  eo.cache_path = (dir / "cache.db").string();
  ProblemDesc p = base(88);
  p.mask = MaskKind::causal;
  {
    Engine cold(eo);
    const auto r = harness::check(cold, p);
    EXPECT_TRUE(r.pass);
    EXPECT_EQ(cold.compile_count(), 1);
    EXPECT_FALSE(r.kernel.binary_from_cache);
    EXPECT_EQ(r.kernel.config_source, "default");
  }
  {
    Engine warm(eo);  // a fresh engine: nothing in memory, the binary comes from the file
    const auto r = harness::check(warm, p);
    EXPECT_TRUE(r.pass);
    EXPECT_EQ(warm.compile_count(), 0);
    EXPECT_TRUE(r.kernel.binary_from_cache);
  }
  std::filesystem::remove_all(dir);
}

TEST(ForwardGpu, OnFirstUseTunesOnceThenTheCacheServesIt) {
  JITATTN_REQUIRE_GPU();
  const auto dir = std::filesystem::temp_directory_path() /
                   fmt::format("jitattn_tune_{}_{}", ::getpid(), std::random_device{}());
  std::filesystem::create_directories(dir);
  EngineOptions eo;
  eo.cache_path = (dir / "cache.db").string();
  eo.tune = TunePolicy::on_first_use;
  eo.tune_budget_seconds = 2;
  ProblemDesc p = base(72);
  p.seqlen_q = p.seqlen_k = 700;
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
  Engine later(eo);  // a new engine: the tuned row and the winner's binary come from the file
  const auto r = harness::check(later, p);
  EXPECT_TRUE(r.pass);
  EXPECT_EQ(r.kernel.config_source, "exact") << r.kernel.config_reason;
  EXPECT_TRUE(r.kernel.binary_from_cache);
  EXPECT_EQ(later.compile_count(), 0);
  std::filesystem::remove_all(dir);
}

TEST(ForwardGpu, ConcurrentThreadsShareOneEngine) {
  JITATTN_REQUIRE_GPU();
  Engine e(EngineOptions{"off", false});
  std::vector<std::thread> threads;
  std::vector<int> ok(6, 0);
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      ProblemDesc p = base(i % 2 ? 64 : 112);
      p.mask = i % 3 ? MaskKind::causal : MaskKind::none;
      ok[static_cast<size_t>(i)] = harness::check(e, p).pass ? 1 : 0;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ok[static_cast<size_t>(i)], 1) << "thread " << i;
}

TEST(ForwardGpu, EveryDeviceWorks) {
  JITATTN_REQUIRE_GPU();
  for (int dev = 0; dev < device::device_count(); ++dev) {
    ProblemDesc p = base(128);
    p.device = Device::cuda(dev);
    EXPECT_TRUE(harness::check(engine(), p).pass) << "device " << dev;
  }
}

TEST(ForwardGpu, HostPointerRejectedBeforeLaunch) {
  JITATTN_REQUIRE_GPU();
  alignas(16) static uint16_t host[4 * 64];
  AttentionArgs a;
  for (TensorRef* t : {&a.q, &a.k, &a.v, &a.o}) *t = TensorRef::contiguous(host, DType::bf16, {1, 4, 1, 64});
  a.device = Device::cuda(0);  // (automatic would run host memory on the CPU backend)
  try {
    engine().forward(a);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "q.data") << e.what();
  }
}

TEST(ForwardGpu, DevicePointerRejectedOnTheCpu) {
  JITATTN_REQUIRE_GPU();
  device::ScopedContext ctx(0);
  device::DeviceBuffer buf(size_t{2} * 4 * 64);
  alignas(16) static uint16_t host[4 * 64];
  AttentionArgs a;
  for (TensorRef* t : {&a.q, &a.k, &a.o}) *t = TensorRef::contiguous(host, DType::bf16, {1, 4, 1, 64});
  a.v = TensorRef::contiguous(buf.data(), DType::bf16, {1, 4, 1, 64});
  a.device = Device::cpu();
  try {
    engine().forward(a);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "v.data") << e.what();
  }
}

TEST(ForwardGpu, F32IsRefusedOnTheGpu) {
  JITATTN_REQUIRE_GPU();
  device::ScopedContext ctx(0);
  device::DeviceBuffer buf(size_t{4} * 4 * 64);
  AttentionArgs a;
  for (TensorRef* t : {&a.q, &a.k, &a.v, &a.o}) *t = TensorRef::contiguous(buf.data(), DType::f32, {1, 4, 1, 64});
  try {
    engine().forward(a);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "q.dtype") << e.what();
  }
}

TEST(ForwardGpu, NoKeysGivesZeroOutputAndNegInfLse) {
  JITATTN_REQUIRE_GPU();
  device::ScopedContext ctx(0);
  const int b = 2, s = 37, h = 3, d = 64;
  device::DeviceBuffer q(size_t{2} * b * s * h * d), o(size_t{2} * b * s * h * d), lse(sizeof(float) * b * h * s);
  q.fill(0x3c);  // any finite values: no key can see them
  o.fill(0xFF);  // NaN poison
  lse.fill(0xFF);
  AttentionArgs a;
  a.q = TensorRef::contiguous(q.data(), DType::f16, {b, s, h, d});
  a.k = TensorRef::contiguous(nullptr, DType::f16, {b, 0, h, d});
  a.v = TensorRef::contiguous(nullptr, DType::f16, {b, 0, h, d});
  a.o = TensorRef::contiguous(o.data(), DType::f16, {b, s, h, d});
  a.lse = static_cast<float*>(lse.data());
  engine().forward(a);
  JITATTN_CU_CHECK(device::driver().cuCtxSynchronize());
  std::vector<uint16_t> out(size_t{b} * s * h * d);
  o.download(out.data(), out.size() * 2);
  std::vector<float> l(size_t{b} * h * s);
  lse.download(l.data(), l.size() * sizeof(float));
  for (uint16_t x : out) ASSERT_EQ(x, 0u);
  for (float x : l) ASSERT_TRUE(std::isinf(x) && x < 0) << x;
}

TEST(ForwardGpu, EmptyProblemIsANoOp) {
  JITATTN_REQUIRE_GPU();
  AttentionArgs a;
  for (TensorRef* t : {&a.q, &a.k, &a.v, &a.o}) *t = TensorRef::contiguous(nullptr, DType::bf16, {0, 16, 2, 64});
  EXPECT_NO_THROW(engine().forward(a));
}

}  // namespace
}  // namespace jitattn

