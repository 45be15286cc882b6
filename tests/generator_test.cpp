// generate(): the emitted source is deterministic (it keys the binary cache), names its
// specialisation, bakes the spec into constants, composes only the score modifiers the spec
// asks for, refuses illegal configs before anything is compiled, and compiles through NVRTC
// (a handful of compiles here; tests/compile_grid_test.cpp covers the full grid).
#include "generator/generator.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "jitattn/error.h"
#include "runtime/device/nvrtc.h"

namespace jitattn {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

KernelSpec spec_for(int sm, int head_dim) {
  KernelSpec s;
  s.target.sm = sm;
  s.dtype = DType::bf16;
  s.head_dim = s.head_dim_v = head_dim;
  s.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  return s;
}

// A Hopper (sm_90) backward spec at head dim d.
KernelSpec hopper_backward_spec(int d) {
  KernelSpec s = spec_for(90, d);
  s.pass = Pass::backward;
  return s;
}

// Every mask and modifier at once: the heaviest variant, and the one most likely to differ
// between two generations if anything in the generator depended on state.
KernelSpec everything_spec(int sm, int head_dim) {
  KernelSpec s = spec_for(sm, head_dim);
  s.mask = MaskKind::causal;
  s.window = true;
  s.varlen = VarlenKind::packed;
  s.bias = true;
  s.alibi = true;
  s.softcap = 30.0f;
  s.lse = true;
  return s;
}

KernelSource generate_default(const KernelSpec& spec) {
  const DeviceLimits limits = limits_for_arch(spec.target.sm);
  return generate(spec, default_config(spec, limits), limits);
}

// Preprocessor directive lines naming `directive` ("include", "pragma once"); comments that
// mention a directive (common.cuh says "no #include at all") do not count.
int directive_lines(const std::string& source, const std::string& directive) {
  std::istringstream in(source);
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    size_t i = line.find_first_not_of(" \t");
    if (i == std::string::npos || line[i] != '#') continue;
    i = line.find_first_not_of(" \t", i + 1);
    if (i != std::string::npos && line.compare(i, directive.size(), directive) == 0) ++n;
  }
  return n;
}

// The generated ScoreMod struct: the only place modifier code may appear. The rest of the source
// (common.cuh, attn_params.h) mentions fast_tanh and bias_row_stride for every spec.
std::string score_mod_section(const std::string& source) {
  const size_t begin = source.find("struct ScoreMod {");
  const size_t end = source.find("\n};", begin);
  if (begin == std::string::npos || end == std::string::npos) {
    ADD_FAILURE() << "no struct ScoreMod in the generated source";
    return {};
  }
  return source.substr(begin, end - begin);
}

TEST(Generator, GenerateIsDeterministic) {
  const KernelSpec s = everything_spec(90, 128);
  const KernelSource a = generate_default(s);
  const KernelSource b = generate_default(s);
  EXPECT_EQ(a.name, b.name);
  EXPECT_TRUE(a.source == b.source) << "two generations of one spec differ";
  EXPECT_EQ(a.threads, b.threads);
  EXPECT_EQ(a.shared_bytes, b.shared_bytes);
}

TEST(Generator, KernelNameSpellsOutTheSpecialisation) {
  const KernelSpec s = spec_for(90, 128);
  const TileConfig cfg = default_config(s, limits_for_arch(90));
  const std::string name = generate(s, cfg, limits_for_arch(90)).name;
  EXPECT_EQ(name.rfind("attn_fwd_sm90_bf16_d128_", 0), 0u) << name;
  EXPECT_TRUE(contains(name, fmt::format("_{}_", cfg.canonical()))) << name;

  KernelSpec causal = spec_for(80, 64);
  causal.mask = MaskKind::causal;
  causal.lse = true;
  const std::string causal_name = generate_default(causal).name;
  EXPECT_EQ(causal_name.rfind("attn_fwd_sm80_bf16_d64_causal_lse_", 0), 0u) << causal_name;

  // The name is an extern "C" symbol and the NVRTC name expression: a plain C identifier.
  for (const std::string& n : {name, causal_name, generate_default(everything_spec(80, 96)).name}) {
    for (char c : n) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c >= '0' && c <= '9') || c == '_';
      EXPECT_TRUE(ok) << "'" << c << "' in " << n;
    }
  }
}

TEST(Generator, KernelNameDiffersWhenOnlyScaleOrSoftcapDiffers) {
  // Scale and softcap are baked into the code, so kernels for different values must not share
  // a symbol (or a cache entry) even though the readable part of the name is the same.
  const KernelSpec a = spec_for(80, 128);
  KernelSpec b = a;
  b.scale = std::nextafter(a.scale, std::numeric_limits<float>::max());
  EXPECT_NE(generate_default(a).name, generate_default(b).name);
  KernelSpec c = a;
  c.softcap = 30.0f;
  KernelSpec d = a;
  d.softcap = 50.0f;
  EXPECT_NE(generate_default(c).name, generate_default(d).name);
}

TEST(Generator, SourceIsOneSelfContainedTranslationUnit) {
  // NVRTC gets no include path, and the embedded headers' #pragma once means nothing (NVRTC
  // warns about it) inside one TU.
  for (const KernelSpec& s : {spec_for(80, 64), everything_spec(90, 256)}) {
    const KernelSource k = generate_default(s);
    EXPECT_EQ(directive_lines(k.source, "include"), 0) << k.name;
    EXPECT_EQ(directive_lines(k.source, "pragma once"), 0) << k.name;
    // The scanner itself: the kernel template's unroll pragmas are directive lines it must see.
    EXPECT_GT(directive_lines(k.source, "pragma unroll"), 0);
    EXPECT_TRUE(contains(k.source, "#define JITATTN_KERNEL_NAME " + k.name + "\n")) << k.name;
    EXPECT_TRUE(contains(k.source, "struct AttnFwdParams")) << "params header not embedded";
  }
}

TEST(Generator, SourceBakesTheSpecAndConfigIntoConstants) {
  KernelSpec s = spec_for(80, 80);
  s.head_dim_v = 64;
  s.mask = MaskKind::causal;
  s.lse = true;
  const TileConfig cfg{64, 32, 4, 3, true};
  const std::string src = generate(s, cfg, limits_for_arch(80)).source;
  for (const char* line : {"#define JITATTN_BF16 1\n", "constexpr int kHeadDim = 80;\n",
                           "constexpr int kHeadDimV = 64;\n", "constexpr int kBlockM = 64;\n",
                           "constexpr int kBlockN = 32;\n", "constexpr int kWarps = 4;\n",
                           "constexpr int kStages = 3;\n", "constexpr bool kQInRegs = true;\n",
                           "constexpr bool kCausal = true;\n", "constexpr bool kBottomRight = false;\n",
                           "constexpr bool kWindow = false;\n", "constexpr bool kPacked = false;\n",
                           "constexpr bool kPadded = false;\n", "constexpr bool kLse = true;\n"}) {
    EXPECT_TRUE(contains(src, line)) << "missing: " << line;
  }

  // The opposite value of every flag, so a constant stuck at one value shows.
  KernelSpec t = spec_for(80, 128);
  t.dtype = DType::f16;
  t.mask = MaskKind::causal_bottom_right;
  t.window = true;
  t.varlen = VarlenKind::padded;
  const std::string src2 = generate(t, {128, 64, 8, 2, false}, limits_for_arch(80)).source;
  for (const char* line : {"#define JITATTN_BF16 0\n", "constexpr int kHeadDim = 128;\n",
                           "constexpr bool kQInRegs = false;\n", "constexpr bool kCausal = true;\n",
                           "constexpr bool kBottomRight = true;\n", "constexpr bool kWindow = true;\n",
                           "constexpr bool kPacked = false;\n", "constexpr bool kPadded = true;\n",
                           "constexpr bool kLse = false;\n"}) {
    EXPECT_TRUE(contains(src2, line)) << "missing: " << line;
  }
  EXPECT_TRUE(contains(generate_default(spec_for(80, 128)).source, "constexpr bool kCausal = false;\n"));
  EXPECT_TRUE(contains(generate_default(everything_spec(80, 128)).source,
                       "constexpr bool kPacked = true;\n"));
}

TEST(Generator, ScoreModifierCodeAppearsOnlyWithItsModifier) {
  // All 8 combinations of the three score modifiers; masks and LSE are not modifiers and must
  // leave the raw-score path (scale folded into exp2) in place.
  for (int bits = 0; bits < 8; ++bits) {
    KernelSpec s = spec_for(80, 64);
    s.softcap = (bits & 1) ? 30.0f : 0.0f;
    s.bias = (bits & 2) != 0;
    s.alibi = (bits & 4) != 0;
    s.mask = MaskKind::causal;
    s.window = true;
    s.lse = true;
    const std::string src = generate_default(s).source;
    const std::string mod = score_mod_section(src);
    SCOPED_TRACE(s.tag());
    EXPECT_EQ(contains(mod, "fast_tanh("), s.softcap > 0.0f);
    EXPECT_EQ(contains(mod, "bias_row_stride"), s.bias);
    EXPECT_EQ(contains(mod, "alibi_slope_log2"), s.alibi);
    const bool raw = bits == 0;
    EXPECT_EQ(contains(src, "constexpr bool kRawScores = true;\n"), raw);
    EXPECT_EQ(contains(src, "constexpr bool kRawScores = false;\n"), !raw);
    // With modifiers the scores already carry the scale and log2(e): exp2 takes them as they are.
    EXPECT_EQ(contains(src, "constexpr float kExpScale = 1.0f;\n"), !raw);
  }
}

// The Hopper family reads a tileable bias from the stage's TMA tile (kBiasTma, apply_staged with a
// shared-memory load) and any other bias per element from global memory in apply().
TEST(Generator, Sm90BiasIsStagedOnlyWhenTiled) {
  KernelSpec s = spec_for(90, 128);
  s.bias = true;
  const DeviceLimits limits = limits_for_arch(90);
  const TileConfig c = sm90_config(128, 2, 2);
  s.bias_tiled = true;
  std::string src = generate(s, c, limits).source;
  EXPECT_TRUE(contains(src, "constexpr bool kBiasTma = true;\n"));
  EXPECT_TRUE(contains(src, "static constexpr bool kStaged = true;"));
  EXPECT_TRUE(contains(src, "ld_shared_u32(bias_tile"));
  EXPECT_FALSE(contains(src, "bias_row_stride = p.bias_row_stride"));
  s.bias_tiled = false;
  src = generate(s, c, limits).source;
  EXPECT_TRUE(contains(src, "constexpr bool kBiasTma = false;\n"));
  EXPECT_TRUE(contains(src, "static constexpr bool kStaged = false;"));
  EXPECT_FALSE(contains(src, "ld_shared_u32(bias_tile"));
  EXPECT_TRUE(contains(src, "bias_row_stride = p.bias_row_stride"));
}

// The Hopper backward writes dBias when the spec asks for it (kDbias; the module's dBias
// conversion kernel is there either way), and reads the bias per element in apply().
TEST(Generator, Sm90BackwardBakesDbias) {
  KernelSpec s = spec_for(90, 64);
  s.pass = Pass::backward;
  s.bias = true;
  const DeviceLimits limits = limits_for_arch(90);
  const TileConfig c = sm90_backward_config(64, 2, 2);
  std::string src = generate(s, c, limits).source;
  EXPECT_TRUE(contains(src, "constexpr bool kDbias = false;\n"));
  s.dbias = true;
  const KernelSource k = generate(s, c, limits);
  EXPECT_TRUE(contains(k.source, "constexpr bool kDbias = true;\n"));
  EXPECT_TRUE(contains(k.source, "#define JITATTN_BWD_DBIAS " + backward_kernel_name(k.name, BackwardKernel::dbias)));
  EXPECT_TRUE(contains(k.source, "bias_row_stride = p.bias_row_stride"));
}

// The Hopper backward's P^T loop gets a copy without mask tests (kMaskSplit) beside a causal mask
// or window, not beside a bias tensor or dBias, nor at block_m 128 (spills); the writer warps
// issue dQ's reduce-adds in the default shape, except where the split loop sits on the register
// budget (padded head dim 128 with a mask), and always in deterministic mode and under _x2.
TEST(Generator, Sm90BackwardMaskSplitAndDqWriter) {
  const DeviceLimits limits = limits_for_arch(90);
  auto spec = [](int d, MaskKind mask) {
    KernelSpec s = spec_for(90, d);
    s.pass = Pass::backward;
    s.mask = mask;
    return s;
  };
  const TileConfig c = sm90_backward_config(64, 2, 2);
  EXPECT_FALSE(sm90_bwd_mask_split(spec(64, MaskKind::none), c));
  EXPECT_TRUE(sm90_bwd_mask_split(spec(64, MaskKind::causal), c));
  EXPECT_TRUE(sm90_bwd_mask_split(spec(128, MaskKind::causal_bottom_right), c));
  KernelSpec windowed = spec(96, MaskKind::none);
  windowed.window = true;
  EXPECT_TRUE(sm90_bwd_mask_split(windowed, c));
  KernelSpec dbias = spec(64, MaskKind::causal);
  dbias.bias = dbias.dbias = true;
  EXPECT_FALSE(sm90_bwd_mask_split(dbias, c));
  EXPECT_FALSE(sm90_bwd_mask_split(spec(32, MaskKind::causal), sm90_backward_config(128, 2, 2)));
  KernelSpec det = spec(128, MaskKind::causal);
  det.deterministic = true;
  EXPECT_FALSE(sm90_bwd_mask_split(det, c));
  det.head_dim = det.head_dim_v = 96;
  EXPECT_TRUE(sm90_bwd_mask_split(det, c));

  EXPECT_TRUE(sm90_bwd_dq_writer(spec(128, MaskKind::none), c));
  EXPECT_FALSE(sm90_bwd_dq_writer(spec(128, MaskKind::causal), c));
  EXPECT_TRUE(sm90_bwd_dq_writer(spec(96, MaskKind::causal), c));
  EXPECT_TRUE(sm90_bwd_dq_writer(spec(64, MaskKind::causal), c));
  EXPECT_FALSE(sm90_bwd_dq_writer(spec(64, MaskKind::none), sm90_backward_config(64, 2, 3)));
  EXPECT_FALSE(sm90_bwd_dq_writer(spec(64, MaskKind::none), sm90_backward_config(64, 2, 2, true)));
  KernelSpec det128 = spec(128, MaskKind::causal);
  det128.deterministic = true;
  EXPECT_TRUE(sm90_bwd_dq_writer(det128, c));

  const std::string causal128 = generate(spec(128, MaskKind::causal), c, limits).source;
  EXPECT_TRUE(contains(causal128, "constexpr bool kMaskSplit = true;"));
  EXPECT_TRUE(contains(causal128, "constexpr bool kDqWriterCfg = false;"));
  const std::string none128 = generate(spec(128, MaskKind::none), c, limits).source;
  EXPECT_TRUE(contains(none128, "constexpr bool kMaskSplit = false;"));
  EXPECT_TRUE(contains(none128, "constexpr bool kDqWriterCfg = true;"));
}

// The Hopper backward folds the softmax scale into P^T (an offset on the LSE it reads, dV divided
// once) in the default's block_m 64, except beside softcap (a per-score derivative) and dBias (the
// unscaled dS); at block_m 128 the epilogue's multiply spilled (d32, bottom-right causal, LSE).
TEST(Generator, Sm90BackwardFoldsTheScaleIntoP) {
  const DeviceLimits limits = limits_for_arch(90);
  const auto spec = [](int d) { return hopper_backward_spec(d); };
  const TileConfig c = sm90_backward_config(64, 2, 2);
  EXPECT_TRUE(sm90_bwd_fold_scale(spec(128), c));
  EXPECT_TRUE(sm90_bwd_fold_scale(spec(256), sm90_backward_wide_config(2)));
  EXPECT_FALSE(sm90_bwd_fold_scale(spec(32), sm90_backward_config(128, 2, 2)));
  KernelSpec capped = spec(64);
  capped.softcap = 30.0f;
  EXPECT_FALSE(sm90_bwd_fold_scale(capped, c));
  KernelSpec dbias = spec(64);
  dbias.bias = dbias.dbias = true;
  EXPECT_FALSE(sm90_bwd_fold_scale(dbias, c));
  KernelSpec bias = spec(64);
  bias.bias = true;
  EXPECT_TRUE(sm90_bwd_fold_scale(bias, c));
  KernelSpec tiny = spec(64);
  tiny.scale = 1e-39f;  // subnormal: its reciprocal overflows
  EXPECT_FALSE(sm90_bwd_fold_scale(tiny, c));
  KernelSpec one = spec(64);
  one.scale = 1.0f;  // log2 = 0
  EXPECT_TRUE(sm90_bwd_fold_scale(one, c));

  KernelSpec s = spec(128);
  s.scale = 0.125f;
  const std::string src = generate(s, c, limits).source;
  EXPECT_TRUE(contains(src, "constexpr bool kFoldScale = true;"));
  EXPECT_TRUE(contains(src, "constexpr float kLog2Scale = " + detail::float_literal(-3.0) + ";"));
  EXPECT_TRUE(contains(src, "constexpr float kInvScale = " + detail::float_literal(8.0) + ";"));
  const std::string plain = generate(capped, c, limits).source;
  EXPECT_TRUE(contains(plain, "constexpr bool kFoldScale = false;"));
  EXPECT_TRUE(contains(plain, "constexpr float kLog2Scale = " + detail::float_literal(0.0) + ";"));
}

// The Hopper forward rescales O lazily (only when a row max moves by more than 2^8) where O's
// rescale is a large share of the softmax: padded head dim V 256 and the _x2 kernels above it.
TEST(Generator, Sm90ForwardLazyRescaleByHeadDim) {
  const DeviceLimits limits = limits_for_arch(90);
  const TileConfig c = sm90_config(128, 2, 2, true, true);
  EXPECT_FALSE(sm90_fwd_lazy_rescale(spec_for(90, 64), c));
  EXPECT_FALSE(sm90_fwd_lazy_rescale(spec_for(90, 128), c));
  EXPECT_FALSE(sm90_fwd_lazy_rescale(spec_for(90, 192), sm90_config(80, 2, 2, true)));
  EXPECT_TRUE(sm90_fwd_lazy_rescale(spec_for(90, 256), sm90_config(80, 2, 2, true)));
  EXPECT_TRUE(sm90_fwd_lazy_rescale(spec_for(90, 248), sm90_config(80, 2, 2, true)));  // padded to 256
  EXPECT_TRUE(sm90_fwd_lazy_rescale(spec_for(90, 512), sm90_wide_config(64, 1)));
  EXPECT_FALSE(sm90_fwd_lazy_rescale(spec_for(80, 256), TileConfig{64, 64, 4, 2}));
  EXPECT_TRUE(contains(generate(spec_for(90, 256), sm90_config(80, 2, 2, true), limits).source,
                       "constexpr bool kLazyRescale = true;"));
  EXPECT_TRUE(contains(generate(spec_for(90, 512), sm90_wide_config(64, 1), limits).source,
                       "constexpr bool kLazyRescale = true;"));
  EXPECT_TRUE(contains(generate(spec_for(90, 128), c, limits).source, "constexpr bool kLazyRescale = false;"));
}

// How the Hopper backward shares dQ among its consumers, and what that costs in shared memory:
// d128 splits the head dim (two 64-column halves), d64 and d96 (no two whole panels) alternate
// blocks, block_m 128 splits rows, _pp adds each consumer's own keys' share. Each consumer stages
// its dQ tiles as fp32 panels of 64 rows by 32 columns.
TEST(Generator, Sm90BackwardDqSharingAndItsSharedMemory) {
  const DeviceLimits limits = limits_for_arch(90);
  const auto spec = [](int d) { return hopper_backward_spec(d); };
  const TileConfig c = sm90_backward_config(64, 2, 2);
  const Sm90BwdDq d128 = sm90_bwd_dq(spec(128), c);
  EXPECT_TRUE(d128.all_keys && d128.split_n && !d128.alternate);
  EXPECT_EQ(d128.n, 64);
  for (int d : {64, 80, 96}) {
    const Sm90BwdDq q = sm90_bwd_dq(spec(d), c);
    EXPECT_TRUE(q.all_keys && q.alternate && !q.split_n && !q.split_m) << d;
    EXPECT_EQ(q.n, sm90_layout(spec(d)).head_dim_pad) << d;
  }
  const Sm90BwdDq rows = sm90_bwd_dq(spec(64), sm90_backward_config(128, 2, 2));
  EXPECT_TRUE(rows.split_m && !rows.alternate);
  const Sm90BwdDq own = sm90_bwd_dq(spec(64), sm90_backward_config(64, 2, 2, true));
  EXPECT_TRUE(!own.all_keys && !own.alternate);

  // Shared memory at block_m 64, 2 stages: K and V (128 rows), 2 x (Q and dO of 64 rows), two
  // dS^T buffers of (128 keys, 64 queries), the dQ tiles (2 consumers x 2 fp32 panels of 8 KiB:
  // d128's 64-column halves, d64's whole 64), LSE and delta, 1 KiB slack, 5 mbarriers, and the
  // dQ writer warps' 2 mbarriers and records (32 bytes).
  EXPECT_EQ(shared_memory_bytes(spec(128), c),
            2 * 32768 + 2 * 32768 + 2 * 16384 + 2 * 2 * 8192 + 1024 + 1024 + 40 + 32);
  EXPECT_EQ(shared_memory_bytes(spec(64), c), 2 * 16384 + 2 * 16384 + 2 * 16384 + 2 * 2 * 8192 + 1024 + 1024 + 40 + 32);

  // The generated module carries the choice, and reads LSE ahead only where the register model
  // has block_m / 4 registers to spare (d64, not d128).
  const std::string s64 = generate(spec(64), c, limits).source;
  EXPECT_TRUE(contains(s64, "constexpr bool kDqAlternate = true;\n"));
  EXPECT_TRUE(contains(s64, "constexpr bool kLseAhead = true;\n"));
  const std::string s128 = generate(spec(128), c, limits).source;
  EXPECT_TRUE(contains(s128, "constexpr bool kDqAlternate = false;\n"));
  EXPECT_TRUE(contains(s128, "constexpr bool kDqSplitN = true;\n"));
  EXPECT_TRUE(contains(s128, "constexpr bool kLseAhead = false;\n"));
  EXPECT_TRUE(sm90_bwd_lse_ahead(spec(64), c));
  EXPECT_FALSE(sm90_bwd_lse_ahead(spec(128), c));
  EXPECT_LE(sm90_bwd_registers(spec(128), c), kSm90BwdRegisterBudget);
  EXPECT_GT(sm90_bwd_registers(spec(128), c) + c.block_m / 4, kSm90BwdRegisterBudget);

  // dQ before dV (its product written out while dV runs) where the model has room for P^T's
  // fragments beside the dQ accumulators and both consumers compute dQ every block: d128 plain and
  // causal, d32 at block_m 128 (rows split); not alternating consumers (d64: the late dV holds
  // the stage), nor a kernel the model refuses outright (ALiBi at d128).
  EXPECT_TRUE(contains(s128, "constexpr bool kDqEarly = true;\n"));
  EXPECT_TRUE(contains(s64, "constexpr bool kDqEarly = false;\n"));
  KernelSpec causal = spec(128);
  causal.mask = MaskKind::causal;
  EXPECT_TRUE(sm90_bwd_dq_early(causal, c));
  causal.mask = MaskKind::causal_bottom_right;
  EXPECT_TRUE(sm90_bwd_dq_early(causal, c));
  // Beside a mask, not in other shapes at d128 (three stages and _pp spilled there).
  EXPECT_FALSE(sm90_bwd_dq_early(causal, sm90_backward_config(64, 2, 3)));
  TileConfig pp = c;
  pp.pingpong = true;
  EXPECT_FALSE(sm90_bwd_dq_early(causal, pp));
  EXPECT_TRUE(sm90_bwd_dq_early(spec(128), pp));
  causal.head_dim = causal.head_dim_v = 32;
  EXPECT_TRUE(sm90_bwd_dq_early(causal, sm90_backward_config(128, 2, 2)));
  KernelSpec alibi = spec(128);
  alibi.alibi = true;
  EXPECT_FALSE(sm90_bwd_dq_early(alibi, c));
}

TEST(Generator, IllegalConfigThrowsInvalidArgumentWithTheReason) {
  const KernelSpec s = spec_for(80, 128);
  const DeviceLimits limits = limits_for_arch(80);
  KernelSpec bad_dim = s;
  bad_dim.head_dim = 12;
  const std::pair<KernelSpec, TileConfig> cases[] = {
      {s, {128, 48, 8, 2, false}},      // block_n
      {s, {128, 128, 8, 4, false}},     // shared memory
      {bad_dim, {128, 64, 8, 2, false}},  // spec, not config, is wrong: still refused up front
  };
  for (const auto& [spec, cfg] : cases) {
    const std::optional<std::string> why = why_illegal(spec, cfg, limits);
    ASSERT_TRUE(why.has_value()) << cfg.canonical();
    try {
      const KernelSource k = generate(spec, cfg, limits);
      ADD_FAILURE() << cfg.canonical() << " generated " << k.name;
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(e.argument(), "config");
      EXPECT_TRUE(contains(e.what(), *why)) << e.what();
      EXPECT_TRUE(contains(e.what(), cfg.canonical())) << e.what();
    }
  }
}

TEST(Generator, TemplateHashIsNonZeroAndStable) {
  const uint64_t h = template_hash();
  EXPECT_NE(h, 0u);
  // FNV-1a's offset basis is the hash of nothing: the templates would not be embedded.
  EXPECT_NE(h, 1469598103934665603ull);
  EXPECT_EQ(template_hash(), h);
}

TEST(Generator, LaunchShapeMatchesTheConfig) {
  const KernelSpec s = spec_for(80, 96);
  for (const TileConfig& cfg : {TileConfig{64, 32, 2, 2, false}, TileConfig{64, 64, 4, 3, true},
                                TileConfig{128, 64, 8, 2, false}}) {
    const KernelSource k = generate(s, cfg, limits_for_arch(80));
    EXPECT_EQ(k.threads, cfg.warps * 32) << cfg.canonical();
    EXPECT_EQ(k.shared_bytes, shared_memory_bytes(s, cfg)) << cfg.canonical();
  }
}

// The two ends of the feature range on sm_80, each with its default config: no spills, no stack
// (local memory in the inner loop costs more than any tile choice gains), and the name NVRTC
// reports is the one the runtime will look up.
void expect_compiles_without_spills(const KernelSpec& s) {
  const KernelSource k = generate_default(s);
  const device::CompileResult r = device::compile_to_cubin(k.source, k.name, s.target.sm);
  EXPECT_EQ(r.kernel_name, k.name);
  EXPECT_FALSE(r.cubin.empty());
  EXPECT_GT(r.registers, 0) << "no ptxas report in:\n" << r.log;
  EXPECT_EQ(r.spill_store_bytes, 0) << k.name << ": " << r.registers << " registers";
  EXPECT_EQ(r.spill_load_bytes, 0) << k.name << ": " << r.registers << " registers";
  EXPECT_EQ(r.stack_frame_bytes, 0) << k.name;
}

TEST(Generator, PlainKernelCompilesForSm80WithoutSpills) {
  expect_compiles_without_spills(spec_for(80, 128));
}

TEST(Generator, KernelWithEveryModifierCompilesForSm80WithoutSpills) {
  expect_compiles_without_spills(everything_spec(80, 128));
}


// ---- CPU kernels ---------------------------------------------------------------------------------
KernelSpec cpu_spec_for(DType dtype, int head_dim) {
  KernelSpec s = spec_for(0, head_dim);
  s.target = Target{0, true};
  s.dtype = dtype;
  return s;
}

KernelSource generate_cpu_default(const KernelSpec& spec) {
  return generate(spec, default_config(spec, limits_for_cpu()), limits_for_cpu());
}

KernelSpec cpu_everything_spec(DType dtype, int head_dim) {
  KernelSpec s = everything_spec(0, head_dim);
  s.target = Target{0, true};
  s.dtype = dtype;
  return s;
}

TEST(GeneratorCpu, SourceHasNoIncludeAndDefinesTheAbiEntryPoint) {
  // The in-process clang has no standard headers on its include path.
  for (const KernelSpec& s : {cpu_spec_for(DType::f32, 64), cpu_everything_spec(DType::bf16, 256),
                              cpu_everything_spec(DType::f16, 72)}) {
    const KernelSource k = generate_cpu_default(s);
    EXPECT_EQ(directive_lines(k.source, "include"), 0) << k.name;
    EXPECT_EQ(directive_lines(k.source, "pragma once"), 0) << k.name;
    EXPECT_GT(directive_lines(k.source, "pragma unroll"), 0);  // the scanner sees directives
    EXPECT_TRUE(contains(k.source, "#define JITATTN_KERNEL_NAME " + k.name + "\n")) << k.name;
    EXPECT_TRUE(contains(k.source, "struct AttnFwdParams")) << "params header not embedded";
    // runtime/device/cpu_jit.h's ABI.
    EXPECT_TRUE(contains(k.source, "extern \"C\" void JITATTN_KERNEL_NAME(const jitattn_kernel::AttnFwdParams* params, long long begin,"))
        << k.name;
    EXPECT_FALSE(contains(k.source, "__global__")) << "CUDA code in a CPU kernel";
    EXPECT_EQ(k.threads, 0);
    EXPECT_EQ(k.shared_bytes, 0);
  }
}

TEST(GeneratorCpu, GenerateIsDeterministic) {
  const KernelSpec s = cpu_everything_spec(DType::f16, 128);
  const KernelSource a = generate_cpu_default(s);
  const KernelSource b = generate_cpu_default(cpu_everything_spec(DType::f16, 128));
  EXPECT_EQ(a.name, b.name);
  EXPECT_TRUE(a.source == b.source) << "two generations of one CPU spec differ";
}

TEST(GeneratorCpu, KernelNameSpellsOutTheSpecialisation) {
  KernelSpec s = cpu_spec_for(DType::f32, 64);
  s.mask = MaskKind::causal;
  s.lse = true;
  const std::string name = generate(s, cpu_config(32, 128), limits_for_cpu()).name;
  EXPECT_EQ(name.rfind("attn_fwd_cpu_f32_d64_causal_lse_bm32_bn128_", 0), 0u) << name;
  EXPECT_EQ(name.size(), std::string("attn_fwd_cpu_f32_d64_causal_lse_bm32_bn128_").size() + 8) << name;
  const std::string full = generate_cpu_default(cpu_everything_spec(DType::bf16, 80)).name;
  EXPECT_EQ(full.rfind("attn_fwd_cpu_bf16_d80_causal_window_packed_bias_alibi_softcap_lse_bm", 0), 0u) << full;
  // A CPU and a GPU kernel of the same facts never share a symbol or a cache entry.
  KernelSpec g = s;
  g.target = Target{80, false};
  g.dtype = DType::bf16;
  KernelSpec c = g;
  c.target = Target{0, true};
  EXPECT_NE(generate_default(g).name, generate_cpu_default(c).name);
  // Scale is baked in: a 1-ulp change is another kernel.
  KernelSpec t = s;
  t.scale = std::nextafter(s.scale, 1.0f);
  EXPECT_NE(generate(t, cpu_config(32, 128), limits_for_cpu()).name, name);
}

TEST(GeneratorCpu, SourceBakesTheSpecAndConfigIntoConstants) {
  KernelSpec s = cpu_spec_for(DType::f16, 80);
  s.head_dim_v = 48;
  s.mask = MaskKind::causal_bottom_right;
  s.window = true;
  s.varlen = VarlenKind::padded;
  const std::string src = generate(s, cpu_config(16, 32), limits_for_cpu()).source;
  for (const char* line : {"constexpr int kHeadDim = 80;\n", "constexpr int kHeadDimV = 48;\n",
                           "constexpr int kBlockM = 16;\n", "constexpr int kBlockN = 32;\n",
                           "constexpr bool kCausal = true;\n",
                           "constexpr bool kBottomRight = true;\n", "constexpr bool kWindow = true;\n",
                           "constexpr bool kPacked = false;\n", "constexpr bool kPadded = true;\n",
                           "constexpr bool kLse = false;\n", "constexpr bool kRawScores = true;\n",
                           "inline float elem_to_float(elem_t x) { return f16_to_float(x); }\n"}) {
    EXPECT_TRUE(contains(src, line)) << "missing: " << line;
  }
  // Raw scores: scale * log2(e) folded into Q as an exact float literal.
  EXPECT_TRUE(contains(src, fmt::format("constexpr float kQScale = {:a}f;\n",
                                        static_cast<float>(s.scale * 1.4426950408889634))))
      << src.substr(0, 4000);
  const std::string bf = generate_cpu_default(cpu_spec_for(DType::bf16, 64)).source;
  EXPECT_TRUE(contains(bf, "return bf16_to_float(x);")) << "bf16 conversion";
  EXPECT_TRUE(contains(generate_cpu_default(cpu_spec_for(DType::f32, 64)).source, "typedef float elem_t;"));
}

TEST(GeneratorCpu, ScoreModifierCodeAppearsOnlyWithItsModifier) {
  for (int bits = 0; bits < 8; ++bits) {
    KernelSpec s = cpu_spec_for(DType::f32, 64);
    s.softcap = (bits & 1) ? 30.0f : 0.0f;
    s.bias = (bits & 2) != 0;
    s.alibi = (bits & 4) != 0;
    s.mask = MaskKind::causal;
    s.window = true;
    s.lse = true;
    const std::string src = generate_cpu_default(s).source;
    const std::string mod = score_mod_section(src);
    SCOPED_TRACE(s.tag());
    EXPECT_EQ(contains(mod, "tanh_scalar("), s.softcap > 0.0f);
    EXPECT_EQ(contains(mod, "bias_row_stride"), s.bias);
    EXPECT_EQ(contains(mod, "alibi_slope"), s.alibi);
    const bool raw = bits == 0;
    EXPECT_EQ(contains(src, "constexpr bool kRawScores = true;\n"), raw);
    // With modifiers Q carries the scale alone and apply() converts to log2 units.
    EXPECT_EQ(contains(src, fmt::format("constexpr float kQScale = {:a}f;\n", s.scale)), !raw);
  }
}

TEST(GeneratorCpu, IllegalConfigsAreRefusedWithTheReason) {
  const KernelSpec s = cpu_spec_for(DType::f32, 256);
  const DeviceLimits limits = limits_for_cpu();
  const TileConfig cases[] = {cpu_config(24, 64), cpu_config(32, 100), cpu_config(64, 256),
                              TileConfig{128, 64, 4, 2, false}};
  for (const TileConfig& cfg : cases) {
    const std::optional<std::string> why = why_illegal(s, cfg, limits);
    ASSERT_TRUE(why.has_value()) << cfg.canonical();
    try {
      const KernelSource k = generate(s, cfg, limits);
      ADD_FAILURE() << cfg.canonical() << " generated " << k.name;
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(e.argument(), "config");
      EXPECT_TRUE(contains(e.what(), *why)) << e.what();
      EXPECT_TRUE(contains(e.what(), cfg.canonical())) << e.what();
    }
  }
  // A CPU spec against GPU limits (and the reverse) is refused before anything is emitted.
  EXPECT_THROW(generate(s, cpu_config(32, 64), limits_for_arch(90)), InvalidArgument);
  EXPECT_THROW(generate(spec_for(90, 64), cpu_config(32, 64), limits), InvalidArgument);
}

TEST(GeneratorCpu, TemplateHashesAreSeparate) {
  // CPU template edits must not invalidate GPU tuning results, and the reverse.
  const uint64_t cpu = cpu_template_hash();
  EXPECT_NE(cpu, 0u);
  EXPECT_NE(cpu, 1469598103934665603ull);
  EXPECT_NE(cpu, template_hash());
  EXPECT_EQ(cpu_template_hash(), cpu);
}

}  // namespace
}  // namespace jitattn
