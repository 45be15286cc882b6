// Head dims above 256 (up to 512) on the GPU against the float64 reference: the mma.sync family's
// column slices (split CTAs per query block; every sm_80+ GPU), the Hopper family's column-split
// kernel (templates/attn_fwd_sm90_wide.cuh; sm_90 only) and the backward's 8 column slices.
// Masks, GQA, varlen, ALiBi, softcap, LSE, unequal QK/V dims, non-default configs. Fresh random
// inputs and poisoned outputs in every case (runtime/harness.cpp). Skipped with a message without
// a GPU (the Hopper cases also without an sm_90 one).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <random>

#include "generator/kernel_spec.h"
#include "jitattn/jitattn.h"
#include "runtime/device/driver.h"
#include "runtime/harness.h"
#include "tests/gpu_test_util.h"

namespace jitattn {
namespace {

using harness::ProblemDesc;

Engine& engine() { return test::gpu_engine(); }

enum class Family2 { mma, hopper };

// The family's default config for the problem's spec on device 0's arch.
std::string default_for(const ProblemDesc& d, Family2 f) {
  KernelSpec s;
  s.target.sm = f == Family2::hopper ? 90 : device::device_info(0).sm();
  s.dtype = d.dtype;
  s.head_dim = d.head_dim;
  s.head_dim_v = d.dv();
  s.mask = d.mask;
  s.window = d.window.has_value();
  s.bias = d.bias != "none";
  s.alibi = d.alibi;
  s.softcap = d.softcap;
  s.lse = d.lse;
  s.varlen = d.varlen;
  return family_default_config(s, limits_for_arch(s.target.sm), f == Family2::hopper ? Family::sm90 : Family::sm80)
      .canonical();
}

// A small base problem: batch 2, 3 heads, seqlen 190 x 211 (odd, sq != sk), LSE on.
ProblemDesc base(int d, int dv = 0) {
  ProblemDesc p = test::gpu_base(d);
  p.head_dim_v = dv;
  return p;
}

struct Case {
  std::string name;
  ProblemDesc desc;
  Family2 family = Family2::mma;
  std::string config;  // empty = the family's default
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name << " [" << harness::describe(c.desc) << "]"; }

std::vector<Case> cases() {
  std::vector<Case> cs;
  for (Family2 f : {Family2::mma, Family2::hopper}) {
    const char* fam = f == Family2::hopper ? "sm90" : "mma";
    auto add = [&](std::string name, ProblemDesc p, std::string cfg = "") {
      cs.push_back({fmt::format("{}_{}", fam, name), p, f, std::move(cfg)});
    };
    for (int d : {264, 320, 384, 448, 512}) {
      ProblemDesc p = base(d);
      add(fmt::format("plain_d{}", d), p);
      p.mask = MaskKind::causal;
      add(fmt::format("causal_d{}", d), p);
    }
    for (int d : {264, 512}) {
      ProblemDesc p = base(d);
      p.dtype = DType::f16;
      p.mask = MaskKind::causal_bottom_right;
      add(fmt::format("f16_causal_br_d{}", d), p);
      p = base(d);
      p.mask = MaskKind::causal_bottom_right;
      p.seqlen_q = 300;
      p.seqlen_k = 130;  // the first rows see no key: output 0, LSE -inf
      add(fmt::format("fully_masked_rows_d{}", d), p);
      p = base(d);
      p.heads_q = 6;
      p.heads_kv = 2;
      p.window = Window{50, 20};
      add(fmt::format("gqa_window_d{}", d), p);
      p = base(d);
      p.heads_q = 4;
      p.heads_kv = 1;
      p.alibi = true;
      p.mask = MaskKind::causal;
      add(fmt::format("mqa_alibi_causal_d{}", d), p);
      p = base(d);
      p.softcap = 5.0f;
      add(fmt::format("softcap_d{}", d), p);
      p = base(d);
      p.batch = 4;
      p.varlen = VarlenKind::packed;
      p.mask = MaskKind::causal;
      add(fmt::format("varlen_packed_causal_d{}", d), p);
      p.varlen = VarlenKind::padded;
      p.mask = MaskKind::none;
      add(fmt::format("varlen_padded_d{}", d), p);
      p = base(d);
      p.alibi = true;
      p.softcap = 20.0f;
      p.mask = MaskKind::causal;
      p.window = Window{64, 0};
      p.heads_q = 6;
      p.heads_kv = 2;
      p.varlen = VarlenKind::packed;
      add(fmt::format("everything_but_bias_packed_d{}", d), p);
      p.bias = "1hqk";  // the Hopper family's bias is read per element
      add(fmt::format("everything_packed_d{}", d), p);
      p = base(d);
      p.layout = {0, 2, 1, 3};
      add(fmt::format("layout_bhsd_d{}", d), p);
    }
    for (auto [d, dv] : {std::pair{512, 64}, {64, 512}, {264, 512}, {512, 264}, {320, 136}, {136, 328}, {256, 512}}) {
      ProblemDesc p = base(d, dv);
      p.mask = MaskKind::causal;
      add(fmt::format("d{}_dv{}", d, dv), p);
    }
    for (auto [sq, sk] : {std::pair{1, 1}, {17, 1000}, {1000, 17}, {2049, 2049}}) {
      ProblemDesc p = base(512);
      p.seqlen_q = sq;
      p.seqlen_k = sk;
      p.batch = 1;
      p.heads_q = p.heads_kv = 2;
      p.mask = MaskKind::causal;
      add(fmt::format("seqlens_{}_{}_causal_d512", sq, sk), p);
    }
  }
  // Non-default configs compute the same function.
  auto add_cfg = [&](Family2 f, const char* cfg, int d, int dv) {
    ProblemDesc p = base(d, dv);
    p.mask = MaskKind::causal_bottom_right;
    p.alibi = true;
    cs.push_back({fmt::format("config_{}_d{}_dv{}", cfg, d, dv), p, f, cfg});
    p = base(d, dv);
    p.seqlen_q = 1000;
    p.seqlen_k = 777;
    cs.push_back({fmt::format("config_{}_plain_d{}_dv{}", cfg, d, dv), p, f, cfg});
  };
  for (const char* cfg : {"h_bm64_bn32_wg2_s2_x2", "h_bm64_bn64_wg2_s1_x2", "h_bm64_bn48_wg2_s1_x2",
                          "h_bm64_bn16_wg2_s4_x2"}) {
    add_cfg(Family2::hopper, cfg, 512, 512);
    add_cfg(Family2::hopper, cfg, 264, 264);
  }
  // P tiles of 32-byte (bn 48), 64-byte (bn 32, 96) and 128-byte (bn 64, 128) panels.
  add_cfg(Family2::hopper, "h_bm64_bn128_wg2_s1_x2", 264, 264);
  add_cfg(Family2::hopper, "h_bm64_bn32_wg2_s3_x2", 264, 264);
  add_cfg(Family2::hopper, "h_bm64_bn96_wg2_s2_x2", 136, 264);
  for (const char* cfg : {"bm64_bn32_w4_s1_x4", "bm64_bn16_w4_s2_x2", "bm128_bn16_w8_s1_x4", "bm64_bn32_w4_s2_x4"}) {
    add_cfg(Family2::mma, cfg, 512, 512);
    add_cfg(Family2::mma, cfg, 264, 264);
  }
  return cs;
}

class WideForward : public ::testing::TestWithParam<Case> {};
TEST_P(WideForward, MatchesReference) {
  JITATTN_REQUIRE_GPU();
  const Case& c = GetParam();
  if (c.family == Family2::hopper && device::device_info(0).sm() != 90) {
    GTEST_SKIP() << "the sm90 family needs an sm_90 GPU";
  }
  ForwardOptions opt;
  opt.config = c.config.empty() ? default_for(c.desc, c.family) : c.config;
  const harness::CheckResult r = harness::check(engine(), c.desc, opt);
  EXPECT_TRUE(r.pass) << test::check_failure(c.desc, r);
  EXPECT_EQ(r.kernel.config, opt.config);
  if (c.config.empty()) EXPECT_EQ(r.kernel.spill_bytes, 0) << r.kernel.name;
}
INSTANTIATE_TEST_SUITE_P(ForwardWide, WideForward, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

// The runtime's own choice for head dims above 256 (no config forced) is legal and correct; on
// sm_90 it is the column-split Hopper kernel.
TEST(ForwardWide, RuntimeDefault) {
  JITATTN_REQUIRE_GPU();
  for (int d : {264, 512}) {
    ProblemDesc p = base(d);
    p.mask = MaskKind::causal;
    const harness::CheckResult r = harness::check(engine(), p);
    EXPECT_TRUE(r.pass) << test::check_failure(p, r);
    if (device::device_info(0).sm() == 90) EXPECT_EQ(r.kernel.config.rfind("h_bm64_", 0), 0u) << r.kernel.config;
    EXPECT_NE(r.kernel.config.find("_x"), std::string::npos) << r.kernel.config;
  }
}

// Random shapes above 256: fresh sizes each run (the seed of each case is in the failure message).
TEST(ForwardWide, RandomShapes) {
  JITATTN_REQUIRE_GPU();
  std::mt19937 rng(std::random_device{}());
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int i = 0; i < 8; ++i) {
    ProblemDesc p;
    p.head_dim = 8 * pick(1, 64);
    p.head_dim_v = 8 * pick(33, 64);
    p.batch = pick(1, 2);
    p.heads_kv = pick(1, 2);
    p.heads_q = p.heads_kv * pick(1, 3);
    p.seqlen_q = pick(1, 700);
    p.seqlen_k = pick(1, 700);
    p.mask = static_cast<MaskKind>(pick(0, 2));
    p.lse = pick(0, 1) == 1;
    p.dtype = pick(0, 1) ? DType::bf16 : DType::f16;
    SCOPED_TRACE(harness::describe(p));
    const harness::CheckResult r = harness::check(engine(), p);
    EXPECT_TRUE(r.pass) << test::check_failure(p, r);
  }
}

// ---- backward (mma.sync, 8 column slices above 256) ---------------------------------------------
void expect_backward(const ProblemDesc& d, const BackwardOptions& opt = {}) {
  harness::Runner runner(d);
  const harness::BackwardCheckResult r = runner.check_backward(engine(), opt);
  EXPECT_TRUE(r.pass) << harness::describe(d) << (opt.deterministic ? " deterministic" : "")
                      << " config " << r.kernel.config << " seed " << r.seed << ": dq " << r.dq_err
                      << " dk " << r.dk_err << " dv " << r.dv_err << " dbias " << r.dbias_err
                      << " (tol " << r.tolerance << "); forward pass " << r.forward.pass;
  EXPECT_EQ(r.kernel.spill_bytes, 0) << r.kernel.name;
}

TEST(BackwardWide, MatchesReference) {
  JITATTN_REQUIRE_GPU();
  for (auto [d, dv] : {std::pair{512, 512}, {264, 264}, {384, 128}, {64, 512}}) {
    ProblemDesc p = base(d, dv);
    p.mask = MaskKind::causal;
    expect_backward(p);
    p.heads_q = 6;
    p.heads_kv = 2;
    p.alibi = true;
    p.softcap = 20.0f;
    p.varlen = VarlenKind::packed;
    p.batch = 3;
    BackwardOptions det;
    det.deterministic = true;
    expect_backward(p, det);
  }
}

}  // namespace
}  // namespace jitattn
