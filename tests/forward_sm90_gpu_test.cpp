// The Hopper family (templates/attn_fwd_sm90.cuh) on an sm_90 GPU against the float64 reference:
// every head dim with the family's configs forced (so the family stays covered whatever the
// runtime's default), masks and modifiers, GQA, random shapes, non-default configs. Fresh random
// inputs and poisoned outputs in every case (runtime/harness.cpp). Skipped with a message without
// an sm_90 GPU.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <random>

#include "jitattn/jitattn.h"
#include "runtime/device/driver.h"
#include "generator/kernel_spec.h"
#include "runtime/harness.h"
#include "tests/gpu_test_util.h"

namespace jitattn {
namespace {

using harness::ProblemDesc;

#define JITATTN_REQUIRE_SM90()                                                                   \
  do {                                                                                           \
    std::string why_;                                                                            \
    if (!device::driver_available(&why_) || device::device_count() == 0) {                       \
      GTEST_SKIP() << "no CUDA device: " << (why_.empty() ? "no GPU found" : why_);              \
    }                                                                                            \
    if (device::device_info(0).sm() != 90) GTEST_SKIP() << "the sm90 family needs an sm_90 GPU"; \
  } while (0)

Engine& engine() { return test::gpu_engine(); }

// The family's default config for the problem's spec on device 0.
std::string sm90_default(const ProblemDesc& d) {
  KernelSpec s;
  s.target.sm = 90;
  s.dtype = d.dtype;
  s.head_dim = d.head_dim;
  s.head_dim_v = d.dv();
  s.mask = d.mask;
  s.window = d.window.has_value();
  s.bias = d.bias != "none";
  // Tileable as Problem::bias_tileable decides for the harness's contiguous bias: distinct query
  // rows, a contiguous key dim of whole 16-byte chunks.
  s.bias_tiled = s.bias && d.bias[2] == 'q' && d.bias[3] == 'k' && d.seqlen_k % 8 == 0;
  s.alibi = d.alibi;
  s.softcap = d.softcap;
  s.lse = d.lse;
  s.varlen = d.varlen;
  s.dropout = d.dropout_p > 0.0f;
  return family_default_config(s, limits_for_arch(90), Family::sm90).canonical();
}

void expect_pass(const ProblemDesc& d, std::string config = "") {
  if (config.empty()) config = sm90_default(d);
  ForwardOptions opt;
  opt.config = config;
  const harness::CheckResult r = harness::check(engine(), d, opt);
  EXPECT_TRUE(r.pass) << test::check_failure(d, r);
  EXPECT_EQ(r.kernel.target, "sm_90a") << r.kernel.name;
  EXPECT_EQ(r.kernel.spill_bytes, 0) << r.kernel.name;
}

ProblemDesc base(int d, DType dt = DType::bf16) { return test::gpu_base(d, dt); }

// ---- every head dim (multiples of 8 up to 256), both dtypes, plain and causal ---------------
class Sm90HeadDims : public ::testing::TestWithParam<std::tuple<int, DType>> {};
TEST_P(Sm90HeadDims, MatchesReference) {
  JITATTN_REQUIRE_SM90();
  auto [d, dt] = GetParam();
  ProblemDesc p = base(d, dt);
  expect_pass(p);
  p.mask = MaskKind::causal;
  expect_pass(p);
}
INSTANTIATE_TEST_SUITE_P(ForwardSm90, Sm90HeadDims,
                         ::testing::Combine(::testing::Range(8, 264, 8),
                                            ::testing::Values(DType::bf16, DType::f16)),
                         [](const auto& info) {
                           return fmt::format("d{}_{}", std::get<0>(info.param),
                                              dtype_name(std::get<1>(info.param)));
                         });

struct Case {
  std::string name;
  ProblemDesc desc;
  std::string config;  // empty = the family's default
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name << " [" << harness::describe(c.desc) << "]"; }

std::vector<Case> feature_cases() {
  std::vector<Case> cs;
  auto add = [&](std::string name, ProblemDesc p, std::string cfg = "") {
    cs.push_back({std::move(name), p, std::move(cfg)});
  };
  const test::AddCase add_plain = [&](std::string name, ProblemDesc p) { add(std::move(name), p); };
  for (int d : {64, 96, 128, 256}) {
    test::add_mask_cases(d, add_plain);
    test::add_layout_cases(d, add_plain);
    ProblemDesc p = base(d);
    p.window = Window{-1, 5};
    add(fmt::format("window_right_only_d{}", d), p);
    p = base(d);
    p.alibi = true;
    p.mask = MaskKind::causal;
    add(fmt::format("alibi_causal_d{}", d), p);
    p = base(d);
    p.softcap = 5.0f;
    add(fmt::format("softcap_d{}", d), p);
    p = base(d);
    p.scale = 1.0f;
    p.dtype = DType::f16;
    add(fmt::format("scale_one_f16_d{}", d), p);
    for (const char* b : {"bhqk", "11qk", "b11k", "bhq1"}) {
      p = base(d);
      p.bias = b;
      add(fmt::format("bias_{}_d{}", b, d), p);
    }
    p = base(d);
    p.seqlen_k = 256;
    p.bias = "1hqk";
    add(fmt::format("bias_aligned_rows_d{}", d), p);
    // Bias tiles by TMA (seqlen_k a multiple of 8): every broadcast of batch and heads, with masks,
    // packed and padded varlen, softcap and ALiBi beside it.
    for (const char* b : {"bhqk", "b1qk", "11qk"}) {
      p = base(d);
      p.seqlen_k = 264;
      p.bias = b;
      p.mask = MaskKind::causal_bottom_right;
      add(fmt::format("bias_tma_{}_causal_br_d{}", b, d), p);
    }
    p = base(d);
    p.seqlen_q = 1000;
    p.seqlen_k = 1000;
    p.bias = "1hqk";
    p.window = Window{100, 30};
    add(fmt::format("bias_tma_window_d{}", d), p);
    p = base(d);
    p.batch = 3;
    p.seqlen_k = 512;
    p.bias = "bhqk";
    p.varlen = VarlenKind::packed;
    p.mask = MaskKind::causal;
    add(fmt::format("bias_tma_varlen_packed_d{}", d), p);
    p.varlen = VarlenKind::padded;
    add(fmt::format("bias_tma_varlen_padded_d{}", d), p);
    p = base(d);
    p.seqlen_k = 248;
    p.bias = "1hqk";
    p.alibi = true;
    p.softcap = 30.0f;
    p.heads_q = 6;
    p.heads_kv = 3;
    add(fmt::format("bias_tma_alibi_softcap_gqa_d{}", d), p);
    p = base(d);
    p.layout = {0, 2, 1, 3};
    add(fmt::format("layout_bhsd_d{}", d), p);
    p = base(d);
    p.batch = 4;
    p.varlen = VarlenKind::packed;
    p.heads_q = 6;
    p.heads_kv = 2;
    p.bias = "1hqk";
    p.window = Window{40, 20};
    add(fmt::format("varlen_packed_gqa_bias_window_d{}", d), p);
    p.varlen = VarlenKind::padded;
    add(fmt::format("varlen_padded_gqa_bias_window_d{}", d), p);
    p = base(d);
    p.alibi = true;
    p.bias = "1hqk";
    p.softcap = 20.0f;
    p.mask = MaskKind::causal;
    p.window = Window{64, 0};
    p.heads_q = 6;
    p.heads_kv = 2;
    add(fmt::format("everything_d{}", d), p);
    p.varlen = VarlenKind::packed;
    add(fmt::format("everything_packed_d{}", d), p);
  }
  for (auto [d, dv] : {std::pair{72, 40}, {128, 64}, {64, 128}, {40, 200}, {256, 8}, {8, 256}}) {
    ProblemDesc p = base(d);
    p.head_dim_v = dv;
    p.mask = MaskKind::causal;
    add(fmt::format("d{}_dv{}", d, dv), p);
  }
  for (auto [sq, sk] : {std::pair{1, 1}, {1, 17}, {17, 1}, {17, 17}, {1000, 1000}, {4097, 4097},
                        {4097, 100}, {100, 4097}, {1000, 17}, {17, 1000}}) {
    for (int d : {64, 128}) {
      ProblemDesc p = base(d);
      p.seqlen_q = sq;
      p.seqlen_k = sk;
      p.heads_q = p.heads_kv = 2;
      p.batch = 1;
      add(fmt::format("seqlens_{}_{}_d{}", sq, sk, d), p);
      p.mask = MaskKind::causal;
      add(fmt::format("seqlens_{}_{}_causal_d{}", sq, sk, d), p);
    }
  }
  // Non-default configs of the family compute the same function.
  for (const char* cfg : {"h_bm64_bn64_wg1_s2", "h_bm64_bn128_wg1_s3", "h_bm128_bn64_wg2_s1",
                          "h_bm128_bn96_wg2_s3", "h_bm192_bn64_wg3_s2", "h_bm128_bn176_wg2_s2",
                          "h_bm128_bn16_wg2_s4", "h_bm128_bn128_wg2_s2", "h_bm64_bn64_wg1_s2_ov",
                          "h_bm192_bn64_wg3_s2_ov", "h_bm128_bn112_wg2_s3_ov", "h_bm128_bn16_wg2_s4_ov",
                          "h_bm128_bn160_wg2_s2_ov", "h_bm128_bn128_wg2_s2_ov_pp", "h_bm128_bn64_wg2_s3_ov_pp",
                          "h_bm128_bn128_wg2_s3_ov_pp_pe", "h_bm128_bn64_wg2_s2_pe", "h_bm192_bn64_wg3_s3_ov",
                          "h_bm128_bn48_wg2_s3_ov_pp"}) {
    for (int d : {40, 64, 96, 128}) {
      ProblemDesc p = base(d);
      p.mask = MaskKind::causal_bottom_right;
      p.alibi = true;
      add(fmt::format("config_{}_d{}", cfg, d), p, cfg);
      p = base(d);
      p.seqlen_q = 1000;
      p.seqlen_k = 777;
      add(fmt::format("config_{}_plain_d{}", cfg, d), p, cfg);
    }
    // Bias tiles by TMA in every config's layout (panels of 16, 32 or 64 columns).
    for (int d : {40, 64}) {
      ProblemDesc p = base(d);
      p.seqlen_k = 264;
      p.bias = "b1qk";
      p.mask = MaskKind::causal;
      add(fmt::format("config_{}_bias_tma_d{}", cfg, d), p, cfg);
    }
  }
  // Persistent configs (_ps): one CTA per SM walks the tiles, so each problem here has several
  // times more tiles than an H100/H200 has SMs (132): the K/V ring's phases, Q's reload and the
  // ping-pong turns run on across tiles of different lengths (causal, GQA, ALiBi), and fully masked
  // tiles (written as zeros, no loads) sit between tiles with work; packed and padded varlen.
  auto add_persistent = [&](const std::string& cfg, int d) {
    ProblemDesc p = base(d);
    p.batch = 3;
    p.heads_q = 48;
    p.heads_kv = 12;
    p.seqlen_q = 300;
    p.seqlen_k = 333;
    p.mask = MaskKind::causal_bottom_right;
    add(fmt::format("persistent_{}_gqa_causal_br_d{}", cfg, d), p, cfg);
    p.seqlen_k = 130;  // the first 170 rows see no key: whole tiles of zeros between others
    add(fmt::format("persistent_{}_fully_masked_tiles_d{}", cfg, d), p, cfg);
    p = base(d);
    p.heads_q = p.heads_kv = 100;
    p.seqlen_q = 130;
    p.seqlen_k = 500;
    p.alibi = true;
    p.softcap = 30.0f;
    add(fmt::format("persistent_{}_alibi_softcap_d{}", cfg, d), p, cfg);
    p = base(d);
    p.batch = 8;
    p.heads_q = p.heads_kv = 24;
    p.seqlen_q = p.seqlen_k = 264;
    p.varlen = VarlenKind::packed;
    p.mask = MaskKind::causal;
    add(fmt::format("persistent_{}_packed_causal_d{}", cfg, d), p, cfg);
    p.varlen = VarlenKind::padded;
    p.window = Window{70, 10};
    // LSE beside a window and padded varlen spills 12 bytes under overlap + ping-pong at d128
    // (NVRTC 13.0, since V has its own producer thread); the tuner drops such candidates by their
    // ptxas report, so that case runs without LSE (packed_causal above keeps it).
    if (cfg.find("_ov_pp_ps") != std::string::npos && d == 128) p.lse = false;
    add(fmt::format("persistent_{}_padded_window_d{}", cfg, d), p, cfg);
  };
  for (const char* cfg : {"h_bm128_bn128_wg2_s3_ov_pp_ps", "h_bm128_bn128_wg2_s2_ps", "h_bm192_bn64_wg3_s2_ov_ps",
                          "h_bm64_bn64_wg1_s2_ps", "h_bm128_bn64_wg2_s3_ov_ps", "h_bm128_bn80_wg2_s2_ps"}) {
    for (int d : {64, 128}) add_persistent(cfg, d);
  }
  // A causal grid's launch order in groups of (head, batch) pairs (runtime/plan.h
  // causal_pair_group): 48 pairs of 9 query blocks (block_m 128) take groups of 16, 3 groups;
  // GQA heads of a group share K and V; bottom-right with fewer keys leaves rows with none.
  for (int d : {64, 128}) {
    ProblemDesc p = base(d);
    p.batch = 4;
    p.heads_q = p.heads_kv = 12;
    p.seqlen_q = 1100;
    p.seqlen_k = 1300;
    p.mask = MaskKind::causal;
    p.lse = true;
    add(fmt::format("causal_pair_groups_d{}", d), p, "h_bm128_bn128_wg2_s3_ov_pp");
    p.heads_kv = 4;
    p.seqlen_k = 900;
    p.mask = MaskKind::causal_bottom_right;
    add(fmt::format("causal_br_pair_groups_gqa_d{}", d), p, "h_bm128_bn128_wg2_s3_ov_pp");
  }
  // Block_n 176 with two stages under overlap + ping-pong: the default at d120-128 without a mask
  // beyond 2048 keys (key counts that leave a partial last block), with LSE, GQA, both varlen kinds.
  for (int d : {120, 128}) {
    const char* cfg = "h_bm128_bn176_wg2_s2_ov_pp";
    ProblemDesc p = base(d);
    p.seqlen_q = 300;
    p.seqlen_k = 2100;
    p.heads_q = 4;
    p.heads_kv = 2;
    p.lse = true;
    add(fmt::format("bn176_gqa_lse_d{}", d), p, cfg);
    p = base(d, DType::f16);
    p.batch = 3;
    p.seqlen_q = 260;
    p.seqlen_k = 2300;
    p.varlen = VarlenKind::padded;
    p.lse = true;
    add(fmt::format("bn176_padded_f16_d{}", d), p, cfg);
    p.varlen = VarlenKind::packed;
    add(fmt::format("bn176_packed_f16_d{}", d), p, cfg);
  }
  // Three consumers at block_n 128 (FA3's d64 tile: O + S + P fill the 128 accumulator registers
  // the model allows three consumers without a window, softcap or bias tensor), up to head dim 64:
  // every mask, LSE, GQA, ALiBi, both varlen kinds, a key count that is no multiple of 128, f16.
  for (const char* cfg : {"h_bm192_bn128_wg3_s2_ov", "h_bm192_bn128_wg3_s3_ov", "h_bm192_bn128_wg3_s2_ov_ps",
                          "h_bm192_bn128_wg3_s3_ov_ps"}) {
    for (int d : {24, 64}) {
      ProblemDesc p = base(d);
      p.seqlen_q = 1000;
      p.seqlen_k = 777;
      add(fmt::format("wide_n_{}_plain_d{}", cfg, d), p, cfg);
      p.batch = 3;
      p.heads_q = 12;
      p.heads_kv = 4;
      p.seqlen_q = 300;
      p.seqlen_k = 333;
      p.mask = MaskKind::causal_bottom_right;
      p.alibi = true;
      p.lse = true;
      add(fmt::format("wide_n_{}_gqa_alibi_causal_br_d{}", cfg, d), p, cfg);
      p = base(d, DType::f16);
      p.batch = 6;
      p.seqlen_q = p.seqlen_k = 530;
      p.varlen = VarlenKind::packed;
      p.mask = MaskKind::causal;
      p.lse = true;
      add(fmt::format("wide_n_{}_packed_causal_f16_d{}", cfg, d), p, cfg);
      p.varlen = VarlenKind::padded;
      add(fmt::format("wide_n_{}_padded_causal_f16_d{}", cfg, d), p, cfg);
    }
  }
  // Dropout (keep bits drawn by the 4 lanes of a row pair and traded by shuffles, zeroed after
  // the row sums, 1 / (1 - p) in the epilogue): the defaults (serial schedule) from d8 to d256,
  // masks, GQA, varlen, a window, ALiBi, a bias tile, LSE, one consumer, unequal lengths.
  for (int d : {8, 64, 96, 128, 192, 256}) {
    ProblemDesc p = base(d);
    p.dropout_p = 0.2f;
    p.seqlen_q = 333;
    p.seqlen_k = 461;
    add(fmt::format("dropout_d{}", d), p);
    p.mask = MaskKind::causal_bottom_right;
    p.heads_q = 4;
    p.heads_kv = 2;
    add(fmt::format("dropout_causal_br_gqa_d{}", d), p);
  }
  {
    ProblemDesc p = base(64);
    p.dropout_p = 0.35f;
    p.mask = MaskKind::causal;
    p.window = Window{90, 0};
    p.varlen = VarlenKind::packed;
    p.alibi = true;
    add("dropout_causal_window_packed_alibi_d64", p);
    p = base(128);
    p.dropout_p = 0.1f;
    p.bias = "bhqk";
    p.varlen = VarlenKind::padded;
    add("dropout_bias_tile_padded_d128", p);
    p = base(96, DType::f16);
    p.dropout_p = 0.5f;
    p.mask = MaskKind::causal;
    add("dropout_causal_f16_d96", p, "h_bm64_bn64_wg1_s2");
  }
  return cs;
}

class Sm90Features : public ::testing::TestWithParam<Case> {};
TEST_P(Sm90Features, MatchesReference) {
  JITATTN_REQUIRE_SM90();
  expect_pass(GetParam().desc, GetParam().config);
}
INSTANTIATE_TEST_SUITE_P(ForwardSm90, Sm90Features, ::testing::ValuesIn(feature_cases()),
                         [](const auto& info) { return info.param.name; });

// Random shapes: fresh sizes each run (the seed of each case is in the failure message).
TEST(ForwardSm90, RandomShapes) {
  JITATTN_REQUIRE_SM90();
  std::mt19937 rng(std::random_device{}());
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int i = 0; i < 12; ++i) {
    ProblemDesc p;
    p.head_dim = 8 * pick(1, 32);
    p.head_dim_v = 8 * pick(1, 32);
    p.batch = pick(1, 3);
    p.heads_kv = pick(1, 3);
    p.heads_q = p.heads_kv * pick(1, 3);
    p.seqlen_q = pick(1, 1500);
    p.seqlen_k = pick(1, 1500);
    p.mask = static_cast<MaskKind>(pick(0, 2));
    p.lse = pick(0, 1) == 1;
    p.dtype = pick(0, 1) ? DType::bf16 : DType::f16;
    SCOPED_TRACE(harness::describe(p));
    expect_pass(p);
  }
}

// On sm_90 the runtime's default is this family wherever it supports the spec (varlen too).
TEST(ForwardSm90, RuntimeDefaultPicksTheFamily) {
  JITATTN_REQUIRE_SM90();
  ProblemDesc p = base(128);
  p.mask = MaskKind::causal;
  harness::CheckResult r = harness::check(engine(), p);
  EXPECT_TRUE(r.pass);
  EXPECT_EQ(r.kernel.config.rfind("h_", 0), 0u) << r.kernel.config;
  EXPECT_EQ(r.kernel.target, "sm_90a");
  p.varlen = VarlenKind::packed;
  r = harness::check(engine(), p);
  EXPECT_TRUE(r.pass);
  EXPECT_EQ(r.kernel.config.rfind("h_", 0), 0u) << r.kernel.config;
}

// The mma.sync family stays a candidate on Hopper: forced, it still computes the same function.
TEST(ForwardSm90, MmaSyncFamilyStillRunsOnHopper) {
  JITATTN_REQUIRE_SM90();
  for (int d : {64, 96, 128, 256}) {
    ProblemDesc p = base(d);
    p.mask = MaskKind::causal;
    ForwardOptions opt;
    opt.config = "bm64_bn32_w4_s2";
    const harness::CheckResult r = harness::check(engine(), p, opt);
    EXPECT_TRUE(r.pass) << harness::describe(p) << " rel_err " << r.rel_err;
    EXPECT_EQ(r.kernel.target, "sm_90");
  }
}

}  // namespace
}  // namespace jitattn
