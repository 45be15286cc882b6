// The CPU backend's backward pass and dropout against the float64 reference, through the harness
// `jitattn check --backward --device cpu` uses: gradients over the feature grid (dtypes, head
// dims, dv != d, GQA, masks, windows, varlen, every bias broadcast with dBias, ALiBi, softcap,
// scale, dropout, seqlen 1 and 17, fully masked rows, tile configs), the forward's dropout mask
// against the host's Philox, p ~ 0 equal to no dropout bitwise, and bitwise reproducible
// gradients. Every case draws fresh random inputs and poisons the gradients first.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "generator/kernel_spec.h"
#include "jitattn/jitattn.h"
#include "runtime/device/cpu_jit.h"
#include "runtime/harness.h"
#include "runtime/numeric.h"
#include "runtime/problem.h"
#include "runtime/reference.h"
#include "templates/philox.h"
#include "tests/test_util.h"

namespace jitattn {
namespace {

using harness::ProblemDesc;

#define JITATTN_REQUIRE_LLVM()                                                                  \
  do {                                                                                          \
    if (!device::cpu_jit_available()) GTEST_SKIP() << "built without LLVM (JITATTN_WITH_LLVM=OFF)"; \
  } while (0)

Engine& engine() {
  static Engine e(EngineOptions{"off", false});
  return e;
}

harness::BackwardCheckResult expect_pass(harness::Runner& runner, const ProblemDesc& d,
                                         const BackwardOptions& opt = {}) {
  const harness::BackwardCheckResult r = runner.check_backward(engine(), opt);
  EXPECT_TRUE(r.pass) << harness::describe(d) << " config " << r.kernel.config << " seed " << r.seed
                      << ": dq " << r.dq_err << " dk " << r.dk_err << " dv " << r.dv_err << " dbias "
                      << r.dbias_err << " (tol " << r.tolerance << "); forward rel_err "
                      << r.forward.rel_err << " lse " << r.forward.lse_rel_err << " pass " << r.forward.pass;
  EXPECT_EQ(r.kernel.backend, "cpu");
  EXPECT_NE(r.kernel.name.find("attn_bwd_cpu_"), std::string::npos) << r.kernel.name;
  return r;
}

void expect_pass(const ProblemDesc& d, const BackwardOptions& opt = {}) {
  harness::Runner runner(d);
  expect_pass(runner, d, opt);
}

// Small shapes: the float64 reference is the cost here, not the kernels.
ProblemDesc base(int d, DType dt = DType::f32) {
  ProblemDesc p;
  p.device = Device::cpu();
  p.dtype = dt;
  p.batch = 2;
  p.heads_q = 2;
  p.heads_kv = 2;
  p.seqlen_q = 75;
  p.seqlen_k = 90;
  p.head_dim = d;
  p.lse = true;
  return p;
}

struct Case {
  std::string name;
  ProblemDesc desc;
  std::string config;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name << " [" << harness::describe(c.desc) << "]"; }

std::vector<Case> cases() {
  std::vector<Case> cs;
  auto add = [&](std::string name, ProblemDesc p, std::string cfg = "") {
    cs.push_back({std::move(name), p, std::move(cfg)});
  };
  for (int d : {8, 72, 128, 256}) {
    ProblemDesc p = base(d);
    p.mask = MaskKind::causal;
    add(fmt::format("causal_f32_d{}", d), p);
  }
  for (DType dt : {DType::f16, DType::bf16}) {
    ProblemDesc p = base(64, dt);
    add(fmt::format("{}_d64", dtype_name(dt)), p);
    p.mask = MaskKind::causal;
    p.heads_q = 4;
    p.heads_kv = 2;
    p.dropout_p = 0.2f;
    add(fmt::format("{}_causal_gqa_dropout_d64", dtype_name(dt)), p);
  }
  {
    ProblemDesc p = base(64);
    p.mask = MaskKind::causal_bottom_right;
    add("causal_br_sk_longer", p);
    p.seqlen_q = 120;
    p.seqlen_k = 50;  // the first rows see no key: zero gradients, no NaN
    add("causal_br_fully_masked_rows", p);
    p = base(64);
    p.window = Window{20, 30};
    add("window_both_sides", p);
    p.mask = MaskKind::causal;
    p.window = Window{17, 0};
    add("causal_window", p);
    p = base(64);
    p.heads_q = 6;
    p.heads_kv = 2;
    add("gqa", p);
    p.heads_kv = 1;
    p.mask = MaskKind::causal;
    add("mqa_causal", p);
    p = base(64);
    p.batch = 3;
    p.varlen = VarlenKind::packed;
    p.mask = MaskKind::causal;
    add("varlen_packed_causal", p);
    p.varlen = VarlenKind::padded;
    p.mask = MaskKind::causal_bottom_right;
    add("varlen_padded_causal_br", p);
    p = base(64);
    p.alibi = true;
    add("alibi", p);
    p = base(64);
    p.softcap = 5.0f;
    add("softcap", p);
    p = base(64, DType::bf16);
    p.scale = 1.0f;
    add("scale_one_bf16", p);
    p = base(64);
    p.layout = {0, 2, 1, 3};
    add("layout_bhsd", p);
    for (const char* b : {"bhqk", "1hqk", "b1qk", "b11k", "bhq1", "111k", "1111"}) {
      p = base(64);
      p.bias = b;
      p.dbias = true;
      add(fmt::format("dbias_{}", b), p);
    }
    p = base(64);
    p.bias = "bhqk";  // no dbias: bias is an input only
    add("bias_without_dbias", p);
    p = base(64);
    p.dropout_p = 0.2f;
    add("dropout", p);
    p = base(64);
    p.alibi = true;
    p.bias = "1hqk";
    p.dbias = true;
    p.softcap = 20.0f;
    p.mask = MaskKind::causal;
    p.window = Window{40, 0};
    p.varlen = VarlenKind::packed;
    p.heads_q = 4;
    p.heads_kv = 2;
    p.dropout_p = 0.2f;
    add("everything", p);
    add("everything_bf16", [&] { ProblemDesc q = p; q.dtype = DType::bf16; return q; }());
  }
  for (auto [d, dv] : {std::pair{72, 40}, {64, 128}, {256, 8}}) {
    ProblemDesc p = base(d);
    p.head_dim_v = dv;
    p.mask = MaskKind::causal;
    add(fmt::format("d{}_dv{}", d, dv), p);
  }
  for (auto [sq, sk] : {std::pair{1, 1}, {1, 17}, {17, 1}, {17, 17}, {40, 200}, {200, 40}}) {
    ProblemDesc p = base(64);
    p.seqlen_q = sq;
    p.seqlen_k = sk;
    p.batch = 1;
    add(fmt::format("seqlens_{}_{}", sq, sk), p);
    p.mask = MaskKind::causal;
    add(fmt::format("seqlens_{}_{}_causal", sq, sk), p);
  }
  // Head dims above 256: the default shrinks its blocks to the stack budget (d = dv = 512:
  // cpu_bm32_bn16).
  for (auto [d, dv] : {std::pair{384, 384}, {512, 512}, {512, 64}, {72, 512}}) {
    ProblemDesc p = base(d);
    p.head_dim_v = dv;
    p.seqlen_q = 45;
    p.seqlen_k = 70;
    p.mask = MaskKind::causal;
    p.heads_q = 4;
    p.heads_kv = 2;
    add(fmt::format("causal_gqa_f32_d{}_dv{}", d, dv), p);
  }
  {
    ProblemDesc p = base(512, DType::bf16);
    p.seqlen_q = 40;
    p.seqlen_k = 33;
    p.alibi = true;
    p.softcap = 20.0f;
    p.varlen = VarlenKind::packed;
    add("bf16_alibi_softcap_packed_d512", p);
  }
  for (const char* cfg : {"cpu_bm16_bn16", "cpu_bm32_bn128", "cpu_bm64_bn32"}) {
    ProblemDesc p = base(64);
    p.mask = MaskKind::causal_bottom_right;
    p.alibi = true;
    add(fmt::format("config_{}", cfg), p, cfg);
  }
  return cs;
}

class Features : public ::testing::TestWithParam<Case> {};
TEST_P(Features, MatchesReference) {
  JITATTN_REQUIRE_LLVM();
  BackwardOptions opt;
  opt.config = GetParam().config;
  harness::Runner runner(GetParam().desc);
  const harness::BackwardCheckResult r = expect_pass(runner, GetParam().desc, opt);
  if (!opt.config.empty()) EXPECT_EQ(r.kernel.config, opt.config);
}
INSTANTIATE_TEST_SUITE_P(CpuBackward, Features, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

// Random shapes: fresh sizes per run (the seed is printed with every failure).
TEST(CpuBackward, RandomShapesMatchReference) {
  JITATTN_REQUIRE_LLVM();
  std::mt19937_64 rng(std::random_device{}());
  for (int n = 0; n < 4; ++n) {
    ProblemDesc p = base(8 * std::uniform_int_distribution<int>(1, 16)(rng));
    p.dtype = static_cast<DType>(std::uniform_int_distribution<int>(0, 2)(rng));
    p.seqlen_q = std::uniform_int_distribution<int>(1, 150)(rng);
    p.seqlen_k = std::uniform_int_distribution<int>(1, 150)(rng);
    p.heads_kv = std::uniform_int_distribution<int>(1, 2)(rng);
    p.heads_q = p.heads_kv * std::uniform_int_distribution<int>(1, 3)(rng);
    p.mask = static_cast<MaskKind>(std::uniform_int_distribution<int>(0, 2)(rng));
    p.varlen = static_cast<VarlenKind>(std::uniform_int_distribution<int>(0, 2)(rng));
    expect_pass(p);
  }
}

// --reps on the CPU: exactly that many timed calls, whatever the budget; 0 keeps timing until
// the budget is spent, at least 5.
TEST(CpuBackward, BenchTimesTheRepetitionsAsked) {
  JITATTN_REQUIRE_LLVM();
  ProblemDesc p = base(32);
  p.seqlen_q = p.seqlen_k = 40;
  p.lse = true;
  harness::Runner runner(p);
  EXPECT_EQ(runner.bench_backward(engine(), true, {}, 1e6, 3).samples, 3);
  EXPECT_EQ(runner.bench_backward(engine(), false, {}, 1e-3, 0).samples, 5);
  EXPECT_EQ(harness::bench(engine(), p, {}, 1e6, 2).samples, 2);
}

// Every gradient, dbias summed over broadcast dims included, has one owner summing in a fixed
// order: the bits never change between runs.
TEST(CpuBackward, GradientsAreBitwiseReproducible) {
  JITATTN_REQUIRE_LLVM();
  for (const char* bias : {"bhqk", "1h1k"}) {
    ProblemDesc p = base(64, DType::bf16);
    p.seqlen_q = p.seqlen_k = 300;
    p.heads_q = 4;
    p.heads_kv = 2;
    p.mask = MaskKind::causal;
    p.bias = bias;
    p.dbias = true;
    p.dropout_p = 0.1f;
    harness::Runner runner(p);
    expect_pass(runner, p);
    const std::vector<std::byte> a = runner.gradient_bytes();
    for (int rep = 0; rep < 2; ++rep) {
      EXPECT_TRUE(runner.check_backward(engine()).pass);
      EXPECT_TRUE(a == runner.gradient_bytes()) << bias << " run " << rep + 1 << " differs";
    }
  }
}

// p so small that floor(p * 2^32) = 0 and 1 / (1 - p) rounds to 1.0f: the dropout kernels keep
// everything and must give exactly the no-dropout kernels' bits, forward and backward.
TEST(CpuBackward, DropoutKeepingEverythingEqualsNoDropoutBitwise) {
  JITATTN_REQUIRE_LLVM();
  ASSERT_EQ(dropout_threshold(1e-10f), 0u);
  ASSERT_EQ(static_cast<float>(1.0 / (1.0 - double(1e-10f))), 1.0f);
  ProblemDesc p = base(64);
  p.mask = MaskKind::causal;
  p.seed = std::random_device{}() | 1u;
  harness::Runner off(p);
  const auto r0 = off.check_backward(engine());
  ProblemDesc q = p;
  q.dropout_p = 1e-10f;
  harness::Runner on(q);
  const auto r1 = on.check_backward(engine());
  EXPECT_TRUE(r0.pass && r1.pass);
  EXPECT_NE(r1.kernel.name.find("dropout"), std::string::npos) << r1.kernel.name;
  EXPECT_NE(r1.forward.kernel.name.find("dropout"), std::string::npos) << r1.forward.kernel.name;
  EXPECT_TRUE(off.output_bytes() == on.output_bytes()) << "forward outputs differ";
  EXPECT_TRUE(off.gradient_bytes() == on.gradient_bytes()) << "gradients differ";
}

// The CPU forward's mask read back exactly: q = 0 makes every probability 1/64 over 64 keys and v
// one-hot (v[j] = e_j) puts key j's kept factor in o[., j]; it must equal the host's Philox
// decision (the reference's and the GPU's) for every (batch, head, row, key).
TEST(CpuBackward, ForwardDropoutMaskMatchesHostPhilox) {
  JITATTN_REQUIRE_LLVM();
  const int b = 2, s = 100, h = 3, sk = 64, d = 64;
  const float prob = 0.3f;
  std::vector<float> zeros(size_t{b} * s * h * d, 0.0f), onehot(size_t{b} * sk * h * d, 0.0f);
  for (int bb = 0; bb < b; ++bb)
    for (int j = 0; j < sk; ++j)
      for (int hh = 0; hh < h; ++hh) onehot[((size_t(bb) * sk + j) * h + hh) * d + j] = 1.0f;
  std::vector<float> o(zeros.size(), std::nanf(""));
  AttentionArgs a;
  a.device = Device::cpu();
  a.q = TensorRef::contiguous(zeros.data(), DType::f32, {b, s, h, d});
  a.k = TensorRef::contiguous(onehot.data(), DType::f32, {b, sk, h, d});
  a.v = TensorRef::contiguous(onehot.data(), DType::f32, {b, sk, h, d});
  a.o = TensorRef::contiguous(o.data(), DType::f32, {b, s, h, d});
  a.dropout_p = prob;
  a.dropout_seed = std::random_device{}();
  a.dropout_offset = 98765;
  engine().forward(a);
  const uint32_t threshold = dropout_threshold(prob);
  int64_t kept = 0, mismatches = 0;
  for (int bb = 0; bb < b; ++bb)
    for (int i = 0; i < s; ++i)
      for (int hh = 0; hh < h; ++hh)
        for (int j = 0; j < sk; ++j) {
          const float got = o[((size_t(bb) * s + i) * h + hh) * d + j];
          const bool host_keep = jitattn_kernel::dropout_keep(a.dropout_seed, a.dropout_offset,
                                                              unsigned(bb * h + hh), unsigned(i), unsigned(j), threshold);
          kept += got > 0.0f;
          mismatches += (got > 0.0f) != host_keep;
          if (got > 0.0f) EXPECT_NEAR(got, 1.0f / 64.0f / (1.0f - prob), 1e-6f);
        }
  EXPECT_EQ(mismatches, 0);
  EXPECT_NEAR(double(kept) / (double(b) * s * h * sk), 1.0 - prob, 0.015);  // n = 38400: sd 0.0023
}

// Forward with dropout (and LSE, which is that of P before dropout) against the reference.
TEST(CpuBackward, ForwardDropoutMatchesReference) {
  JITATTN_REQUIRE_LLVM();
  for (DType dt : {DType::f32, DType::bf16}) {
    ProblemDesc p = base(80, dt);
    p.dropout_p = 0.25f;
    p.mask = MaskKind::causal;
    p.varlen = VarlenKind::padded;
    p.bias = "b1qk";
    const harness::CheckResult r = harness::check(engine(), p);
    EXPECT_TRUE(r.pass) << harness::describe(p) << " seed " << r.seed << ": rel " << r.rel_err << " lse "
                        << r.lse_rel_err;
  }
}

// The public API as a user calls it: host tensors with automatic device selection, the forward
// saving its LSE, then backward with no workspace (the engine allocates it in host memory).
TEST(CpuBackward, PublicApiWithEngineWorkspace) {
  JITATTN_REQUIRE_LLVM();
  auto rng = test::seeded_rng();
  const int64_t b = 2, s = 45, sk = 61, hq = 4, hkv = 2, d = 40;
  auto q = test::random_tensor(DType::f32, {b, s, hq, d}, rng);
  auto k = test::random_tensor(DType::f32, {b, sk, hkv, d}, rng);
  auto v = test::random_tensor(DType::f32, {b, sk, hkv, d}, rng);
  auto o = test::poisoned_tensor(DType::f32, {b, s, hq, d});
  auto d_o = test::random_tensor(DType::f32, {b, s, hq, d}, rng);
  auto dq = test::poisoned_tensor(DType::f32, {b, s, hq, d});
  auto dk = test::poisoned_tensor(DType::f32, {b, sk, hkv, d});
  auto dv = test::poisoned_tensor(DType::f32, {b, sk, hkv, d});
  std::vector<float> lse(size_t(b * hq * s), std::nanf(""));
  AttentionArgs a;  // device: automatic, host memory -> the CPU backend
  a.q = q.ref;
  a.k = k.ref;
  a.v = v.ref;
  a.o = o.ref;
  a.mask = MaskKind::causal_bottom_right;
  const AttentionArgs saved = forward_for_backward(a, lse.data());
  BackwardArgs g;
  g.d_o = d_o.ref;
  g.dq = dq.ref;
  g.dk = dk.ref;
  g.dv = dv.ref;
  const KernelReport r = backward(saved, g);
  EXPECT_EQ(r.backend, "cpu");
  const reference::Gradients ref = reference::backward(saved, d_o.ref, false);
  EXPECT_LT(relative_error(test::to_double(dq.ref), ref.dq), 1e-5);
  EXPECT_LT(relative_error(test::to_double(dk.ref), ref.dk), 1e-5);
  EXPECT_LT(relative_error(test::to_double(dv.ref), ref.dv), 1e-5);
}

// The generator's side: every head-dim pair has a legal default within the stack budget, and the
// flags that mean nothing on the CPU are refused with a reason.
TEST(CpuBackward, DefaultConfigsAreLegalAndFlagsAreChecked) {
  KernelSpec s;
  s.target = Target{0, true};
  s.pass = Pass::backward;
  s.dtype = DType::f32;
  const DeviceLimits cpu = limits_for_cpu();
  for (int d = 8; d <= kMaxHeadDim; d += 8) {
    for (int dv : {8, d, kMaxHeadDim}) {
      s.head_dim = d;
      s.head_dim_v = dv;
      const TileConfig c = default_config(s, cpu);
      EXPECT_FALSE(why_illegal(s, c, cpu)) << "d" << d << " dv" << dv << " " << c.canonical();
      EXPECT_LE(cpu_scratch_bytes(s, c), kCpuScratchBudget);
    }
  }
  s.head_dim = s.head_dim_v = 64;
  const TileConfig c = cpu_config(64, 64);
  ASSERT_FALSE(why_illegal(s, c, cpu));
  KernelSpec t = s;
  t.deterministic = true;
  EXPECT_TRUE(why_illegal(t, c, cpu));
  t = s;
  t.dbias = true;  // without a bias
  EXPECT_TRUE(why_illegal(t, c, cpu));
  t = s;
  t.lse = true;
  EXPECT_TRUE(why_illegal(t, c, cpu));
  EXPECT_TRUE(why_illegal(s, cpu_config(8, 64), cpu));   // block_m below a vector of S^T
  EXPECT_TRUE(why_illegal(s, cpu_config(64, 256), cpu));  // block_n above the backward's menu
  t = s;
  t.pass = Pass::forward;
  t.dbias = true;
  t.bias = true;
  EXPECT_TRUE(why_illegal(t, c, cpu));  // dbias is a backward flag
}

TEST(CpuBackward, BadInputThrowsBeforeRunning) {
  JITATTN_REQUIRE_LLVM();
  std::vector<float> buf(size_t{2} * 190 * 3 * 64);
  AttentionArgs a;
  a.device = Device::cpu();
  a.q = TensorRef::contiguous(buf.data(), DType::f32, {2, 19, 3, 64});
  a.k = a.v = TensorRef::contiguous(buf.data(), DType::f32, {2, 21, 3, 64});
  a.o = a.q;
  BackwardArgs g;
  g.d_o = g.dq = a.q;
  g.dk = g.dv = a.k;
  Engine e(EngineOptions{"off", false});
  try {
    e.backward(a, g);
    FAIL() << "accepted a backward without lse";
  } catch (const InvalidArgument& ex) {
    EXPECT_EQ(ex.argument(), "lse");
  }
  std::vector<float> lse(2 * 3 * 19);
  a.lse = lse.data();
  BackwardOptions o;
  o.config = "cpu_bm8_bn16";  // block_m 8 is forward-only
  try {
    e.backward(a, g, o);
    FAIL() << "accepted an illegal CPU backward config";
  } catch (const InvalidArgument& ex) {
    EXPECT_EQ(ex.argument(), "config");
  }
  EXPECT_EQ(e.compile_count(), 0);
}

}  // namespace
}  // namespace jitattn
