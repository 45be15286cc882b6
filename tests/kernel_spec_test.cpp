// KernelSpec / TileConfig: the canonical text and hash that key every cache, the legality rules
// the generator relies on to prune configs before compiling, the default config heuristic, and
// the plan (runtime/plan.h) that turns a validated problem into spec, params and grid.
#include "generator/kernel_spec.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "generator/generator.h"
#include "jitattn/error.h"
#include "runtime/plan.h"
#include "templates/bwd_order.h"

namespace jitattn {
namespace {

// A spec with a non-zero scale, so that a 1-ulp change of it is a change of a real value.
KernelSpec base_spec() {
  KernelSpec s;
  s.target.sm = 80;
  s.dtype = DType::bf16;
  s.head_dim = 128;
  s.head_dim_v = 128;
  s.scale = 0.125f;
  return s;
}

// ---- canonical() / hash() ---------------------------------------------------------------------

TEST(KernelSpec, CanonicalChangesWithEverySingleField) {
  // Every field is baked into the kernel, so a field missing from canonical() would make two
  // different kernels share one cache entry.
  const std::vector<std::pair<const char*, std::function<void(KernelSpec&)>>> changes = {
      {"target", [](KernelSpec& s) { s.target.sm = 90; }},
      {"dtype", [](KernelSpec& s) { s.dtype = DType::f16; }},
      {"head_dim", [](KernelSpec& s) { s.head_dim = 64; }},
      {"head_dim_v", [](KernelSpec& s) { s.head_dim_v = 64; }},
      {"mask causal", [](KernelSpec& s) { s.mask = MaskKind::causal; }},
      {"mask causal_bottom_right", [](KernelSpec& s) { s.mask = MaskKind::causal_bottom_right; }},
      {"window", [](KernelSpec& s) { s.window = true; }},
      {"varlen packed", [](KernelSpec& s) { s.varlen = VarlenKind::packed; }},
      {"varlen padded", [](KernelSpec& s) { s.varlen = VarlenKind::padded; }},
      {"bias", [](KernelSpec& s) { s.bias = true; }},
      {"alibi", [](KernelSpec& s) { s.alibi = true; }},
      {"scale", [](KernelSpec& s) { s.scale = 0.1f; }},
      // The scale is baked in as a literal: kernels for neighbouring floats are different kernels.
      {"scale +1 ulp",
       [](KernelSpec& s) { s.scale = std::nextafter(s.scale, std::numeric_limits<float>::max()); }},
      {"softcap", [](KernelSpec& s) { s.softcap = 30.0f; }},
      {"softcap 1 ulp above 0",
       [](KernelSpec& s) { s.softcap = std::numeric_limits<float>::denorm_min(); }},
      {"lse", [](KernelSpec& s) { s.lse = true; }},
      {"dropout", [](KernelSpec& s) { s.dropout = true; }},
      {"pass backward", [](KernelSpec& s) { s.pass = Pass::backward; }},
  };
  const KernelSpec base = base_spec();
  std::set<std::string> seen = {base.canonical()};
  for (const auto& [what, change] : changes) {
    KernelSpec changed = base;
    change(changed);
    ASSERT_NE(changed, base) << what << ": the change must change the spec itself";
    EXPECT_NE(changed.canonical(), base.canonical()) << what;
    EXPECT_NE(changed.hash(), base.hash()) << what;
    // Distinct from every other single change too (e.g. the two mask kinds).
    EXPECT_TRUE(seen.insert(changed.canonical()).second) << what << ": " << changed.canonical();
  }
}

TEST(KernelSpec, EqualSpecsGiveEqualCanonicalAndHash) {
  KernelSpec a = base_spec();
  a.mask = MaskKind::causal;
  a.softcap = 50.0f;
  a.lse = true;
  KernelSpec b = base_spec();  // built separately: no shared state between the two
  b.lse = true;
  b.softcap = 50.0f;
  b.mask = MaskKind::causal;
  ASSERT_EQ(a, b);
  EXPECT_EQ(a.canonical(), b.canonical());
  EXPECT_EQ(a.hash(), b.hash());
}

TEST(KernelSpec, CanonicalTextAndHashAreStable) {
  KernelSpec s = base_spec();
  s.mask = MaskKind::causal;
  s.lse = true;
  EXPECT_EQ(s.canonical(),
            "fwd sm80 bf16 d128 dv128 mask=causal window=0 varlen=none bias=0 alibi=0 "
            "scale=0x3e000000 softcap=0x00000000 lse=1");
  // Literal on purpose: the hash keys the on-disk kernel cache, so it must not depend on the
  // build, host or standard library. Changing the canonical text (or this value) invalidates
  // every stored cache entry; bump kGeneratorVersion / the cache schema together with it.
  EXPECT_EQ(s.hash(), 0x1491b25e9a7860f7ull);
}

TEST(KernelSpec, TagSpellsOutTheSpecialisation) {
  EXPECT_EQ(base_spec().tag(), "bf16_d128");  // nothing optional in a plain spec's tag

  KernelSpec a = base_spec();
  a.head_dim = a.head_dim_v = 80;
  a.mask = MaskKind::causal;
  a.bias = true;
  const std::string ta = a.tag();
  for (const char* part : {"bf16", "d80", "causal", "bias"}) {
    EXPECT_NE(ta.find(part), std::string::npos) << part << " missing from " << ta;
  }
  for (const char* part : {"dv", "window", "alibi", "softcap", "lse", "packed", "padded"}) {
    EXPECT_EQ(ta.find(part), std::string::npos) << part << " present in " << ta;
  }

  KernelSpec b = base_spec();
  b.dtype = DType::f16;
  b.head_dim = 64;
  b.head_dim_v = 128;
  b.mask = MaskKind::causal_bottom_right;
  b.window = true;
  b.varlen = VarlenKind::packed;
  b.alibi = true;
  b.softcap = 30.0f;
  b.lse = true;
  const std::string tb = b.tag();
  for (const char* part :
       {"f16", "d64", "dv128", "causal_br", "window", "packed", "alibi", "softcap", "lse"}) {
    EXPECT_NE(tb.find(part), std::string::npos) << part << " missing from " << tb;
  }
  b.varlen = VarlenKind::padded;
  EXPECT_NE(b.tag().find("padded"), std::string::npos) << b.tag();
}

// ---- why_illegal ------------------------------------------------------------------------------

// Checks that why_illegal rejects the pair and that its reason names every one of `parts`.
::testing::AssertionResult illegal_because(const KernelSpec& spec, const TileConfig& cfg,
                                            std::initializer_list<std::string> parts) {
  const std::optional<std::string> why = why_illegal(spec, cfg, limits_for_arch(spec.target.sm));
  if (!why) {
    return ::testing::AssertionFailure()
           << cfg.canonical() << " for " << spec.canonical() << " accepted";
  }
  for (const std::string& p : parts) {
    if (why->find(p) == std::string::npos) {
      return ::testing::AssertionFailure() << "reason '" << *why << "' does not mention '" << p
                                           << "'";
    }
  }
  return ::testing::AssertionSuccess();
}

KernelSpec with_dims(int d, int dv) {
  KernelSpec s = base_spec();
  s.head_dim = d;
  s.head_dim_v = dv;
  return s;
}

TEST(TileConfig, CanonicalSpellsOutEveryField) {
  EXPECT_EQ((TileConfig{128, 64, 4, 2, false}).canonical(), "bm128_bn64_w4_s2");
  EXPECT_EQ((TileConfig{64, 32, 2, 3, true}).canonical(), "bm64_bn32_w2_s3_qr");
  EXPECT_EQ((TileConfig{32, 64, 4, 2, false, 2}).canonical(), "bm32_bn64_w4_s2_x2");
}

// ---- backward specs ----------------------------------------------------------------------------

KernelSpec backward_spec() {
  KernelSpec s = base_spec();
  s.pass = Pass::backward;
  return s;
}

TEST(KernelSpec, BackwardCanonicalNamesItsPassAndFlags) {
  KernelSpec s = backward_spec();
  s.mask = MaskKind::causal;
  EXPECT_EQ(s.canonical(),
            "bwd sm80 bf16 d128 dv128 mask=causal window=0 varlen=none bias=0 alibi=0 "
            "scale=0x3e000000 softcap=0x00000000 dropout=0 det=0 dbias=0");
  // Each backward-only flag makes another kernel.
  std::set<std::string> seen = {s.canonical()};
  for (auto change : std::vector<std::function<void(KernelSpec&)>>{
           [](KernelSpec& k) { k.deterministic = true; }, [](KernelSpec& k) { k.dropout = true; },
           [](KernelSpec& k) { k.bias = k.dbias = true; }, [](KernelSpec& k) { k.bias = true; }}) {
    KernelSpec c = s;
    change(c);
    EXPECT_TRUE(seen.insert(c.canonical()).second) << c.canonical();
  }
  // Forward specs keep their pre-dropout text (cache keys) unless dropout is on.
  KernelSpec f = base_spec();
  EXPECT_EQ(f.canonical().find("dropout"), std::string::npos);
  f.dropout = true;
  EXPECT_NE(f.canonical().find(" dropout=1"), std::string::npos);
}

TEST(KernelSpec, BackwardConfigsAreCheckedWithReasons) {
  const DeviceLimits limits = limits_for_arch(80);
  const KernelSpec s = backward_spec();
  EXPECT_EQ(why_illegal(s, {64, 64, 4, 2, false, 2}, limits), std::nullopt);
  auto refused = [&](const KernelSpec& spec, TileConfig c, const char* reason) {
    const auto why = why_illegal(spec, c, limits);
    ASSERT_TRUE(why.has_value()) << c.canonical();
    EXPECT_NE(why->find(reason), std::string::npos) << *why;
  };
  refused(s, {64, 32, 4, 2, false, 1}, "16 keys per warp");
  refused(s, {48, 64, 4, 2, false, 1}, "block_m 48");
  refused(s, {64, 64, 4, 3, false, 1}, "stages 3");
  refused(s, {64, 64, 4, 2, true, 1}, "q_in_regs");
  refused(s, {64, 64, 4, 2, false, 3}, "split 3");
  refused(base_spec(), {128, 64, 4, 2, false, 3}, "split 3");
  KernelSpec tiled = s;
  tiled.bias = tiled.bias_tiled = true;
  refused(tiled, {64, 64, 4, 2, false, 1}, "bias_tiled");
  KernelSpec dbias = s;
  dbias.dbias = true;
  refused(dbias, {64, 64, 4, 2, false, 1}, "dbias needs a bias");
  KernelSpec big = s;
  big.head_dim = big.head_dim_v = 256;
  refused(big, {128, 128, 8, 2, false, 1}, "shared memory");
}

TEST(KernelSpec, BackwardDefaultIsLegalForEveryHeadDim) {
  for (int sm : {80, 86, 90}) {
    for (int d = 8; d <= kMaxHeadDim; d += 8) {
      for (bool heavy : {false, true}) {
        // sm_86/89 (99 KB per block): d = dv = 512 has no fast-mode config (see
        // WideHeadDims.BackwardUsesEightSlicesAndFitsEveryArch).
        if (sm == 86 && d == 512) continue;
        KernelSpec s = backward_spec();
        s.target.sm = sm;
        s.head_dim = s.head_dim_v = d;
        s.dropout = s.alibi = s.bias = s.dbias = heavy;
        const TileConfig c = default_config(s, limits_for_arch(sm));
        EXPECT_EQ(why_illegal(s, c, limits_for_arch(sm)), std::nullopt)
            << "sm" << sm << " d" << d << " " << c.canonical();
      }
    }
  }
}

TEST(TileConfig, RejectsUnsupportedHeadDims) {
  const TileConfig cfg{128, 64, 8, 2, false};
  // A space after the name: "head_dim_v 12" must not count as naming head_dim.
  EXPECT_TRUE(illegal_because(with_dims(0, 128), cfg, {"head_dim 0"}));
  EXPECT_TRUE(illegal_because(with_dims(12, 128), cfg, {"head_dim 12"}));
  EXPECT_TRUE(illegal_because(with_dims(520, 128), cfg, {"head_dim 520", "8 to 512"}));
  EXPECT_TRUE(illegal_because(with_dims(128, 300), cfg, {"head_dim_v 300"}));
  EXPECT_TRUE(illegal_because(with_dims(128, 4), cfg, {"head_dim_v 4"}));
}

TEST(TileConfig, RejectsUnsupportedWarpsAndRowsPerWarp) {
  const KernelSpec s = base_spec();
  EXPECT_TRUE(illegal_because(s, {96, 64, 3, 2, false}, {"warps 3"}));
  // 8 and 64 rows per warp: the kernel's m16 tiling handles exactly 1 or 2 tiles per warp.
  EXPECT_TRUE(illegal_because(s, {64, 64, 8, 2, false}, {"block_m 64", "warps 8"}));
  EXPECT_TRUE(illegal_because(s, {256, 64, 4, 2, false}, {"block_m 256", "warps 4"}));
  EXPECT_TRUE(illegal_because(s, {100, 64, 4, 2, false}, {"block_m 100"}));  // not divisible
}

TEST(TileConfig, RejectsUnsupportedBlockNAndStages) {
  const KernelSpec s = base_spec();
  EXPECT_TRUE(illegal_because(s, {128, 48, 8, 2, false}, {"block_n 48"}));
  EXPECT_TRUE(illegal_because(s, {128, 64, 8, 0, false}, {"stages 0"}));
  EXPECT_TRUE(illegal_because(s, {128, 64, 8, 5, false}, {"stages 5"}));
}

TEST(TileConfig, RejectsQInRegistersAboveHeadDim128) {
  EXPECT_TRUE(illegal_because(with_dims(192, 192), {128, 64, 8, 2, true}, {"q_in_regs", "192"}));
  // 128 is the largest head dim whose Q fragments fit beside the accumulators.
  EXPECT_EQ(why_illegal(with_dims(128, 128), {128, 64, 8, 2, true}, limits_for_arch(80)),
            std::nullopt);
}

TEST(TileConfig, RejectsSharedMemoryOverTheLimitNamingBytes) {
  // 2 B * (128 * 264 + 4 * 128 * (264 + 264)) = 608256 B > 166912 B on sm_80.
  const KernelSpec s = with_dims(256, 256);
  EXPECT_TRUE(illegal_because(s, {128, 128, 8, 4, false}, {"608256 bytes", "166912"}));
}

TEST(TileConfig, SharedMemoryLimitIsPerArchitectureAndInclusive) {
  // 2 B * (128 * 136 + 2 * 64 * (136 + 136)) = 104448 B: fits sm_80 (166912), not sm_86 (101376).
  KernelSpec s = base_spec();
  const TileConfig cfg{128, 64, 8, 2, false};
  EXPECT_EQ(why_illegal(s, cfg, limits_for_arch(80)), std::nullopt);
  s.target.sm = 86;
  EXPECT_TRUE(illegal_because(s, cfg, {"104448 bytes", "101376"}));
  // 2 B * (128 * 264 + 2 * 16 * (264 + 264)) = 101376 B: exactly sm_86's limit, which is usable.
  KernelSpec big = with_dims(256, 256);
  big.target.sm = 86;
  EXPECT_EQ(why_illegal(big, {128, 16, 8, 2, false}, limits_for_arch(86)), std::nullopt);
}

TEST(TileConfig, RejectsPreAmpereTargetsAndF32) {
  KernelSpec old_target = base_spec();
  old_target.target.sm = 75;
  EXPECT_TRUE(illegal_because(old_target, {}, {"sm_75"}));
  KernelSpec f32 = base_spec();
  f32.dtype = DType::f32;
  EXPECT_TRUE(illegal_because(f32, {}, {"f32"}));
}

TEST(TileConfig, AcceptsLegalConfigs) {
  for (const TileConfig& cfg : {TileConfig{128, 64, 8, 2, false}, TileConfig{64, 32, 2, 3, true},
                                TileConfig{64, 128, 2, 2, false}, TileConfig{64, 16, 4, 4, false}}) {
    EXPECT_EQ(why_illegal(base_spec(), cfg, limits_for_arch(80)), std::nullopt) << cfg.canonical();
  }
}

TEST(TileConfig, DefaultConfigIsLegalEverywhere) {
  // The runtime launches default_config without asking: it must be legal for every spec the
  // generator supports, on every target's shared-memory limit.
  struct Mods {
    const char* label;
    MaskKind mask;
    bool window, bias, alibi, softcap, lse;
  };
  const Mods mods[] = {
      {"plain", MaskKind::none, false, false, false, false, false},
      {"bias", MaskKind::none, false, true, false, false, false},
      {"causal_lse", MaskKind::causal, false, false, false, false, true},
      {"window_alibi_softcap", MaskKind::none, true, false, true, true, false},
  };
  int checked = 0;
  for (int sm : {80, 86, 90}) {
    const DeviceLimits limits = limits_for_arch(sm);
    for (int d = 8; d <= kMaxHeadDim; d += 8) {
      for (const Mods& m : mods) {
        KernelSpec s = with_dims(d, d);
        s.target.sm = sm;
        s.mask = m.mask;
        s.window = m.window;
        s.bias = m.bias;
        s.alibi = m.alibi;
        s.softcap = m.softcap ? 30.0f : 0.0f;
        s.lse = m.lse;
        const TileConfig cfg = default_config(s, limits);
        EXPECT_EQ(why_illegal(s, cfg, limits), std::nullopt)
            << "sm" << sm << " d" << d << " " << m.label << ": " << cfg.canonical();
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 3 * (kMaxHeadDim / 8) * 4);
}

TEST(TileConfig, SharedMemoryBytesFollowsThePaddingRule) {
  // Rows are padded to an odd number of 16-byte (8-element) chunks: head_dim 80 = 10 chunks
  // (even) -> 88 elements; head_dim_v 72 = 9 chunks (odd) -> unpadded.
  //   Q:  64 rows * 88                   =  5632 elements
  //   KV: 3 stages * 32 rows * (88 + 72) = 15360 elements
  //   (5632 + 15360) * 2 bytes           = 41984 bytes
  EXPECT_EQ(shared_memory_bytes(with_dims(80, 72), {64, 32, 4, 3, false}), 41984);
  // head_dim 40 = 5 chunks (odd) -> unpadded; 2 * (128 * 40 + 2 * 64 * (40 + 40)) = 30720.
  EXPECT_EQ(shared_memory_bytes(with_dims(40, 40), {128, 64, 4, 2, false}), 30720);
}

// ---- plan ---------------------------------------------------------------------------------------

// make_params never dereferences: distinct fake addresses are enough.
const void* fake_pointer(int n) {
  return reinterpret_cast<const void*>(uintptr_t{0x100000} + static_cast<uintptr_t>(n) * 0x10000);
}

TensorRef tensor(int n, std::array<int64_t, 4> shape, std::array<int64_t, 4> stride) {
  TensorRef r;
  r.data = fake_pointer(n);
  r.shape = shape;
  r.stride = stride;
  return r;
}

Problem plan_problem() {
  Problem p;
  p.batch = 3;
  p.heads_q = 8;
  p.heads_kv = 2;
  p.seqlen_q = 100;
  p.seqlen_k = 120;
  p.total_q = 100;
  p.total_k = 120;
  p.head_dim = 64;
  p.head_dim_v = 64;
  p.scale = 0.125f;
  return p;
}

// Strides all different from each other, so a swapped or mis-copied stride shows.
AttentionArgs plan_args() {
  AttentionArgs a;
  a.q = tensor(1, {3, 100, 8, 64}, {1001, 1002, 1003, 1});
  a.k = tensor(2, {3, 120, 2, 64}, {2001, 2002, 2003, 1});
  a.v = tensor(3, {3, 120, 2, 64}, {3001, 3002, 3003, 1});
  a.o = tensor(4, {3, 100, 8, 64}, {4001, 4002, 4003, 1});
  return a;
}

TEST(Plan, MakeSpecCopiesEveryFactOfTheProblem) {
  // Every field differs from KernelSpec's default, so a field make_spec forgets shows up.
  Problem p = plan_problem();
  p.dtype = DType::f16;
  p.head_dim = 96;
  p.head_dim_v = 64;
  p.mask = MaskKind::causal_bottom_right;
  p.window = true;
  p.varlen = VarlenKind::padded;
  p.bias = true;
  p.alibi = true;
  p.scale = 0.1f;
  p.softcap = 50.0f;
  p.lse = true;
  KernelSpec want;
  want.target.sm = 90;
  want.dtype = DType::f16;
  want.head_dim = 96;
  want.head_dim_v = 64;
  want.mask = MaskKind::causal_bottom_right;
  want.window = true;
  want.varlen = VarlenKind::padded;
  want.bias = true;
  want.alibi = true;
  want.scale = 0.1f;
  want.softcap = 50.0f;
  want.lse = true;
  const KernelSpec got = make_spec(p, 90);
  EXPECT_EQ(got.canonical(), want.canonical());
  EXPECT_TRUE(got == want);
}

TEST(Plan, MakeParamsCopiesPointersStridesAndSizes) {
  const Problem pr = plan_problem();
  const AttentionArgs a = plan_args();
  const jitattn_kernel::AttnFwdParams p = make_params(a, pr);
  EXPECT_EQ(p.q, a.q.data);
  EXPECT_EQ(p.k, a.k.data);
  EXPECT_EQ(p.v, a.v.data);
  EXPECT_EQ(p.o, a.o.data);
  EXPECT_EQ(p.q_batch_stride, 1001);
  EXPECT_EQ(p.q_row_stride, 1002);
  EXPECT_EQ(p.q_head_stride, 1003);
  EXPECT_EQ(p.k_batch_stride, 2001);
  EXPECT_EQ(p.k_row_stride, 2002);
  EXPECT_EQ(p.k_head_stride, 2003);
  EXPECT_EQ(p.v_batch_stride, 3001);
  EXPECT_EQ(p.v_row_stride, 3002);
  EXPECT_EQ(p.v_head_stride, 3003);
  EXPECT_EQ(p.o_batch_stride, 4001);
  EXPECT_EQ(p.o_row_stride, 4002);
  EXPECT_EQ(p.o_head_stride, 4003);
  EXPECT_EQ(p.seqlen_q, 100);
  EXPECT_EQ(p.seqlen_k, 120);
  EXPECT_EQ(p.heads_q, 8);
  EXPECT_EQ(p.group, 4);  // 8 query heads share 2 KV heads: kv head = h / 4
}

TEST(Plan, MakeParamsPassesBiasAndSlopesOnlyWhenTheProblemUsesThem) {
  Problem pr = plan_problem();
  AttentionArgs a = plan_args();
  a.bias = tensor(5, {3, 8, 100, 120}, {96000, 12000, 120, 1});
  static const float slopes[8] = {};
  a.alibi_slopes = slopes;
  jitattn_kernel::AttnFwdParams p = make_params(a, pr);
  EXPECT_EQ(p.bias, nullptr);
  EXPECT_EQ(p.alibi_slopes, nullptr);
  pr.bias = true;
  pr.alibi = true;
  p = make_params(a, pr);
  EXPECT_EQ(p.bias, a.bias.data);
  EXPECT_EQ(p.alibi_slopes, slopes);
  EXPECT_EQ(p.bias_batch_stride, 96000);
  EXPECT_EQ(p.bias_head_stride, 12000);
  EXPECT_EQ(p.bias_row_stride, 120);
  EXPECT_EQ(p.bias_col_stride, 1);
}

TEST(Plan, MakeParamsGivesBroadcastBiasDimsStrideZero) {
  // A size-1 dim is read at index 0 for every position, whatever stride the caller gave it.
  Problem pr = plan_problem();
  pr.bias = true;
  AttentionArgs a = plan_args();
  a.bias = tensor(5, {1, 8, 1, 120}, {9991, 9992, 9993, 1});
  jitattn_kernel::AttnFwdParams p = make_params(a, pr);
  EXPECT_EQ(p.bias_batch_stride, 0);
  EXPECT_EQ(p.bias_head_stride, 9992);
  EXPECT_EQ(p.bias_row_stride, 0);
  EXPECT_EQ(p.bias_col_stride, 1);

  a.bias = tensor(5, {3, 1, 100, 1}, {9991, 9992, 9993, 7});
  p = make_params(a, pr);
  EXPECT_EQ(p.bias_batch_stride, 9991);
  EXPECT_EQ(p.bias_head_stride, 0);
  EXPECT_EQ(p.bias_row_stride, 9993);
  EXPECT_EQ(p.bias_col_stride, 0);  // the kernel turns this into a column mask of 0
}

TEST(Plan, MakeParamsLseStridesFollowTheLayout) {
  Problem pr = plan_problem();
  pr.lse = true;
  AttentionArgs a = plan_args();
  // [batch, heads_q, seqlen_q] contiguous.
  jitattn_kernel::AttnFwdParams p = make_params(a, pr);
  EXPECT_EQ(p.lse_batch_stride, 8 * 100);
  EXPECT_EQ(p.lse_head_stride, 100);
  // Packed: [heads_q, total_q]; the kernel adds the sequence's first row itself.
  pr.varlen = VarlenKind::packed;
  pr.total_q = 250;
  p = make_params(a, pr);
  EXPECT_EQ(p.lse_batch_stride, 0);
  EXPECT_EQ(p.lse_head_stride, 250);
}

TEST(Plan, MakeParamsWindowIsUnboundedWithoutWindow) {
  Problem pr = plan_problem();
  // Stale sizes with window off must not reach the kernel.
  pr.window_left = 16;
  pr.window_right = 0;
  jitattn_kernel::AttnFwdParams p = make_params(plan_args(), pr);
  EXPECT_EQ(p.window_left, -1);
  EXPECT_EQ(p.window_right, -1);
  pr.window = true;
  p = make_params(plan_args(), pr);
  EXPECT_EQ(p.window_left, 16);
  EXPECT_EQ(p.window_right, 0);
}

TEST(Plan, MakeGridCoversEveryQueryRow) {
  Problem pr = plan_problem();
  pr.seqlen_q = 300;
  pr.heads_q = 6;
  pr.batch = 5;
  using Grid = std::array<unsigned, 3>;
  EXPECT_EQ(make_grid(pr, {128, 64, 8, 2, false}), (Grid{3, 6, 5}));  // 300 = 2 * 128 + 44
  pr.seqlen_q = 256;
  EXPECT_EQ(make_grid(pr, {128, 64, 8, 2, false}), (Grid{2, 6, 5}));  // exact multiple
  pr.seqlen_q = 1;
  EXPECT_EQ(make_grid(pr, {64, 64, 4, 2, false}), (Grid{1, 6, 5}));
}

TEST(Plan, ParseConfigRoundTripsCanonical) {
  for (const TileConfig& c : {TileConfig{128, 64, 8, 2, false}, TileConfig{64, 16, 2, 4, true},
                              TileConfig{128, 128, 4, 3, true}, TileConfig{256, 32, 8, 2, false},
                              TileConfig{32, 64, 4, 2, false, 4}, TileConfig{64, 128, 8, 1, false, 2},
                              TileConfig{64, 32, 2, 1, false, 8}, sm90_wide_config(32, 2),
                              sm90_wide_config(64, 1, true)}) {
    const TileConfig parsed = parse_config(c.canonical());
    EXPECT_TRUE(parsed == c) << c.canonical() << " parsed as " << parsed.canonical();
  }
}

TEST(Plan, ParseConfigRejectsGarbage) {
  for (const std::string text :
       {"", "bm128", "bm128_bn64_w4", "bm128_bn64_w4_s2_qs", "bm128_bn64_w4_s2_qr_",
        " bm128_bn64_w4_s2", "BM128_bn64_w4_s2", "bmx_bn64_w4_s2", "bm-1_bn64_w4_s2",
        "bm128_bn64_w4_s2 ", "bm64_bn64_w4_s2_x", "bm64_bn64_w4_s2_x2_qr"}) {
    try {
      const TileConfig c = parse_config(text);
      ADD_FAILURE() << "'" << text << "' parsed as " << c.canonical();
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(e.argument(), "config") << text;
      EXPECT_NE(std::string(e.what()).find("'" + text + "'"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace jitattn

// ---- CPU specs and configs ----------------------------------------------------------------------
namespace jitattn {
namespace {

KernelSpec cpu_spec(DType dtype = DType::f32, int d = 64) {
  KernelSpec s = base_spec();
  s.target = Target{0, true};
  s.dtype = dtype;
  s.head_dim = s.head_dim_v = d;
  return s;
}

TEST(CpuSpec, CanonicalSaysCpuAndKeepsTheGpuTextUnchanged) {
  KernelSpec s = cpu_spec();
  s.mask = MaskKind::causal;
  s.lse = true;
  EXPECT_EQ(s.canonical(),
            "fwd cpu f32 d64 dv64 mask=causal window=0 varlen=none bias=0 alibi=0 "
            "scale=0x3e000000 softcap=0x00000000 lse=1");
  EXPECT_EQ(s.tag(), "f32_d64_causal_lse");
  // The same facts for a GPU: the text of the first schema, whatever the cpu flag's default.
  KernelSpec g = s;
  g.target = Target{80, false};
  g.dtype = DType::bf16;
  EXPECT_EQ(g.canonical(),
            "fwd sm80 bf16 d64 dv64 mask=causal window=0 varlen=none bias=0 alibi=0 "
            "scale=0x3e000000 softcap=0x00000000 lse=1");
  // sm is ignored on the CPU; the CPU flag separates otherwise equal specs.
  KernelSpec s90 = s;
  s90.target.sm = 90;
  EXPECT_EQ(s90.canonical(), s.canonical());
  KernelSpec same_dtype = g;
  same_dtype.dtype = DType::f32;
  EXPECT_NE(same_dtype.canonical(), s.canonical());
  EXPECT_NE(same_dtype.hash(), s.hash());
}

TEST(CpuSpec, BiasTiledIsAGpuOnlyFact) {
  KernelSpec a = cpu_spec();
  a.bias = true;
  KernelSpec b = a;
  b.bias_tiled = true;
  EXPECT_EQ(a.canonical(), b.canonical());
  EXPECT_NE(a.canonical().find("bias=1"), std::string::npos) << a.canonical();
  EXPECT_EQ(b.tag(), "f32_d64_bias");
}

TEST(CpuSpec, ConfigCanonicalAndParseRoundTrip) {
  EXPECT_EQ(cpu_config(32, 128).canonical(), "cpu_bm32_bn128");
  EXPECT_TRUE(cpu_config(32, 128).cpu());
  EXPECT_FALSE((TileConfig{128, 64, 4, 2, false}).cpu());
  EXPECT_EQ((TileConfig{128, 64, 4, 2, false}).canonical(), "bm128_bn64_w4_s2");  // unchanged
  for (int bm : {4, 8, 16, 32, 64}) {
    for (int bn : {16, 32, 64, 128, 256}) {
      const TileConfig c = cpu_config(bm, bn);
      EXPECT_TRUE(parse_config(c.canonical()) == c) << c.canonical();
    }
  }
  for (const std::string text : {"cpu_bm32", "cpu_bm32_bn128_w0", "cpu_bm32_bn128_w0_s0", "cpu_bmx_bn16",
                                 "cpu_bm32_bn128 ", "CPU_bm32_bn128", "cpubm32_bn128"}) {
    EXPECT_THROW(parse_config(text), InvalidArgument) << text;
  }
}

TEST(CpuSpec, WhyIllegalExplainsCpuConfigs) {
  const DeviceLimits cpu = limits_for_cpu();
  EXPECT_TRUE(cpu.cpu);
  for (int bm : {4, 8, 16, 32, 64}) {
    for (int bn : {16, 32, 64, 128, 256}) {
      EXPECT_EQ(why_illegal(cpu_spec(), cpu_config(bm, bn), cpu), std::nullopt) << bm << " " << bn;
    }
  }
  auto reason = [&](const KernelSpec& s, const TileConfig& c, const DeviceLimits& l) {
    const std::optional<std::string> why = why_illegal(s, c, l);
    return why ? *why : std::string("(legal)");
  };
  auto expect_reason = [&](const KernelSpec& s, const TileConfig& c, const DeviceLimits& l,
                           const std::string& part) {
    const std::string why = reason(s, c, l);
    EXPECT_NE(why.find(part), std::string::npos) << c.canonical() << ": " << why;
  };
  expect_reason(cpu_spec(), cpu_config(12, 64), cpu, "block_m 12");
  expect_reason(cpu_spec(), cpu_config(128, 64), cpu, "block_m 128");
  expect_reason(cpu_spec(), cpu_config(32, 48), cpu, "block_n 48");
  expect_reason(cpu_spec(), cpu_config(32, 512), cpu, "block_n 512");
  expect_reason(cpu_spec(), {64, 64, 4, 2, false}, cpu, "GPU config");
  expect_reason(cpu_spec(), {32, 64, 0, 0, true}, cpu, "GPU config");
  // The scratch of one work item must fit the stated stack budget.
  const KernelSpec big = cpu_spec(DType::f32, 256);
  EXPECT_GT(cpu_scratch_bytes(big, cpu_config(64, 256)), kCpuScratchBudget);
  expect_reason(big, cpu_config(64, 256), cpu, "scratch");
  EXPECT_LE(cpu_scratch_bytes(big, cpu_config(32, 64)), kCpuScratchBudget);
  // Targets and limits must agree; f32 is a CPU dtype only.
  expect_reason(cpu_spec(), cpu_config(32, 64), limits_for_arch(90), "CPU");
  expect_reason(base_spec(), cpu_config(32, 64), cpu, "sm_80");
  KernelSpec gpu_f32 = base_spec();
  gpu_f32.dtype = DType::f32;
  expect_reason(gpu_f32, {128, 64, 8, 2, false}, limits_for_arch(80), "f32");
  expect_reason(base_spec(), cpu_config(32, 64), limits_for_arch(80), "warps 0");
  // Head dims as on the GPU.
  expect_reason(cpu_spec(DType::f32, 12), cpu_config(32, 64), cpu, "head_dim 12");
}

TEST(CpuSpec, DefaultConfigIsLegalForEverySpec) {
  const DeviceLimits cpu = limits_for_cpu();
  for (DType t : {DType::f32, DType::bf16, DType::f16}) {
    for (int d = 8; d <= kMaxHeadDim; d += 8) {
      for (int dv : {d, 8, 256}) {
        for (bool modifiers : {false, true}) {
          KernelSpec s = cpu_spec(t, d);
          s.head_dim_v = dv;
          s.mask = modifiers ? MaskKind::causal : MaskKind::none;
          s.bias = s.alibi = s.lse = modifiers;
          const TileConfig c = default_config(s, cpu);
          EXPECT_EQ(why_illegal(s, c, cpu), std::nullopt) << s.canonical() << " " << c.canonical();
        }
      }
    }
  }
}

}  // namespace
}  // namespace jitattn

// ---- Hopper family (sm90) configs ---------------------------------------------------------------
namespace jitattn {
namespace {

KernelSpec sm90_spec(int d = 128, int dv = 128) {
  KernelSpec s = base_spec();
  s.target.sm = 90;
  s.head_dim = d;
  s.head_dim_v = dv;
  return s;
}

TEST(Sm90Config, CanonicalIsDistinctAndRoundTrips) {
  const TileConfig c = sm90_config(128, 2, 2);
  EXPECT_EQ(c.canonical(), "h_bm128_bn128_wg2_s2");
  EXPECT_EQ(c.warps, 12);  // producer warpgroup + 2 consumers
  EXPECT_TRUE(c.hopper());
  EXPECT_TRUE(parse_config("h_bm128_bn128_wg2_s2") == c);
  EXPECT_TRUE(parse_config("h_bm64_bn96_wg1_s3") == sm90_config(96, 1, 3));
  // Same numbers, other family: another config with another text.
  const TileConfig same_numbers{128, 128, 12, 2, false};
  EXPECT_FALSE(same_numbers == c);
  EXPECT_EQ(same_numbers.canonical(), "bm128_bn128_w12_s2");
  const TileConfig ov = sm90_config(128, 2, 2, true);
  EXPECT_EQ(ov.canonical(), "h_bm128_bn128_wg2_s2_ov");
  EXPECT_TRUE(parse_config("h_bm128_bn128_wg2_s2_ov") == ov);
  EXPECT_FALSE(ov == c);
  EXPECT_EQ(sm90_config(128, 2, 2, true, true).canonical(), "h_bm128_bn128_wg2_s2_ov_pp");
  EXPECT_EQ(sm90_config(128, 2, 3, true, true, true).canonical(), "h_bm128_bn128_wg2_s3_ov_pp_pe");
  EXPECT_TRUE(parse_config("h_bm64_bn64_wg1_s2_pe") == sm90_config(64, 1, 2, false, false, true));
  EXPECT_TRUE(parse_config("h_bm128_bn128_wg2_s2_ov_pp") == sm90_config(128, 2, 2, true, true));
  EXPECT_NE(why_illegal(sm90_spec(), sm90_config(128, 2, 2, false, true), limits_for_arch(90)).value_or("").find("ping-pong"),
            std::string::npos);
  EXPECT_NE(why_illegal(sm90_spec(), sm90_config(64, 3, 2, true, true), limits_for_arch(90)).value_or("").find("ping-pong"),
            std::string::npos);
  // Overlap holds tile j's stage while waiting for tile j+1's K: one stage would deadlock.
  EXPECT_NE(why_illegal(sm90_spec(), sm90_config(128, 2, 1, true), limits_for_arch(90)).value_or("").find("stages"),
            std::string::npos);
  TileConfig sm80_ov{128, 64, 4, 2, false};
  sm80_ov.overlap = true;
  EXPECT_NE(why_illegal(sm90_spec(), sm80_ov, limits_for_arch(90)).value_or("").find("Hopper"), std::string::npos);
}

// Three consumers hold O + S + P in 128 accumulator registers at head dim 64 and block_n 128
// (FA3's d64 tile), legal where nothing else competes for them; a window, softcap or bias tensor
// keeps the budget of 120 (they spilled there), as do wider heads and tiles.
TEST(Sm90Config, ThreeConsumersTakeBlockN128UpToHeadDim64) {
  const DeviceLimits h = limits_for_arch(90);
  const TileConfig c = sm90_config(128, 3, 3, true);
  EXPECT_EQ(c.canonical(), "h_bm192_bn128_wg3_s3_ov");
  for (int d : {8, 40, 64}) {
    KernelSpec s = sm90_spec(d, d);
    EXPECT_EQ(why_illegal(s, c, h), std::nullopt) << d;
    s.mask = MaskKind::causal_bottom_right;
    s.alibi = true;
    s.lse = true;
    s.varlen = VarlenKind::padded;
    EXPECT_EQ(why_illegal(s, c, h), std::nullopt) << d;
  }
  auto refused = [&](const KernelSpec& s, const TileConfig& cfg) {
    return why_illegal(s, cfg, h).value_or("").find("setmaxnreg 160") != std::string::npos;
  };
  KernelSpec s = sm90_spec(64, 64);
  s.window = true;
  EXPECT_TRUE(refused(s, c));
  s = sm90_spec(64, 64);
  s.softcap = 30.0f;
  EXPECT_TRUE(refused(s, c));
  s = sm90_spec(64, 64);
  s.bias = s.bias_tiled = true;
  EXPECT_TRUE(refused(s, c));
  EXPECT_TRUE(refused(sm90_spec(72, 72), c));
  EXPECT_TRUE(refused(sm90_spec(64, 64), sm90_config(144, 3, 2, true)));
  // 120 stays enough for block_n 96 beside all three.
  s.window = true;
  s.softcap = 30.0f;
  EXPECT_EQ(why_illegal(s, sm90_config(96, 3, 3, true), h), std::nullopt);
}

// Persistent (_ps): a Hopper forward option of the one-block-per-tile kernel; one CTA per SM.
TEST(Sm90Config, PersistentIsAForwardOptionWithOneCtaPerSm) {
  const DeviceLimits h = limits_for_arch(90);
  TileConfig ps = sm90_config(128, 2, 3, true, true);
  ps.persistent = true;
  EXPECT_EQ(ps.canonical(), "h_bm128_bn128_wg2_s3_ov_pp_ps");
  EXPECT_TRUE(parse_config("h_bm128_bn128_wg2_s3_ov_pp_ps") == ps);
  EXPECT_FALSE(parse_config("h_bm128_bn128_wg2_s3_ov_pp") == ps);
  EXPECT_EQ(why_illegal(sm90_spec(), ps, h), std::nullopt);
  // Same shared memory as the one-tile kernel: Q's empty barrier is always there.
  TileConfig one = ps;
  one.persistent = false;
  EXPECT_EQ(shared_memory_bytes(sm90_spec(), ps), shared_memory_bytes(sm90_spec(), one));
  // Not for the column split, the backward or the mma.sync family.
  TileConfig wide = sm90_wide_config(64, 1);
  wide.persistent = true;
  EXPECT_NE(why_illegal(sm90_spec(512, 512), wide, h).value_or("").find("_ps"), std::string::npos);
  KernelSpec bwd = sm90_spec(64, 64);
  bwd.pass = Pass::backward;
  TileConfig bwd_ps = sm90_backward_config(64, 2, 2);
  bwd_ps.persistent = true;
  EXPECT_NE(why_illegal(bwd, bwd_ps, h).value_or("").find("_ps"), std::string::npos);
  TileConfig sm80_ps{128, 64, 4, 2, false};
  sm80_ps.persistent = true;
  EXPECT_NE(why_illegal(sm90_spec(), sm80_ps, h).value_or("").find("Hopper"), std::string::npos);
  // A bias tile by TMA keeps one tile per CTA (the tile loop beside its reads spills).
  KernelSpec biased = sm90_spec(64, 64);
  biased.bias = true;
  biased.bias_tiled = true;
  EXPECT_NE(why_illegal(biased, ps, h).value_or("").find("bias"), std::string::npos);
  EXPECT_EQ(why_illegal(biased, one, h), std::nullopt);
  // The launch grid: min(tiles, SMs) CTAs in x; the tile grid itself is unchanged.
  Problem pr;
  pr.batch = 3;
  pr.heads_q = 16;
  pr.seqlen_q = 1000;  // 8 query blocks of 128
  using Grid = std::array<unsigned, 3>;
  EXPECT_EQ(make_grid(pr, ps), (Grid{8, 16, 3}));
  EXPECT_EQ(make_launch_grid(pr, ps, 132), (Grid{132, 1, 1}));
  EXPECT_EQ(make_launch_grid(pr, one, 132), (Grid{8, 16, 3}));
  pr.heads_q = 2;
  pr.batch = 1;
  EXPECT_EQ(make_launch_grid(pr, ps, 132), (Grid{16, 1, 1}));  // fewer tiles than SMs
  EXPECT_EQ(make_launch_grid(pr, ps, 0), (Grid{1, 1, 1}));     // an unknown SM count: one CTA
}

TEST(Sm90Config, WhyIllegalExplains) {
  const DeviceLimits h = limits_for_arch(90);
  auto why = [&](const KernelSpec& s, const TileConfig& c, const DeviceLimits& l) {
    return why_illegal(s, c, l).value_or("");
  };
  EXPECT_EQ(why_illegal(sm90_spec(), sm90_config(128, 2, 2), h), std::nullopt);
  KernelSpec on80 = sm90_spec();
  on80.target.sm = 80;
  EXPECT_NE(why(on80, sm90_config(128, 2, 2), limits_for_arch(80)).find("sm_90"), std::string::npos);
  KernelSpec f32 = sm90_spec();
  f32.dtype = DType::f32;
  EXPECT_NE(why(f32, sm90_config(128, 2, 2), h).find("f32"), std::string::npos);
  TileConfig bad_m = sm90_config(128, 2, 2);
  bad_m.block_m = 96;
  EXPECT_NE(why(sm90_spec(), bad_m, h).find("block_m"), std::string::npos);
  EXPECT_NE(why(sm90_spec(), sm90_config(120, 2, 2), h).find("block_n"), std::string::npos);
  EXPECT_NE(why(sm90_spec(), sm90_config(128, 2, 5), h).find("stages"), std::string::npos);
  // d256: O accumulator 128 + S 64 + P 32 registers per thread is too many.
  EXPECT_NE(why(sm90_spec(256, 256), sm90_config(128, 2, 2), h).find("registers"), std::string::npos);
  EXPECT_NE(why(sm90_spec(256, 256), sm90_config(64, 2, 4), h).find("shared memory"), std::string::npos);
}

TEST(Sm90Config, SharedMemoryPadsHeadDimsToWholeSwizzledPanels) {
  // d128: 128-byte panels. Q 128 x 256 B, per stage K and V 128 x 256 B each, + 1 KiB alignment
  // slack + 14 mbarriers (Q full and empty, the tile queue's 2 full and 2 empty, then full K,
  // full V, empty K and empty V per stage) and the tile queue's 2 slots.
  EXPECT_EQ(shared_memory_bytes(sm90_spec(), sm90_config(128, 2, 2)), 32768 + 2 * 65536 + 1024 + 112 + 8);
  EXPECT_EQ(shared_memory_bytes(sm90_spec(), sm90_config(128, 2, 3)),
            shared_memory_bytes(sm90_spec(), sm90_config(128, 2, 2)) + 65536 + 32);
  // d72 pads to 80 = five 32-byte panels (16 columns each).
  const Sm90Layout l = sm90_layout(sm90_spec(72, 96));
  EXPECT_EQ(l.head_dim_pad, 80);
  EXPECT_EQ(l.swizzle_qk, 32);
  EXPECT_EQ(l.head_dim_v_pad, 96);
  EXPECT_EQ(l.swizzle_v, 64);
}

TEST(Sm90Config, DefaultPicksTheFamilyOnSm90Only) {
  for (int d = 8; d <= kMaxHeadDim; d += 8) {
    KernelSpec s = sm90_spec(d, d);
    const TileConfig c = default_config(s, limits_for_arch(90));
    EXPECT_TRUE(c.hopper()) << d << " " << c.canonical();
    EXPECT_EQ(why_illegal(s, c, limits_for_arch(90)), std::nullopt) << d;
    s.varlen = VarlenKind::padded;
    EXPECT_TRUE(default_config(s, limits_for_arch(90)).hopper()) << d;
    s.bias = true;  // bias tensors stay on the mma.sync family's staged bias tiles
    EXPECT_FALSE(default_config(s, limits_for_arch(90)).hopper()) << d;
    s = sm90_spec(d, d);
    s.target.sm = 80;
    EXPECT_FALSE(default_config(s, limits_for_arch(80)).hopper()) << d;
  }
}

// Above head dim 128 the default overlaps (block_n 80, 2 stages, no ping-pong): K and V are
// released apart, so 2 stages keep the producer ahead (bench/NOTES.md, "Session 6"). Serial where
// overlap would spill: a window above 208, a bias tensor, three or more modifiers.
TEST(Sm90Config, DefaultOverlapsAboveHeadDim128WhereItFits) {
  const DeviceLimits h = limits_for_arch(90);
  for (int d = 136; d <= 256; d += 8) {
    KernelSpec s = sm90_spec(d, d);
    s.mask = MaskKind::causal;
    s.lse = true;
    TileConfig c = default_config(s, h);
    EXPECT_TRUE(c.overlap && !c.pingpong) << d << " " << c.canonical();
    EXPECT_EQ(c.block_m, 128) << d;
    EXPECT_LE(c.block_n, 80) << d;
    EXPECT_EQ(c.stages, 2) << d;
    s.window = true;
    EXPECT_EQ(default_config(s, h).overlap, d <= 208) << d;
    s.window = false;
    s.alibi = true;
    s.softcap = 30.0f;  // with LSE: three modifiers
    EXPECT_FALSE(default_config(s, h).overlap) << d;
  }
  // Up to 128 unchanged: overlap + ping-pong, 3 stages.
  const TileConfig c128 = default_config(sm90_spec(128, 128), h);
  EXPECT_TRUE(c128.overlap && c128.pingpong) << c128.canonical();
  EXPECT_EQ(c128.stages, 3);
}

// Up to head dim 64 a causal mask takes three persistent consumers under overlap; beside a
// window, varlen or a bias tensor (spill-prone) the two-consumer ping-pong.
TEST(Sm90Config, CausalUpToHeadDim64TakesThreePersistentConsumers) {
  const DeviceLimits h = limits_for_arch(90);
  for (int d = 8; d <= 64; d += 8) {
    KernelSpec s = sm90_spec(d, d);
    s.mask = MaskKind::causal;
    s.lse = true;
    EXPECT_EQ(default_config(s, h).canonical(), "h_bm192_bn96_wg3_s3_ov_ps") << d;
    s.mask = MaskKind::causal_bottom_right;
    EXPECT_EQ(default_config(s, h).canonical(), "h_bm192_bn96_wg3_s3_ov_ps") << d;
    s.window = true;
    EXPECT_EQ(default_config(s, h).canonical(), "h_bm128_bn128_wg2_s3_ov_pp") << d;
    s.window = false;
    s.varlen = VarlenKind::padded;
    EXPECT_EQ(default_config(s, h).canonical(), "h_bm128_bn128_wg2_s3_ov_pp") << d;
  }
  KernelSpec s72 = sm90_spec(72, 72);
  s72.mask = MaskKind::causal;
  EXPECT_EQ(default_config(s72, h).canonical(), "h_bm128_bn128_wg2_s3_ov_pp");
}

// Up to head dim 64 without a mask: three consumers at block_n 128, persistent for rows of up to
// 2048 keys (a key count of 0 is unknown: not persistent); a window, softcap or bias tensor, a
// mask, or wider heads keep their own defaults.
TEST(Sm90Config, NoMaskUpToHeadDim64TakesThreeConsumersAtBlockN128) {
  const DeviceLimits h = limits_for_arch(90);
  for (int d = 8; d <= 64; d += 8) {
    KernelSpec s = sm90_spec(d, d);
    s.lse = true;
    s.alibi = true;
    s.varlen = VarlenKind::padded;
    EXPECT_EQ(default_config(s, h).canonical(), "h_bm192_bn128_wg3_s3_ov") << d;
    EXPECT_EQ(default_config(s, h, ShapeHint{4096}).canonical(), "h_bm192_bn128_wg3_s3_ov") << d;
    EXPECT_EQ(default_config(s, h, ShapeHint{2049}).canonical(), "h_bm192_bn128_wg3_s3_ov") << d;
    EXPECT_EQ(default_config(s, h, ShapeHint{2048}).canonical(), "h_bm192_bn128_wg3_s3_ov_ps") << d;
    EXPECT_EQ(default_config(s, h, ShapeHint{1}).canonical(), "h_bm192_bn128_wg3_s3_ov_ps") << d;
    EXPECT_EQ(family_default_config(s, h, Family::sm90, ShapeHint{1024}).canonical(), "h_bm192_bn128_wg3_s3_ov_ps");
    s.softcap = 30.0f;
    EXPECT_EQ(default_config(s, h, ShapeHint{1024}).canonical(), "h_bm128_bn128_wg2_s3_ov_pp") << d;
    s.softcap = 0.0f;
    s.window = true;
    EXPECT_EQ(default_config(s, h, ShapeHint{1024}).canonical(), "h_bm128_bn128_wg2_s3_ov_pp") << d;
  }
  // Head dims 120-128 without a mask or modifier (LSE and varlen aside) take block_n 176 with
  // two stages beyond 2048 keys.
  for (int d : {120, 128}) {
    KernelSpec s = sm90_spec(d, d);
    s.lse = true;
    s.varlen = VarlenKind::padded;
    EXPECT_EQ(default_config(s, h, ShapeHint{2049}).canonical(), "h_bm128_bn176_wg2_s2_ov_pp") << d;
    EXPECT_EQ(default_config(s, h, ShapeHint{2048}).canonical(), "h_bm128_bn128_wg2_s3_ov_pp") << d;
    EXPECT_EQ(default_config(s, h).canonical(), "h_bm128_bn128_wg2_s3_ov_pp") << d;
    s.alibi = true;
    EXPECT_EQ(default_config(s, h, ShapeHint{4096}), default_config(s, h)) << d;
    s.alibi = false;
    s.mask = MaskKind::causal;
    EXPECT_EQ(default_config(s, h, ShapeHint{4096}), default_config(s, h)) << d;
  }
  // Head dims 120-128 beside a causal mask (LSE aside) take the persistent ping-pong up to 2048
  // keys; a window, varlen, ALiBi or an unknown key count keep the one-tile default.
  for (int d : {120, 128}) {
    for (MaskKind m : {MaskKind::causal, MaskKind::causal_bottom_right}) {
      KernelSpec s = sm90_spec(d, d);
      s.lse = true;
      s.mask = m;
      EXPECT_EQ(default_config(s, h, ShapeHint{1024}).canonical(), "h_bm128_bn128_wg2_s3_ov_pp_ps") << d;
      EXPECT_EQ(default_config(s, h, ShapeHint{2048}).canonical(), "h_bm128_bn128_wg2_s3_ov_pp_ps") << d;
      EXPECT_EQ(default_config(s, h, ShapeHint{2049}).canonical(), "h_bm128_bn128_wg2_s3_ov_pp") << d;
      EXPECT_EQ(default_config(s, h).canonical(), "h_bm128_bn128_wg2_s3_ov_pp") << d;
      s.alibi = true;
      EXPECT_EQ(default_config(s, h, ShapeHint{1024}), default_config(s, h)) << d;
      s.alibi = false;
      s.window = true;
      EXPECT_EQ(default_config(s, h, ShapeHint{1024}), default_config(s, h)) << d;
      s.window = false;
      s.varlen = VarlenKind::packed;
      EXPECT_EQ(default_config(s, h, ShapeHint{1024}), default_config(s, h)) << d;
    }
  }
  // The key count changes nothing else.
  for (int d : {72, 112, 136, 256}) {
    const KernelSpec s = sm90_spec(d, d);
    EXPECT_EQ(default_config(s, h, ShapeHint{1024}), default_config(s, h)) << d;
  }
  KernelSpec bwd = sm90_spec(64, 64);
  bwd.pass = Pass::backward;
  EXPECT_EQ(default_config(bwd, h, ShapeHint{1024}), default_config(bwd, h));
}

// The Hopper backward writes dBias: with a bias tensor that needs its gradient it is the
// backward default wherever its register model allows: two consumers on 128 keys up to d112
// without other modifiers, the column split (_x2) where that shape runs out of registers (d120,
// d128) and above, up to 256; with a causal mask and packed varlen _x2 from d104 up to 192 (at
// 256 it spills beside a mask); the mma.sync backward elsewhere. A bias tensor without dBias
// stays on the mma.sync backward.
TEST(Sm90Config, BackwardWithDbiasTakesTheFamilyWhereRegistersAllow) {
  const DeviceLimits h = limits_for_arch(90);
  for (int d = 8; d <= kMaxHeadDim; d += 8) {
    KernelSpec s = sm90_spec(d, d);
    s.pass = Pass::backward;
    s.bias = s.dbias = true;
    const TileConfig c = default_config(s, h);
    EXPECT_EQ(c.hopper(), d <= 256) << d << " " << c.canonical();
    EXPECT_EQ(c.hopper() && c.split == 2, d >= 120 && d <= 256) << d << " " << c.canonical();
    EXPECT_EQ(why_illegal(s, c, h), std::nullopt) << d << " " << c.canonical();
    if (d == 120 || d == 128) {  // both pad to 128
      const auto why = why_illegal(s, sm90_backward_config(64, 2, 2), h);
      EXPECT_NE(why.value_or("").find("registers"), std::string::npos) << why.value_or("legal");
    }
    s.mask = MaskKind::causal;
    s.varlen = VarlenKind::packed;
    const TileConfig cm = default_config(s, h);
    EXPECT_EQ(cm.hopper(), d <= 192) << d;  // d104/112 pad to 112: varlen tips them to _x2
    EXPECT_EQ(cm.hopper() && cm.split == 2, d >= 104 && d <= 192) << d << " " << cm.canonical();
    s.dbias = false;
    EXPECT_FALSE(default_config(s, h).hopper()) << d;
  }
  // No longer refused as a feature: only registers decide.
  KernelSpec s = sm90_spec(64, 64);
  s.pass = Pass::backward;
  s.bias = s.dbias = true;
  for (const TileConfig& c : {sm90_backward_config(64, 1, 1), sm90_backward_config(64, 2, 3, true)}) {
    EXPECT_EQ(why_illegal(s, c, h), std::nullopt) << c.canonical();
  }
  EXPECT_NE(why_illegal(s, sm90_backward_config(128, 1, 2), h).value_or("").find("spills"), std::string::npos);
  s.softcap = 30.0f;
  s.alibi = true;
  EXPECT_NE(why_illegal(s, sm90_backward_config(64, 2, 2), h).value_or("").find("registers"), std::string::npos);
}

// A tileable bias arrives by TMA in the Hopper family: its default there, a (block_m, block_n)
// tile per stage in shared memory, panels of the widest swizzle that divides block_n.
TEST(Sm90Config, TiledBiasTakesTheFamilyWithAStagedTile) {
  EXPECT_EQ(sm90_swizzle(128), 128);
  EXPECT_EQ(sm90_swizzle(96), 64);
  EXPECT_EQ(sm90_swizzle(80), 32);
  for (int d = 8; d <= 256; d += 8) {
    KernelSpec s = sm90_spec(d, d);
    s.bias = true;
    s.bias_tiled = true;
    const TileConfig c = default_config(s, limits_for_arch(90));
    EXPECT_TRUE(c.hopper()) << d << " " << c.canonical();
    EXPECT_EQ(why_illegal(s, c, limits_for_arch(90)), std::nullopt) << d << " " << c.canonical();
  }
  KernelSpec s = sm90_spec();
  const TileConfig c = sm90_config(128, 2, 2);
  const int without = shared_memory_bytes(s, c);
  s.bias = true;
  EXPECT_EQ(shared_memory_bytes(s, c), without);  // per-element bias: nothing staged
  s.bias_tiled = true;
  EXPECT_EQ(shared_memory_bytes(s, c), without + 2 * 128 * 128 * 2);  // two stages of 128 x 128
  // bn80: 32-byte panels of 16 columns, five per stage.
  const TileConfig c80 = sm90_config(80, 2, 2);
  KernelSpec plain = sm90_spec();
  EXPECT_EQ(shared_memory_bytes(s, c80), shared_memory_bytes(plain, c80) + 2 * 5 * 128 * 32);
}

// ---- head dims above 256 -----------------------------------------------------------------------

TEST(WideHeadDims, MmaSyncForwardSlicesOColumnsAcrossCtas) {
  const DeviceLimits limits = limits_for_arch(80);
  const KernelSpec s = with_dims(512, 512);
  // Without slices no config fits O (16 rows x 512 columns = 256 floats per thread); the default
  // splits it in four 128-column slices, 64 query rows.
  const TileConfig def = default_config(s, limits);
  EXPECT_EQ(def.split, 4) << def.canonical();
  EXPECT_EQ(def.block_m, 64) << def.canonical();
  EXPECT_EQ(why_illegal(s, def, limits), std::nullopt) << def.canonical();
  // Q 64 x 520 + 2 stages x (K 32 x 520 + V slice 32 x 264), 2 bytes each.
  EXPECT_EQ(shared_memory_bytes(s, {64, 32, 4, 2, false, 2}), 2 * (64 * 520 + 2 * (32 * 520 + 32 * 264)));
  // Uneven slices: dv 264 = 33 n8 tiles -> 17 + 16; dv 40 = 5 tiles in 4 slices of 2 leaves one empty.
  EXPECT_EQ(why_illegal(with_dims(264, 264), {64, 32, 4, 2, false, 2}, limits), std::nullopt);
  EXPECT_TRUE(illegal_because(with_dims(64, 40), {64, 32, 4, 2, false, 4}, {"split 4", "without columns"}));
  EXPECT_TRUE(illegal_because(s, {64, 32, 4, 2, false, 8}, {"split 8"}));
  // The grid holds split CTAs per query block.
  Problem pr;
  pr.batch = 3;
  pr.heads_q = 4;
  pr.seqlen_q = 100;
  using Grid = std::array<unsigned, 3>;
  EXPECT_EQ(make_grid(pr, {64, 32, 4, 2, false, 2}), (Grid{4, 4, 3}));
  EXPECT_EQ(make_grid(pr, sm90_wide_config(32, 2)), (Grid{2, 4, 3}));  // split inside the CTA
}

TEST(WideHeadDims, BackwardUsesEightSlicesAndFitsEveryArch) {
  for (int sm : {80, 86, 90}) {
    for (bool det : {false, true}) {
      KernelSpec s = backward_spec();
      s.target.sm = sm;
      s.head_dim = s.head_dim_v = 512;
      s.deterministic = det;
      const TileConfig c = default_config(s, limits_for_arch(sm));
      EXPECT_EQ(c.split, 8) << c.canonical();
      if (sm == 86 && !det) {
        // The smallest dK/dV CTA (32 keys, 16 query rows, one buffer) needs K and V rows of
        // 2 x 520 elements, a query tile and the fast mode's dS^T: 128 bytes over sm_86's
        // 101376. Refused with the reason; the deterministic mode (no dS^T) fits.
        EXPECT_TRUE(illegal_because(s, c, {"101504 bytes", "101376"})) << c.canonical();
        EXPECT_THROW(generate(s, c, limits_for_arch(sm)), InvalidArgument);
        continue;
      }
      EXPECT_EQ(why_illegal(s, c, limits_for_arch(sm)), std::nullopt) << sm << " " << c.canonical();
    }
  }
}

TEST(WideHeadDims, HopperSplitConfigSharesRowsAndHalvesV) {
  const DeviceLimits limits = limits_for_arch(90);
  const TileConfig c = sm90_wide_config(32, 2);
  EXPECT_EQ(c.canonical(), "h_bm64_bn32_wg2_s2_x2");
  EXPECT_TRUE(parse_config("h_bm64_bn32_wg2_s2_x2") == c);
  EXPECT_TRUE(parse_config("h_bm64_bn48_wg2_s1_ov_x2") == sm90_wide_config(48, 1, true));
  // The plain kernel cannot hold O of dv 512 (256 registers) and says what to use instead.
  EXPECT_TRUE(illegal_because(sm90_spec(512, 512), sm90_config(32, 2, 2), {"O 256", "_x2"}));
  EXPECT_EQ(why_illegal(sm90_spec(512, 512), c, limits), std::nullopt);
  // Halves of whole panels: dv 264 pads to 288 (halves of 144 = nine 16-column panels), 320 to
  // 320 (halves of 160: 32-column panels), 512 (halves of 256: 64-column panels).
  auto layout = [&](int dv) { return sm90_layout(sm90_spec(512, dv), c); };
  EXPECT_EQ(layout(264).head_dim_v_pad, 288);
  EXPECT_EQ(layout(264).swizzle_v, 32);
  EXPECT_EQ(layout(320).head_dim_v_pad, 320);
  EXPECT_EQ(layout(320).swizzle_v, 64);
  EXPECT_EQ(layout(512).head_dim_v_pad, 512);
  EXPECT_EQ(layout(512).swizzle_v, 128);
  EXPECT_EQ(sm90_layout(sm90_spec(512, 264)).head_dim_v_pad, 272);  // unsplit layout unchanged
  // Q 64 x 1 KiB, 2 stages of K 32 x 1 KiB and V 32 x 1 KiB, the P tile (64 rows of 64 bytes),
  // 512 bytes of row maxima / sums, alignment slack,
  // 9 mbarriers (K and V released apart).
  EXPECT_EQ(shared_memory_bytes(sm90_spec(512, 512), c), 65536 + 2 * (32768 + 32768) + 4096 + 512 + 1024 + 72);
  // P of block_n 48: three 32-byte panels of 64 rows (2 KiB each).
  EXPECT_EQ(shared_memory_bytes(sm90_spec(512, 512), sm90_wide_config(48, 1)),
            65536 + 49152 + 49152 + 3 * 2048 + 512 + 1024 + 40);
  // What the split kernel refuses.
  EXPECT_TRUE(illegal_because(sm90_spec(512, 512), sm90_wide_config(64, 2), {"shared memory"}));
  EXPECT_TRUE(illegal_because(sm90_spec(128, 128), c, {"head_dim_v 128"}));
  TileConfig three = sm90_config(32, 3, 2);
  three.split = 2;
  EXPECT_TRUE(illegal_because(sm90_spec(512, 512), three, {"split 2", "3 consumer"}));
  TileConfig rows = c;
  rows.block_m = 128;
  EXPECT_TRUE(illegal_because(sm90_spec(512, 512), rows, {"block_m 128", "share 64"}));
  TileConfig pp = sm90_wide_config(32, 2, true);
  EXPECT_TRUE(illegal_because(sm90_spec(512, 512), pp, {"serial schedule", "_ov"}));
  pp.pingpong = true;
  EXPECT_TRUE(illegal_because(sm90_spec(512, 512), pp, {"_pp"}));
  // Registers: O 128 + half of S (block_n / 4) per thread; block_n 256 would be 192 of 200.
  EXPECT_FALSE(illegal_because(sm90_spec(512, 512), sm90_wide_config(256, 1), {"registers"}));
}

TEST(WideHeadDims, DefaultsAreLegalAndPickTheSplitKernels) {
  for (int d = 264; d <= kMaxHeadDim; d += 8) {
    for (int dv : {d, 64, 512}) {
      const KernelSpec s = sm90_spec(d, dv);
      const TileConfig h = default_config(s, limits_for_arch(90));
      EXPECT_TRUE(h.hopper()) << d << " " << dv << " " << h.canonical();
      EXPECT_EQ(h.split, dv > 256 ? 2 : 1) << h.canonical();
      EXPECT_EQ(why_illegal(s, h, limits_for_arch(90)), std::nullopt) << h.canonical();
      const KernelSpec s80 = with_dims(d, dv);
      const TileConfig m = default_config(s80, limits_for_arch(80));
      EXPECT_EQ(m.split, dv > 384 ? 4 : dv > 256 ? 2 : 1) << m.canonical();
      EXPECT_EQ(why_illegal(s80, m, limits_for_arch(80)), std::nullopt) << m.canonical();
    }
  }
}

// Causal grids interleave (head, batch) pairs in equal groups spanning a wave of CTAs, within
// what L2 allows: seqlen 4096 with 128-key blocks (32 per pair) on 132 SMs takes 8 of 64 pairs,
// or 4 where only 7 fit; 1024 (8 per pair) 32 of 256; 16384 (128 per pair) 2 of 16.
TEST(CausalPairGroup, EqualGroupsOfAWaveWithinTheCap) {
  EXPECT_EQ(causal_pair_group(64, 32, 132, 1000), 8u);
  EXPECT_EQ(causal_pair_group(64, 32, 132, 7), 4u);
  EXPECT_EQ(causal_pair_group(256, 8, 132, 1000), 32u);
  EXPECT_EQ(causal_pair_group(16, 128, 132, 1000), 2u);
  EXPECT_EQ(causal_pair_group(13, 32, 132, 1000), 13u);  // a prime count: one group
  EXPECT_EQ(causal_pair_group(36, 32, 132, 1000), 6u);
  // A wave per pair already, one pair, one tile, or no room in L2: the grid's order.
  EXPECT_EQ(causal_pair_group(64, 256, 132, 1000), 1u);
  EXPECT_EQ(causal_pair_group(1, 32, 132, 1000), 1u);
  EXPECT_EQ(causal_pair_group(64, 1, 132, 1000), 1u);
  EXPECT_EQ(causal_pair_group(64, 32, 132, 1), 1u);
  // A large prime pair count: the bounded search gives up on equal groups.
  EXPECT_EQ(causal_pair_group(1000003, 2, 132, 1ll << 40), 1u);
  for (long long pairs : {2, 6, 48, 100, 97, 1024}) {
    for (long long tiles : {2, 7, 32, 64}) {
      const unsigned g = causal_pair_group(pairs, tiles, 132, 16);
      EXPECT_EQ(pairs % g, 0) << pairs << " " << tiles;
      EXPECT_LE(g, 16u);
    }
  }
}


// The Hopper backward's deterministic dQ order (templates/bwd_order.h): for every query block, the
// key blocks whose query loop (bwd_query_rows, blocks as the kernel counts them) includes it must
// get ranks 0, 1, ... in key order (reversed where dq_descending), so each counter is met by
// exactly one writer at each step and a CTA only waits for key blocks dispatched before it.
TEST(Sm90BackwardOrder, RankIsThePlaceAmongTheKeyBlocksOfEachQueryBlock) {
  std::mt19937 rng(12345);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  int checked = 0, descending = 0, windowed = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    jitattn_kernel::BwdMask m{};
    m.len_q = pick(1, 700);
    m.len_k = pick(1, 700);
    const int kind = pick(0, 2);  // none, causal, causal bottom-right
    m.causal = kind > 0;
    m.offset = kind == 2 ? m.len_k - m.len_q : 0;
    m.window_left = pick(0, 2) == 0 ? pick(0, 400) : -1;
    m.window_right = pick(0, 2) == 0 ? pick(0, 400) : -1;
    const int block_m = pick(0, 1) ? 128 : 64;
    const int block_n = pick(0, 1) ? 128 : 64;
    const int grid_n = (m.len_k + pick(0, 300) + block_n - 1) / block_n;  // padded varlen: more blocks
    descending += jitattn_kernel::dq_descending(m);
    windowed += m.window_left >= 0;
    for (int mb = 0; mb * block_m < m.len_q; ++mb) {
      std::vector<int> writers;
      for (int n = 0; n < grid_n; ++n) {
        const jitattn_kernel::QueryRows r = jitattn_kernel::bwd_query_rows(m, n, block_n);
        if (r.end <= r.begin) continue;
        const int first = r.begin / block_m, last = (r.end + block_m - 1) / block_m;  // the kernel's loop
        if (first <= mb && mb < last) writers.push_back(n);
      }
      if (jitattn_kernel::dq_descending(m)) std::reverse(writers.begin(), writers.end());
      for (size_t i = 0; i < writers.size(); ++i) {
        ASSERT_EQ(jitattn_kernel::dq_rank(m, writers[i], mb, block_m, block_n), static_cast<int>(i))
            << "len_q " << m.len_q << " len_k " << m.len_k << " offset " << m.offset << " causal " << m.causal
            << " window " << m.window_left << "," << m.window_right << " block " << block_m << "x" << block_n
            << " query block " << mb << " key block " << writers[i];
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 50000);
  EXPECT_GT(descending, 1000);
  EXPECT_GT(windowed, 500);
}

}  // namespace
}  // namespace jitattn
