// Backward kernels on a GPU against the float64 reference's gradients, over the feature grid and
// random shapes; dropout's mask against the host's Philox; deterministic mode bitwise stable.
// Every case draws fresh random inputs and poisons the gradients first (runtime/harness.cpp).
// Skipped with a message when there is no GPU.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "generator/kernel_spec.h"
#include "jitattn/jitattn.h"
#include "runtime/device/driver.h"
#include "runtime/harness.h"
#include "tests/gpu_test_util.h"
#include "runtime/numeric.h"
#include "runtime/plan.h"
#include "runtime/problem.h"
#include "templates/philox.h"

namespace jitattn {
namespace {

using harness::ProblemDesc;

Engine& engine() { return test::gpu_engine(); }

void expect_pass(const ProblemDesc& d, const BackwardOptions& opt = {}) {
  harness::Runner runner(d);
  const harness::BackwardCheckResult r = runner.check_backward(engine(), opt);
  EXPECT_TRUE(r.pass) << harness::describe(d) << (opt.deterministic ? " deterministic" : "")
                      << " config " << r.kernel.config << " seed " << r.seed << ": dq " << r.dq_err
                      << " dk " << r.dk_err << " dv " << r.dv_err << " dbias " << r.dbias_err
                      << " (tol " << r.tolerance << "); forward rel_err " << r.forward.rel_err
                      << " lse " << r.forward.lse_rel_err << " pass " << r.forward.pass;
  if (opt.config.empty()) EXPECT_EQ(r.kernel.spill_bytes, 0) << r.kernel.name;
}

ProblemDesc base(int d, DType dt = DType::bf16) { return test::gpu_base(d, dt); }

struct Case {
  std::string name;
  ProblemDesc desc;
  bool deterministic = false;
  std::string config;
  std::string target;  // Sm90Features: the kernel target expected ("sm_90a" or the fallback's "sm_90")
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name << " [" << harness::describe(c.desc) << "]"; }

std::vector<Case> cases() {
  std::vector<Case> cs;
  auto add = [&](std::string name, ProblemDesc p, bool det = false, std::string cfg = "") {
    cs.push_back({std::move(name), p, det, std::move(cfg)});
  };
  const test::AddCase add_plain = [&](std::string name, ProblemDesc p) { add(std::move(name), p); };
  for (int d : {8, 40, 64, 80, 96, 128, 160, 256}) {
    ProblemDesc p = base(d);
    p.mask = MaskKind::causal;
    add(fmt::format("causal_d{}", d), p);
  }
  for (int d : {64, 128}) {
    ProblemDesc p = base(d, DType::f16);
    add(fmt::format("f16_d{}", d), p);
  }
  for (int d : {64, 128}) {
    test::add_mask_cases(d, add_plain);
    test::add_layout_cases(d, add_plain);
    ProblemDesc p = base(d);
    p.alibi = true;
    p.bias = "1hqk";
    p.dbias = true;
    p.softcap = 20.0f;
    p.mask = MaskKind::causal;
    p.window = Window{64, 0};
    p.varlen = VarlenKind::packed;
    p.heads_q = 6;
    p.heads_kv = 2;
    p.dropout_p = 0.15f;
    add(fmt::format("everything_d{}", d), p);
    add(fmt::format("everything_deterministic_d{}", d), p, true);
  }
  {
    ProblemDesc p = base(64);
    p.alibi = true;
    add("alibi_d64", p);
    p = base(64);
    p.softcap = 5.0f;
    add("softcap_d64", p);
    p = base(64, DType::f16);
    p.scale = 1.0f;
    add("scale_one_f16_d64", p);
    p = base(64);
    p.layout = {0, 2, 1, 3};
    add("layout_bhsd_d64", p);
    for (const char* b : {"bhqk", "1hqk", "b11k", "bhq1", "111k"}) {
      p = base(64);
      p.bias = b;
      p.dbias = true;
      add(fmt::format("dbias_{}_d64", b), p);
    }
    p = base(96);
    p.bias = "bhqk";  // no dbias: bias is an input only
    add("bias_without_dbias_d96", p);
    p = base(64);
    p.dropout_p = 0.2f;
    add("dropout_d64", p);
    p.mask = MaskKind::causal;
    p.heads_q = 6;
    p.heads_kv = 2;
    add("dropout_causal_gqa_d64", p);
    add("dropout_causal_gqa_deterministic_d64", p, true);
    p = base(128);
    p.dropout_p = 0.5f;
    add("dropout_half_d128", p);
  }
  for (auto [d, dv] : {std::pair{72, 40}, {64, 128}, {256, 8}}) {
    ProblemDesc p = base(d);
    p.head_dim_v = dv;
    p.mask = MaskKind::causal;
    add(fmt::format("d{}_dv{}", d, dv), p);
  }
  for (auto [sq, sk] : {std::pair{1, 1}, {1, 17}, {17, 1}, {17, 17}, {1000, 1000}, {100, 1000}, {1000, 100}}) {
    ProblemDesc p = base(128);
    p.seqlen_q = sq;
    p.seqlen_k = sk;
    p.heads_q = p.heads_kv = 2;
    p.batch = 1;
    add(fmt::format("seqlens_{}_{}", sq, sk), p);
    p.mask = MaskKind::causal;
    add(fmt::format("seqlens_{}_{}_causal", sq, sk), p);
  }
  {
    ProblemDesc p = base(128);
    p.mask = MaskKind::causal;
    p.heads_q = 4;
    p.heads_kv = 2;
    add("deterministic_gqa_causal_d128", p, true);
    p = base(256);
    add("deterministic_d256", p, true);
  }
  for (const char* cfg : {"bm64_bn64_w4_s1", "bm16_bn128_w8_s2", "bm32_bn32_w2_s2_x2", "bm128_bn64_w4_s1_x4"}) {
    ProblemDesc p = base(64);
    p.mask = MaskKind::causal_bottom_right;
    p.alibi = true;
    add(fmt::format("config_{}", cfg), p, false, cfg);
    add(fmt::format("config_{}_deterministic", cfg), p, true, cfg);
  }
  return cs;
}

class Features : public ::testing::TestWithParam<Case> {};
TEST_P(Features, MatchesReference) {
  JITATTN_REQUIRE_GPU();
  BackwardOptions opt;
  opt.deterministic = GetParam().deterministic;
  opt.config = GetParam().config;
  expect_pass(GetParam().desc, opt);
}
INSTANTIATE_TEST_SUITE_P(BackwardGpu, Features, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

// ---- the Hopper-family backward (templates/attn_bwd_sm90.cuh), on an sm_90 GPU ------------------
#define JITATTN_REQUIRE_SM90()                                                                   \
  do {                                                                                           \
    JITATTN_REQUIRE_GPU();                                                                       \
    if (device::device_info(0).sm() != 90) GTEST_SKIP() << "the sm90 family needs an sm_90 GPU"; \
  } while (0)

// The family's default backward config for the problem (spec fields that the default reads), or
// "" when the family refuses the spec (registers): the runtime's default, the mma.sync backward,
// runs it then.
KernelSpec sm90_backward_spec(const ProblemDesc& d, bool deterministic = false) {
  KernelSpec s;
  s.pass = Pass::backward;
  s.target.sm = 90;
  s.dtype = d.dtype;
  s.head_dim = d.head_dim;
  s.head_dim_v = d.dv();
  s.mask = d.mask;
  s.window = d.window.has_value();
  s.bias = d.bias != "none";
  s.dbias = d.dbias;
  s.alibi = d.alibi;
  s.softcap = d.softcap;
  s.varlen = d.varlen;
  s.dropout = d.dropout_p > 0.0f;
  s.deterministic = deterministic;
  return s;
}

std::string sm90_backward_default(const ProblemDesc& d) {
  const KernelSpec s = sm90_backward_spec(d);
  const TileConfig c = family_default_config(s, limits_for_arch(90), Family::sm90);
  return why_illegal(s, c, limits_for_arch(90)) ? std::string() : c.canonical();
}

std::vector<Case> sm90_cases() {
  std::vector<Case> cs;
  // An explicit config is forced; else the family's default where it is legal and the runtime's
  // default also picks it (no bias tensor, or one with dBias), else the runtime's default (the
  // mma.sync fallback).
  auto add = [&](std::string name, ProblemDesc p, std::string cfg = "") {
    const bool forced = !cfg.empty();
    if (!forced) cfg = sm90_backward_default(p);
    const bool sm90 = forced || (!cfg.empty() && (p.bias == "none" || p.dbias));
    cs.push_back({std::move(name), p, false, sm90 ? cfg : std::string(), sm90 ? "sm_90a" : "sm_90"});
  };
  for (int d = 8; d <= 128; d += 8) {
    ProblemDesc p = base(d);
    add(fmt::format("plain_d{}", d), p);
    p.mask = MaskKind::causal;
    add(fmt::format("causal_d{}", d), p);
  }
  // Dropout (keep bits drawn by 4 lanes per key quad and traded by shuffles): every mask, GQA,
  // varlen, each dQ split, deterministic mode, dBias. The 128-key shape up to head dim 80, the
  // column split (_x2) at d88-192; d200-256 run the mma.sync fallback (target sm_90).
  for (int d : {16, 64, 80, 96, 128, 192, 256}) {
    ProblemDesc p = base(d);
    p.dropout_p = 0.17f;
    p.seqlen_q = 333;
    p.seqlen_k = 457;
    add(fmt::format("dropout_d{}", d), p);
    p.mask = MaskKind::causal_bottom_right;
    p.heads_q = 4;
    p.heads_kv = 2;
    add(fmt::format("dropout_causal_br_gqa_d{}", d), p);
    p.mask = MaskKind::causal;
    p.window = Window{100, 0};
    p.varlen = VarlenKind::packed;
    add(fmt::format("dropout_causal_window_packed_d{}", d), p);
  }
  // (block_m 128 beside dropout: the register model refuses it at every head dim.)
  for (const char* cfg : {"h_bm64_bn64_wg1_s1", "h_bm64_bn128_wg2_s3", "h_bm64_bn128_wg2_s2_pp"}) {
    ProblemDesc p = base(32);
    p.dropout_p = 0.3f;
    p.mask = MaskKind::causal;
    p.seqlen_q = 333;
    p.seqlen_k = 457;
    add(fmt::format("dropout_config_{}_d32", cfg), p, cfg);
  }
  {
    ProblemDesc p = base(64);
    p.dropout_p = 0.1f;
    p.bias = "b1qk";
    p.dbias = true;
    p.mask = MaskKind::causal;
    add("dropout_dbias_causal_d64", p);
    p = base(48);
    p.dropout_p = 0.25f;
    p.softcap = 10.0f;
    p.alibi = true;
    add("dropout_softcap_alibi_d48", p);
  }
  // f16, every mask and layout case, ALiBi beside a causal mask, softcap, scale 1 in the bhsd
  // layout; names from `prefix`.
  auto add_features = [&](const std::string& prefix, int d) {
    add(fmt::format("{}f16_d{}", prefix, d), base(d, DType::f16));
    const test::AddCase add_named = [&](std::string name, ProblemDesc q) { add(prefix + name, q); };
    test::add_mask_cases(d, add_named);
    test::add_layout_cases(d, add_named);
    ProblemDesc p = base(d);
    p.alibi = true;
    p.mask = MaskKind::causal;
    add(fmt::format("{}alibi_causal_d{}", prefix, d), p);
    p = base(d);
    p.softcap = 5.0f;
    add(fmt::format("{}softcap_d{}", prefix, d), p);
    p = base(d);
    p.scale = 1.0f;
    p.layout = {0, 2, 1, 3};
    add(fmt::format("{}scale_one_bhsd_d{}", prefix, d), p);
  };
  for (int d : {64, 96, 128}) add_features("", d);
  {
    ProblemDesc p = base(64);
    p.alibi = true;
    p.softcap = 20.0f;
    p.bias = "1hqk";  // an input only (no dbias)
    p.mask = MaskKind::causal;
    p.window = Window{64, 0};
    p.varlen = VarlenKind::packed;
    p.heads_q = 6;
    p.heads_kv = 2;
    add("everything_but_dropout_d64", p);  // registers: the mma.sync fallback
    p = base(64);
    p.bias = "b1qk";
    p.mask = MaskKind::causal;
    add("bias_causal_d64", p, sm90_backward_default(p));  // legal, not the default: forced
    p.alibi = true;
    p.varlen = VarlenKind::padded;
    add("bias_alibi_padded_d64", p, sm90_backward_default(p));
  }
  for (auto [d, dv] : {std::pair{72, 40}, {64, 128}, {128, 64}, {8, 128}}) {
    ProblemDesc p = base(d);
    p.head_dim_v = dv;
    p.mask = MaskKind::causal;
    add(fmt::format("d{}_dv{}", d, dv), p);
  }
  // dBias (the score gradient by fp32 atomics; broadcast dims summed there), the default with
  // a bias tensor that needs its gradient where registers allow (up to d112 without other
  // modifiers; d128 runs the mma.sync fallback): the bias shapes of the mma.sync dbias cases,
  // masks, GQA (a head-broadcast bias sums every head), varlen, both element types.
  for (int d : {64, 96, 112, 128}) {
    ProblemDesc p = base(d);
    p.bias = "bhqk";
    p.dbias = true;
    add(fmt::format("dbias_bhqk_d{}", d), p);
    p.mask = MaskKind::causal;
    p.bias = "1hqk";
    add(fmt::format("dbias_1hqk_causal_d{}", d), p);
    p = base(d);
    p.bias = "b1qk";
    p.dbias = true;
    p.heads_q = 6;
    p.heads_kv = 2;
    p.mask = MaskKind::causal_bottom_right;
    add(fmt::format("dbias_b1qk_gqa_causal_br_d{}", d), p);
    p = base(d, DType::f16);
    p.bias = "bhqk";
    p.dbias = true;
    p.mask = MaskKind::causal;
    p.varlen = VarlenKind::packed;
    add(fmt::format("dbias_bhqk_f16_packed_causal_d{}", d), p);
    p = base(d, DType::f16);
    p.bias = "1hqk";
    p.dbias = true;
    p.varlen = VarlenKind::padded;
    p.heads_q = 6;
    p.heads_kv = 3;
    add(fmt::format("dbias_1hqk_f16_padded_gqa_d{}", d), p);
  }
  {
    for (const char* b : {"b11k", "bhq1", "bh1k", "111k"}) {
      ProblemDesc p = base(64);
      p.bias = b;
      p.dbias = true;
      add(fmt::format("dbias_{}_d64", b), p);
    }
    ProblemDesc p = base(64);
    p.bias = "bhqk";
    p.dbias = true;
    p.softcap = 5.0f;
    add("dbias_softcap_d64", p);
    p = base(64);
    p.bias = "b1qk";
    p.dbias = true;
    p.alibi = true;
    p.mask = MaskKind::causal;
    p.window = Window{64, 0};
    add("dbias_alibi_causal_window_d64", p);
    p = base(32);
    p.bias = "bhqk";
    p.dbias = true;
    p.seqlen_q = 333;
    p.seqlen_k = 457;
    p.heads_q = 4;
    p.heads_kv = 2;
    // block_m 128 without a mask: the register model refuses it beside dBias and a causal mask at
    // d32 (212), and the H200's NVRTC spilled 16 bytes of it at d16.
    for (const char* cfg : {"h_bm128_bn128_wg2_s2", "h_bm128_bn128_wg2_s3_pp"}) {
      add(fmt::format("dbias_config_{}_d32", cfg), p, cfg);
    }
    p.bias = "1h1k";
    add("dbias_1h1k_config_h_bm128_bn128_wg2_s2_d32", p, "h_bm128_bn128_wg2_s2");
    p.bias = "bhqk";
    p.mask = MaskKind::causal_bottom_right;
    for (const char* cfg : {"h_bm64_bn64_wg1_s1", "h_bm64_bn128_wg2_s2_pp"}) {
      add(fmt::format("dbias_config_{}_d32", cfg), p, cfg);
    }
    for (int d : {64, 96}) {  // d128 with a bias tensor: registers (the mma.sync backward)
      p = base(d);
      p.bias = "b1qk";
      p.dbias = true;
      p.mask = MaskKind::causal;
      p.heads_q = 4;
      p.heads_kv = 2;
      add(fmt::format("dbias_config_h_bm64_bn128_wg2_s2_pp_gqa_d{}", d), p, "h_bm64_bn128_wg2_s2_pp");
    }
  }
  for (auto [sq, sk] : {std::pair{1, 1}, {1, 17}, {17, 1}, {17, 17}, {1000, 1000}, {100, 1000}, {1000, 100}}) {
    for (int d : {64, 128, 256}) {
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
  // Other configs: one consumer (own keys), block_m 128 (row-split dQ), deeper and single rings;
  // _x2 forced below head dim 128 (a tuning candidate there) and with other rings above.
  std::vector<std::pair<const char*, int>> configs;
  for (const char* cfg : {"h_bm64_bn64_wg1_s1", "h_bm128_bn128_wg2_s2", "h_bm64_bn128_wg2_s3",
                          "h_bm128_bn64_wg1_s2", "h_bm64_bn128_wg2_s2_pp", "h_bm128_bn128_wg2_s3_pp"}) {
    for (int d : {16, 32}) configs.emplace_back(cfg, d);
  }
  configs.insert(configs.end(), {{"h_bm64_bn64_wg2_s2_x2", 64}, {"h_bm64_bn64_wg2_s2_x2", 128},
                                 {"h_bm64_bn64_wg2_s1_x2", 160}, {"h_bm64_bn64_wg2_s3_x2", 96}});
  for (auto [cfg, d] : configs) {
    ProblemDesc p = base(d);
    p.mask = MaskKind::causal_bottom_right;
    p.seqlen_q = 333;
    p.seqlen_k = 457;
    p.heads_q = 4;
    p.heads_kv = 2;
    add(fmt::format("config_{}_d{}", cfg, d), p, cfg);
  }
  {
    ProblemDesc p = base(96);  // d96: each consumer adds its own keys' dQ share
    p.mask = MaskKind::causal;
    add("config_h_bm64_bn128_wg2_s2_d96", p, "h_bm64_bn128_wg2_s2");
    p = base(128);
    p.mask = MaskKind::causal;
    p.heads_q = 4;
    p.heads_kv = 2;
    add("config_h_bm64_bn128_wg2_s2_pp_gqa_d128", p, "h_bm64_bn128_wg2_s2_pp");
    add("config_h_bm64_bn128_wg2_s3_gqa_d128", p, "h_bm64_bn128_wg2_s3");
  }
  // Head dims above 128: the column split (_x2, templates/attn_bwd_sm90.cuh kWide) is the default:
  // both consumers on 64 keys and 64 query rows, each half of S^T's query columns and of dK's, dV's
  // and dQ's head-dim columns (padded to multiples of 64 in shared memory: d136 and d200 pad, d160
  // takes 64-byte panels); dQ in two passes at 256. Every mask and layout, modifiers, mixed head
  // dims, dBias (with a causal mask at d256: the fallback), the causal pair groups (dropout and
  // edge sequence lengths: above and below).
  for (int d : {136, 160, 192, 200, 256}) {
    ProblemDesc p = base(d);
    add(fmt::format("wide_plain_d{}", d), p);
    p.mask = MaskKind::causal;
    add(fmt::format("wide_causal_d{}", d), p);
  }
  for (int d : {192, 256}) {
    add_features("wide_", d);
    ProblemDesc p = base(d);
    p.bias = "bhqk";
    p.dbias = true;
    add(fmt::format("wide_dbias_bhqk_d{}", d), p);
    p.bias = "b1qk";
    p.heads_q = 6;
    p.heads_kv = 2;
    p.mask = MaskKind::causal_bottom_right;
    add(fmt::format("wide_dbias_b1qk_gqa_causal_br_d{}", d), p);
    p = base(d);
    p.alibi = true;
    p.softcap = 20.0f;
    p.mask = MaskKind::causal;
    p.window = Window{64, 0};
    p.varlen = VarlenKind::padded;
    add(fmt::format("wide_alibi_softcap_window_padded_d{}", d), p);
  }
  for (auto [d, dv] : {std::pair{192, 128}, {256, 128}, {128, 256}, {256, 192}, {64, 256}}) {
    ProblemDesc p = base(d);
    p.head_dim_v = dv;
    p.mask = MaskKind::causal;
    add(fmt::format("wide_d{}_dv{}", d, dv), p);
  }
  {
    ProblemDesc p = base(256);
    p.batch = 4;
    p.heads_q = p.heads_kv = 12;
    p.seqlen_q = 300;
    p.seqlen_k = 1100;
    p.mask = MaskKind::causal;
    add("wide_causal_pair_groups_d256", p);
  }
  // Causal launch order in groups of (KV head, batch) pairs (runtime/plan.h causal_pair_group): 48
  // pairs of 9 key blocks take groups of 16, so every CTA maps to a block of another pair than its
  // grid position's; key blocks past the queries (top-left) have no work and write zeros. GQA
  // and bottom-right alignment too.
  for (int d : {64, 128}) {
    ProblemDesc p = base(d);
    p.batch = 4;
    p.heads_q = p.heads_kv = 12;
    p.seqlen_q = 300;
    p.seqlen_k = 1100;
    p.mask = MaskKind::causal;
    add(fmt::format("causal_pair_groups_d{}", d), p);
    p.heads_q = 24;
    p.mask = MaskKind::causal_bottom_right;
    add(fmt::format("causal_br_pair_groups_gqa_d{}", d), p);
  }
  return cs;
}

// Runs case c's backward (its config, `deterministic` as c says) against the reference, and
// checks the kernel's target and spills.
void check_sm90_case(harness::Runner& runner, const Case& c) {
  BackwardOptions opt;
  opt.config = c.config;
  opt.deterministic = c.deterministic;
  const harness::BackwardCheckResult r = runner.check_backward(engine(), opt);
  EXPECT_TRUE(r.pass) << harness::describe(c.desc) << " config " << r.kernel.config << " seed " << r.seed
                      << ": dq " << r.dq_err << " dk " << r.dk_err << " dv " << r.dv_err << " dbias "
                      << r.dbias_err << " (tol " << r.tolerance << ")";
  EXPECT_EQ(r.kernel.target, c.target) << r.kernel.name;
  EXPECT_EQ(r.kernel.spill_bytes, 0) << r.kernel.name;
}

class Sm90Features : public ::testing::TestWithParam<Case> {};
TEST_P(Sm90Features, MatchesReference) {
  JITATTN_REQUIRE_SM90();
  harness::Runner runner(GetParam().desc);
  check_sm90_case(runner, GetParam());
}
INSTANTIATE_TEST_SUITE_P(BackwardSm90, Sm90Features, ::testing::ValuesIn(sm90_cases()),
                         [](const auto& info) { return info.param.name; });

// The Hopper backward's deterministic mode (dQ's reduce-adds in a fixed key-block order,
// templates/bwd_order.h) under every way its consumers add dQ: alternating whole products (d64),
// column halves (d128), row halves (block_m 128), one consumer, and _pp's two shares of the same
// elements in turn; in both orders: first to last key block (no mask, a left window alone: its
// first key block varies per query block) and last to first (causal either alignment, a right
// window). Several key blocks per query block, GQA (a CTA adds for every query head of its group),
// varlen. Against the reference, then bitwise equal over three more runs.
std::vector<Case> sm90_deterministic_cases() {
  std::vector<Case> cs;
  // Where the register model refuses the config at the head dim (a window or varlen at d128),
  // 16 less.
  auto add = [&](std::string name, ProblemDesc p, std::string cfg) {
    if (!cfg.empty() && why_illegal(sm90_backward_spec(p, true), parse_config(cfg), limits_for_arch(90))) {
      p.head_dim -= 16;
    }
    cs.push_back({fmt::format("{}{}", name, p.head_dim), p, true, std::move(cfg), "sm_90a"});
  };
  // Head dims where each config compiles without spills (one consumer spilled 28 bytes at d112
  // with a window and packed varlen on the H200, and _pp 12 at d128 causal: not default configs;
  // the tuner drops them).
  const std::pair<const char*, int> configs[] = {{"h_bm64_bn128_wg2_s2", 64},  {"h_bm64_bn128_wg2_s2", 128},
                                                 {"h_bm128_bn128_wg2_s2", 32}, {"h_bm64_bn64_wg1_s1", 96},
                                                 {"h_bm64_bn128_wg2_s2_pp", 112}, {"h_bm64_bn64_wg2_s1_x2", 256},
                                                 {"h_bm64_bn64_wg2_s2_x2", 192}};
  for (auto [cfg, d] : configs) {
    ProblemDesc p = base(d);
    p.seqlen_q = p.seqlen_k = 700;
    p.heads_q = 4;
    p.heads_kv = 2;
    add(fmt::format("{}_gqa_d", cfg), p, cfg);
    p.mask = MaskKind::causal;
    add(fmt::format("{}_causal_gqa_d", cfg), p, cfg);
    p.mask = MaskKind::causal_bottom_right;
    p.seqlen_q = 333;
    p.window = Window{200, -1};
    add(fmt::format("{}_causal_br_window_d", cfg), p, cfg);
    p.mask = MaskKind::none;
    p.seqlen_q = 700;
    add(fmt::format("{}_left_window_d", cfg), p, cfg);
    p.window = Window{150, 90};
    p.varlen = VarlenKind::packed;
    add(fmt::format("{}_window_packed_d", cfg), p, cfg);
    p.window.reset();
    p.mask = MaskKind::causal;
    p.varlen = VarlenKind::padded;
    add(fmt::format("{}_causal_padded_d", cfg), p, cfg);
  }
  // Dropout beside the ordered dQ (the keep bits do not depend on the order).
  {
    ProblemDesc p = base(64);
    p.seqlen_q = p.seqlen_k = 700;
    p.dropout_p = 0.2f;
    p.mask = MaskKind::causal;
    add("h_bm64_bn128_wg2_s2_dropout_causal_d", p, "h_bm64_bn128_wg2_s2");
  }
  // The runtime's default config, with a full-shape dBias (one writer per element: deterministic).
  ProblemDesc p = base(64);
  p.seqlen_q = p.seqlen_k = 700;
  p.mask = MaskKind::causal;
  p.bias = "bhqk";
  p.dbias = true;
  add("default_dbias_causal_d", p, "");
  return cs;
}

class Sm90Deterministic : public ::testing::TestWithParam<Case> {};
TEST_P(Sm90Deterministic, MatchesReferenceAndRepeatsBitwise) {
  JITATTN_REQUIRE_SM90();
  ASSERT_TRUE(GetParam().deterministic);
  harness::Runner runner(GetParam().desc);
  check_sm90_case(runner, GetParam());
  const std::vector<std::byte> first = runner.gradient_bytes();
  BackwardOptions opt;
  opt.config = GetParam().config;
  opt.deterministic = true;
  for (int rep = 0; rep < 3; ++rep) {
    EXPECT_TRUE(runner.check_backward(engine(), opt).pass);
    EXPECT_TRUE(first == runner.gradient_bytes()) << "run " << rep + 2 << " differs";
  }
}
INSTANTIATE_TEST_SUITE_P(BackwardSm90, Sm90Deterministic, ::testing::ValuesIn(sm90_deterministic_cases()),
                         [](const auto& info) { return info.param.name; });

// On sm_90 the runtime's default backward is the Hopper family where it supports the spec (a
// bias tensor with dBias too, deterministic mode too), and the mma.sync backward where it does not
// (dropout above head dim 80 up to 128, and above 192; head dims above 256) or a bias tensor
// without dBias.
TEST(BackwardSm90, DefaultFamily) {
  JITATTN_REQUIRE_SM90();
  ProblemDesc p = base(128);
  p.mask = MaskKind::causal;
  harness::Runner runner(p);
  const auto r = runner.check_backward(engine(), {});
  EXPECT_TRUE(r.pass);
  EXPECT_EQ(r.kernel.target, "sm_90a") << r.kernel.name;
  BackwardOptions det;
  det.deterministic = true;
  const auto rd = runner.check_backward(engine(), det);
  EXPECT_TRUE(rd.pass);
  EXPECT_EQ(rd.kernel.target, "sm_90a") << rd.kernel.name;
  ProblemDesc wide = base(256);
  harness::Runner runner_wide(wide);
  const auto rw = runner_wide.check_backward(engine(), {});
  EXPECT_TRUE(rw.pass);
  EXPECT_EQ(rw.kernel.target, "sm_90a") << rw.kernel.name;
  EXPECT_EQ(rw.kernel.config, "h_bm64_bn64_wg2_s1_x2");
  ProblemDesc big = base(320);
  harness::Runner runner_big(big);
  const auto rb = runner_big.check_backward(engine(), {});
  EXPECT_TRUE(rb.pass);
  EXPECT_EQ(rb.kernel.target, "sm_90") << rb.kernel.name;
  ProblemDesc bias = base(96);
  bias.bias = "1hqk";
  harness::Runner runner_bias(bias);
  const auto rn = runner_bias.check_backward(engine(), {});
  EXPECT_TRUE(rn.pass);
  EXPECT_EQ(rn.kernel.target, "sm_90") << rn.kernel.name;
  bias.dbias = true;
  harness::Runner runner_dbias(bias);
  const auto rdb = runner_dbias.check_backward(engine(), {});
  EXPECT_TRUE(rdb.pass) << "dbias " << rdb.dbias_err;
  EXPECT_EQ(rdb.kernel.target, "sm_90a") << rdb.kernel.name;
}

// --reps: exactly that many timed repetitions, whatever the budget (peers.py's protocol); 0 keeps
// timing until the budget is spent, at least 10 on the GPU.
TEST(BackwardGpu, BenchTimesTheRepetitionsAsked) {
  JITATTN_REQUIRE_GPU();
  ProblemDesc p = base(64);
  p.seqlen_q = p.seqlen_k = 256;
  p.lse = true;
  harness::Runner runner(p);
  EXPECT_EQ(runner.bench_backward(engine(), true, {}, 1e6, 3).samples, 3);
  EXPECT_EQ(runner.bench_backward(engine(), false, {}, 1e-3, 0).samples, 10);
  EXPECT_EQ(runner.bench(engine(), {}, 1e6, 4).samples, 4);
  const harness::BenchResult r = runner.bench(engine(), {}, 1e-3);
  EXPECT_EQ(r.samples, 10);
  EXPECT_GT(r.median_ms, 0.0);
}

// Random shapes: fresh sizes per run (the seed is printed with every failure).
TEST(BackwardGpu, RandomShapesMatchReference) {
  JITATTN_REQUIRE_GPU();
  std::mt19937_64 rng(std::random_device{}());
  for (int n = 0; n < 6; ++n) {
    ProblemDesc p = base(8 * std::uniform_int_distribution<int>(1, 32)(rng));
    p.seqlen_q = std::uniform_int_distribution<int>(1, 400)(rng);
    p.seqlen_k = std::uniform_int_distribution<int>(1, 400)(rng);
    p.heads_kv = std::uniform_int_distribution<int>(1, 2)(rng);
    p.heads_q = p.heads_kv * std::uniform_int_distribution<int>(1, 3)(rng);
    p.mask = static_cast<MaskKind>(std::uniform_int_distribution<int>(0, 2)(rng));
    p.varlen = static_cast<VarlenKind>(std::uniform_int_distribution<int>(0, 2)(rng));
    BackwardOptions opt;
    opt.deterministic = n % 2 == 1;
    expect_pass(p, opt);
  }
}

TEST(BackwardGpu, DeterministicModeIsBitwiseReproducible) {
  JITATTN_REQUIRE_GPU();
  for (int d : {64, 128}) {
    ProblemDesc p = base(d);
    p.seqlen_q = p.seqlen_k = 700;
    p.heads_q = 4;
    p.heads_kv = 2;
    p.mask = MaskKind::causal;
    p.bias = "bhqk";
    p.dbias = true;  // full-shape dbias: one writer per element
    harness::Runner runner(p);
    BackwardOptions opt;
    opt.deterministic = true;
    const auto first = runner.check_backward(engine(), opt);
    EXPECT_TRUE(first.pass) << d << ": dq " << first.dq_err;
    const std::vector<std::byte> a = runner.gradient_bytes();
    for (int rep = 0; rep < 3; ++rep) {
      EXPECT_TRUE(runner.check_backward(engine(), opt).pass);
      EXPECT_TRUE(a == runner.gradient_bytes()) << "d" << d << " run " << rep + 1 << " differs";
    }
  }
}

// p so small that floor(p * 2^32) = 0 and 1 / (1 - p) rounds to 1.0f: the dropout kernels keep
// everything and must give exactly the no-dropout kernels' bits, forward and backward.
TEST(BackwardGpu, DropoutKeepingEverythingEqualsNoDropoutBitwise) {
  JITATTN_REQUIRE_GPU();
  ASSERT_EQ(dropout_threshold(1e-10f), 0u);
  ASSERT_EQ(static_cast<float>(1.0 / (1.0 - double(1e-10f))), 1.0f);
  ProblemDesc p = base(64);
  p.mask = MaskKind::causal;
  p.seed = std::random_device{}() | 1u;
  for (bool det : {false, true}) {
    BackwardOptions opt;
    opt.deterministic = det;
    ProblemDesc q = p;
    q.dropout_p = 1e-10f;
    harness::Runner on(q);
    const auto r1 = on.check_backward(engine(), opt);
    // The same forward kernel family and config for both (on sm_90 the Hopper family runs the
    // no-dropout forward by default; dropout runs on mma.sync): bitwise equality is per kernel.
    ForwardOptions same;
    same.config = r1.forward.kernel.config;
    harness::Runner off(p);
    const auto r0 = off.check_backward(engine(), opt, same);
    EXPECT_TRUE(r0.pass && r1.pass);
    EXPECT_NE(r1.kernel.name.find("dropout"), std::string::npos) << r1.kernel.name;
    EXPECT_TRUE(off.output_bytes() == on.output_bytes()) << "forward outputs differ";
    if (det) EXPECT_TRUE(off.gradient_bytes() == on.gradient_bytes()) << "deterministic gradients differ";
  }
}

// The forward's mask read back exactly: q = 0 makes every probability 1/64 over 64 keys and v
// one-hot (v[j] = e_j) puts key j's kept factor in o[., j]; it must equal the host's Philox
// decision for every (batch, head, row, key), and the kept fraction must be 1 - p.
TEST(BackwardGpu, DropoutMaskMatchesHostPhiloxAndKeepsOneMinusP) {
  JITATTN_REQUIRE_GPU();
  device::ScopedContext ctx(0);
  const int b = 2, s = 256, h = 4, sk = 64, d = 64;
  const float prob = 0.3f;
  std::vector<uint16_t> zeros(size_t{b} * s * h * d, 0), onehot(size_t{b} * sk * h * d, 0);
  for (int bb = 0; bb < b; ++bb)
    for (int j = 0; j < sk; ++j)
      for (int hh = 0; hh < h; ++hh) onehot[((size_t(bb) * sk + j) * h + hh) * d + j] = float_to_bf16_bits(1.0f);
  device::DeviceBuffer q(zeros.size() * 2), k(onehot.size() * 2), v(onehot.size() * 2), o(zeros.size() * 2);
  q.upload(zeros.data(), zeros.size() * 2);
  k.upload(onehot.data(), onehot.size() * 2);  // any finite keys: q = 0 makes every score 0
  v.upload(onehot.data(), onehot.size() * 2);
  AttentionArgs a;
  a.q = TensorRef::contiguous(q.data(), DType::bf16, {b, s, h, d});
  a.k = TensorRef::contiguous(k.data(), DType::bf16, {b, sk, h, d});
  a.v = TensorRef::contiguous(v.data(), DType::bf16, {b, sk, h, d});
  a.o = TensorRef::contiguous(o.data(), DType::bf16, {b, s, h, d});
  a.dropout_p = prob;
  a.dropout_seed = std::random_device{}();
  a.dropout_offset = 12345;
  std::vector<uint16_t> first;
  for (int rep = 0; rep < 2; ++rep) {
    o.fill(0xFF);
    engine().forward(a);
    JITATTN_CU_CHECK(device::driver().cuCtxSynchronize());
    std::vector<uint16_t> out(zeros.size());
    o.download(out.data(), out.size() * 2);
    if (rep == 0) {
      first = out;
    } else {
      EXPECT_TRUE(first == out) << "the same (seed, offset) gave a different mask";
    }
  }
  const uint32_t threshold = dropout_threshold(prob);
  int64_t kept = 0, mismatches = 0;
  for (int bb = 0; bb < b; ++bb)
    for (int i = 0; i < s; ++i)
      for (int hh = 0; hh < h; ++hh)
        for (int j = 0; j < sk; ++j) {
          const float got = bf16_bits_to_float(first[((size_t(bb) * s + i) * h + hh) * d + j]);
          const bool host_keep = jitattn_kernel::dropout_keep(a.dropout_seed, a.dropout_offset,
                                                              unsigned(bb * h + hh), unsigned(i), unsigned(j), threshold);
          const bool gpu_keep = got > 0.0f;
          kept += gpu_keep;
          mismatches += gpu_keep != host_keep;
          if (gpu_keep) EXPECT_NEAR(got, 1.0f / 64.0f / (1.0f - prob), 1e-4f);
        }
  EXPECT_EQ(mismatches, 0);
  const double n = double(b) * s * h * sk;
  EXPECT_NEAR(double(kept) / n, 1.0 - prob, 0.01);  // n = 131072: standard deviation 0.0013
  a.dropout_offset += 1;  // another offset: another mask
  o.fill(0xFF);
  engine().forward(a);
  JITATTN_CU_CHECK(device::driver().cuCtxSynchronize());
  std::vector<uint16_t> other(zeros.size());
  o.download(other.data(), other.size() * 2);
  EXPECT_FALSE(first == other);
}

TEST(BackwardGpu, BadInputThrowsBeforeLaunch) {
  JITATTN_REQUIRE_GPU();
  device::ScopedContext ctx(0);
  device::DeviceBuffer buf(size_t{2} * 2 * 190 * 3 * 64 * 4);
  AttentionArgs a;
  a.q = TensorRef::contiguous(buf.data(), DType::bf16, {2, 190, 3, 64});
  a.k = a.v = TensorRef::contiguous(buf.data(), DType::bf16, {2, 211, 3, 64});
  a.o = a.q;
  BackwardArgs g;
  g.d_o = g.dq = a.q;
  g.dk = g.dv = a.k;
  try {
    engine().backward(a, g);
    FAIL() << "accepted a backward without lse";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "lse");
  }
}

}  // namespace
}  // namespace jitattn
