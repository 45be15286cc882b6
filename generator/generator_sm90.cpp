// Source generation for the Hopper family (templates/attn_fwd_sm90.cuh, and the backward's
// attn_bwd_sm90.cuh): the spec's constants, the score modifiers, and the wgmma instructions the
// kernel issues (two forward, four backward), written out for their exact N (a wgmma's
// accumulator operand list is N / 2 registers long, so one per shape).
#include <cmath>
#include <fmt/format.h>

#include <string>

#include "generator/generator.h"

namespace jitattn::detail {
namespace {

constexpr double kLog2e = 1.4426950408889634;

// "{%0, %1, ..., %{n-1}}" with operands numbered from `first`.
std::string reg_list(int first, int n) {
  std::string s = "{";
  for (int i = 0; i < n; ++i) s += fmt::format("{}%{}", i ? ", " : "", first + i);
  return s + "}";
}

std::string accumulator_operands(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += fmt::format("{}\"+f\"(d[{}])", i ? ", " : "", i);
  return s;
}

}  // namespace

// wgmma m64nNk16 with A and B from shared-memory descriptors, `name`(d, desc_a, desc_b[, scale_d]).
// trans_a / trans_b are the imm-trans flags (0: K-major, 1: MN-major). With `accumulate` the
// accumulators are always added to; else a scale_d operand chooses (0 overwrites: the first k16
// step). S = Q K^T: both K-major; the column-split kernel's O += P V: V MN-major, accumulating;
// the backward's dQ = dS K: both MN-major.
std::string wgmma_ss(int n, const char* name, int trans_a, int trans_b, bool accumulate) {
  const int regs = n / 2;
  std::string s = fmt::format("JITATTN_DEVICE void {}(float (&d)[{}], u64 desc_a, u64 desc_b{}) {{\n", name,
                              regs, accumulate ? "" : ", int scale_d");
  s += "  asm volatile(\n";
  s += accumulate ? std::string("      \"{\\n .reg .pred p;\\n setp.eq.u32 p, 1, 1;\\n\"\n")
                  : fmt::format("      \"{{\\n .reg .pred p;\\n setp.ne.b32 p, %{}, 0;\\n\"\n", regs + 2);
  s += fmt::format("      \" wgmma.mma_async.sync.aligned.m64n{}k16.f32.\" JITATTN_MMA_TYPES \" {}, %{}, %{}, p, 1, 1, {}, {};\\n}}\\n\"\n",
                   n, reg_list(0, regs), regs, regs + 1, trans_a, trans_b);
  s += "      : " + accumulator_operands(regs) + "\n";
  s += accumulate ? "      : \"l\"(desc_a), \"l\"(desc_b));\n}\n" : "      : \"l\"(desc_a), \"l\"(desc_b), \"r\"(scale_d));\n}\n";
  return s;
}

// O += P V step: wgmma m64nNk16 with A (P) from registers and B (V) an MN-major descriptor
// (imm-trans-b 1: V's head dim is contiguous); scale-d (a predicate) is true: accumulate.
std::string wgmma_rs(int n, const char* name) {
  const int regs = n / 2;
  std::string s = fmt::format("JITATTN_DEVICE void {}(float (&d)[{}], const u32 (&a)[4], u64 desc_b) {{\n", name, regs);
  s += "  asm volatile(\n";
  s += "      \"{\\n .reg .pred p;\\n setp.eq.u32 p, 1, 1;\\n\"\n";
  s += fmt::format("      \" wgmma.mma_async.sync.aligned.m64n{}k16.f32.\" JITATTN_MMA_TYPES \" {}, {}, %{}, p, 1, 1, 1;\\n}}\\n\"\n",
                   n, reg_list(0, regs), reg_list(regs, 4), regs + 4);
  s += "      : " + accumulator_operands(regs) + "\n";
  s += "      : \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"l\"(desc_b));\n}\n";
  return s;
}

namespace {

// The kernel's hooks for modifiers staged in shared memory: begin_tile_smem(stage's tile, n0),
// and, where kStaged, apply_staged() after apply(): the staged terms of two adjacent columns
// (kj, kj + 1) of one row, as the S accumulators hold them.
std::string sm90_score_mod_methods(bool bias_tma) {
  std::string s;
  s += fmt::format("  static constexpr bool kStaged = {};\n", bias_tma);
  s += "  JITATTN_DEVICE void begin_tile_smem(u32 tile_, int n0_) {\n";
  s += bias_tma ? "    bias_tile = tile_; bias_n0 = n0_;\n" : "    (void)tile_;\n";
  s += "    begin_tile(nullptr, n0_);\n  }\n";
  s += "  JITATTN_DEVICE void apply_staged(float& a0, float& a1, int qi, int kj) const {\n";
  s += "    (void)a0; (void)a1; (void)qi; (void)kj;\n";
  if (bias_tma) {
    // One 32-bit read per pair; rows and columns past the sequence read the zero fill or the next
    // rows (finite), which the mask removes or no store writes.
    s += "    const u32 r = static_cast<u32>(qi - bias_m0), c = static_cast<u32>(kj - bias_n0);\n";
    s += "    const u32 v = ld_shared_u32(bias_tile + (c / cfg::kBiasPanelCols) * cfg::kBiasPanelBytes +\n"
         "                                swizzled<cfg::kSwizzleB>(r * cfg::kSwizzleB + (c % cfg::kBiasPanelCols) * 2));\n";
    s += "    a0 = fmaf(elem_to_float(static_cast<elem_t>(v & 0xffffu)), kLog2e, a0);\n";
    s += "    a1 = fmaf(elem_to_float(static_cast<elem_t>(v >> 16)), kLog2e, a1);\n";
  }
  s += "  }\n";
  return s;
}

}  // namespace

std::string params_sm90_header() {
  std::string params(require_template("attn_params_sm90.h"));
  if (auto at = params.find("#pragma once"); at != std::string::npos) params.erase(at, 12);
  return params;
}

// The head every Hopper-family translation unit starts with: provenance, the dtype, the kernels'
// name defines, the embedded device headers, then `namespace jitattn_kernel { namespace cfg {`.
std::string sm90_source_head(const KernelSpec& spec, const TileConfig& cfg, const std::string& defines) {
  std::string s;
  s += fmt::format("// Generated by jitattn (generator {}). Do not edit.\n", kGeneratorVersion);
  s += fmt::format("// spec:   {}\n// config: {}\n", spec.canonical(), cfg.canonical());
  s += fmt::format("#define JITATTN_BF16 {}\n", spec.dtype == DType::bf16 ? 1 : 0);
  s += defines;
  s += require_template("common.cuh");
  s += require_template("common_sm90.cuh");
  s += params_header();
  s += params_sm90_header();
  s += header_text("philox.h");  // dropout's keep bits
  s += "\nnamespace jitattn_kernel {\nnamespace cfg {\n";
  return s;
}

// cfg constants of every Hopper kernel: head dims and their shared-memory padding and swizzles,
// then the tile (block_m, block_n, consumer warpgroups, stages).
std::string sm90_tile_constants(const KernelSpec& spec, const TileConfig& cfg, const Sm90Layout& l) {
  std::string s;
  s += fmt::format("constexpr int kHeadDim = {};\n", spec.head_dim);
  s += fmt::format("constexpr int kHeadDimV = {};\n", spec.head_dim_v);
  s += fmt::format("constexpr int kHeadDimPad = {};\n", l.head_dim_pad);
  s += fmt::format("constexpr int kHeadDimVPad = {};\n", l.head_dim_v_pad);
  s += fmt::format("constexpr int kSwizzleQK = {};\n", l.swizzle_qk);
  s += fmt::format("constexpr int kSwizzleV = {};\n", l.swizzle_v);
  s += fmt::format("constexpr int kBlockM = {};\n", cfg.block_m);
  s += fmt::format("constexpr int kBlockN = {};\n", cfg.block_n);
  s += fmt::format("constexpr int kConsumers = {};\n", cfg.consumer_warpgroups());
  s += fmt::format("constexpr int kStages = {};\n", cfg.stages);
  return s;
}

// The mask and sequence-layout flags (causal and its alignment, window, varlen kind).
std::string sm90_mask_constants(const KernelSpec& spec) {
  std::string s;
  s += fmt::format("constexpr bool kCausal = {};\n", spec.mask != MaskKind::none);
  s += fmt::format("constexpr bool kBottomRight = {};\n", spec.mask == MaskKind::causal_bottom_right);
  s += fmt::format("constexpr bool kWindow = {};\n", spec.window);
  s += fmt::format("constexpr bool kPacked = {};\n", spec.varlen == VarlenKind::packed);
  s += fmt::format("constexpr bool kPadded = {};\n", spec.varlen == VarlenKind::padded);
  return s;
}

// The forward kernels' cfg constants before their own: the tile, the schedule (overlap,
// ping-pong, polynomial exp2), the shared-memory size, masks and varlen, LSE, raw scores.
std::string sm90_forward_constants(const KernelSpec& spec, const TileConfig& cfg, const Sm90Layout& l,
                                   int shared_bytes, bool raw) {
  std::string s = sm90_tile_constants(spec, cfg, l);
  s += fmt::format("constexpr bool kOverlap = {};\n", cfg.overlap);
  s += fmt::format("constexpr bool kPingPong = {};\n", cfg.pingpong);
  s += fmt::format("constexpr bool kPolyExp = {};\n", cfg.poly_exp);
  s += fmt::format("constexpr bool kLazyRescale = {};  // O rescaled only when a row max moves by more than 2^8\n",
                   sm90_fwd_lazy_rescale(spec, cfg));
  s += fmt::format("constexpr bool kPersistent = {};\n", cfg.persistent);
  s += fmt::format("constexpr int kSmemBytes = {};\n", shared_bytes);
  s += sm90_mask_constants(spec);
  s += fmt::format("constexpr bool kLse = {};\n", spec.lse);
  s += fmt::format("constexpr bool kDropout = {};\n", spec.dropout);
  s += fmt::format("constexpr bool kRawScores = {};\n", raw);
  return s;
}

// The exp2 argument's scale, the last cfg constant; closes namespace cfg.
std::string sm90_exp_scale_and_close(const KernelSpec& spec, bool raw) {
  std::string s = "// exp2 argument scale: softmax scale * log2(e) on raw scores, 1 after modifiers\n";
  s += fmt::format("constexpr float kExpScale = {};\n",
                   raw ? float_literal(spec.scale * kLog2e) : std::string("1.0f"));
  s += "}  // namespace cfg\n\n";
  return s;
}


// The backward module (templates/attn_bwd_common.cuh + attn_bwd_sm90.cuh): the dK/dV kernel
// `name` with its four wgmma shapes, and the preprocess and dQ conversion kernels.
KernelSource generate_sm90_backward(const KernelSpec& spec, const TileConfig& cfg) {
  KernelSource out;
  out.name = gpu_kernel_name(spec, cfg);
  out.threads = cfg.warps * 32;
  out.shared_bytes = shared_memory_bytes(spec, cfg);
  out.arch_specific = true;
  out.tma_params = true;

  const GpuScoreModCode mod = gpu_score_mod_code(spec);
  const bool raw = gpu_raw_scores(spec);
  const Sm90Layout l = sm90_layout(spec, cfg);
  const Sm90BwdDq dq = sm90_bwd_dq(spec, cfg);
  // _x2 (kWide): the consumers share the CTA's 64 keys, S^T's query columns and the head dims'.
  const bool wide = cfg.split > 1;
  const int s_cols = wide ? cfg.block_m / 2 : cfg.block_m;
  const int dk_cols = wide ? l.head_dim_pad / 2 : l.head_dim_pad;
  const int dv_cols = wide ? l.head_dim_v_pad / 2 : l.head_dim_v_pad;

  std::string& s = out.source;
  std::string defines = fmt::format("#define JITATTN_BWD_MAIN {}\n", out.name);
  defines += fmt::format("#define JITATTN_BWD_PRE {}\n", backward_kernel_name(out.name, BackwardKernel::preprocess));
  defines += fmt::format("#define JITATTN_BWD_CONVERT {}\n", backward_kernel_name(out.name, BackwardKernel::convert));
  defines += fmt::format("#define JITATTN_BWD_DBIAS {}\n", backward_kernel_name(out.name, BackwardKernel::dbias));
  s += sm90_source_head(spec, cfg, defines);
  s += sm90_tile_constants(spec, cfg, l);
  s += fmt::format("constexpr int kSmemBytes = {};\n", out.shared_bytes);
  s += fmt::format("constexpr bool kWide = {};  // _x2: head-dim columns split between the consumers\n", wide);
  s += fmt::format("constexpr bool kDqAllKeys = {};\n", dq.all_keys);
  s += fmt::format("constexpr bool kTurns = {};\n", cfg.pingpong);
  s += fmt::format("constexpr bool kDqSplitM = {};\n", dq.split_m);
  s += fmt::format("constexpr bool kDqSplitN = {};\n", dq.split_n);
  s += fmt::format("constexpr bool kDqAlternate = {};\n", dq.alternate);
  s += fmt::format("constexpr bool kLseAhead = {};\n", sm90_bwd_lse_ahead(spec, cfg));
  s += fmt::format("constexpr bool kDqEarly = {};\n", sm90_bwd_dq_early(spec, cfg));
  s += fmt::format("constexpr bool kMaskSplit = {};  // the P^T loop without mask tests inside the mask\n",
                   sm90_bwd_mask_split(spec, cfg));
  s += fmt::format("constexpr bool kDqWriterCfg = {};  // dQ's reduce-adds by the writer warps\n",
                   sm90_bwd_dq_writer(spec, cfg));
  s += fmt::format("constexpr int kDqN = {};\n", dq.n);
  s += fmt::format("constexpr int kDqPasses = {};  // dQ product passes over its columns\n", dq.passes);
  s += fmt::format("constexpr bool kDropout = {};\n", spec.dropout);
  s += fmt::format("constexpr bool kDeterministic = {};  // dQ's reduce-adds in a fixed key-block order\n",
                   spec.deterministic);
  s += fmt::format("constexpr bool kDbias = {};\n", spec.dbias);
  s += sm90_mask_constants(spec);
  s += fmt::format("constexpr bool kRawScores = {};\n", raw);
  s += fmt::format("constexpr bool kSoftcap = {};  // d(score)/d(Q.K) varies per score\n", spec.softcap > 0.0f);
  const bool fold = sm90_bwd_fold_scale(spec, cfg);
  s += fmt::format("constexpr bool kFoldScale = {};  // P^T formed times the softmax scale\n", fold);
  s += fmt::format("constexpr float kLog2Scale = {};\n", float_literal(fold ? std::log2(spec.scale) : 0.0f));
  s += fmt::format("constexpr float kInvScale = {};\n", float_literal(fold ? 1.0f / spec.scale : 1.0f));
  s += sm90_exp_scale_and_close(spec, raw);
  s += "// The wgmma shapes: S^T and dP^T (N = block_m; _x2 half of it), dV and dK (N = padded head\n"
       "// dims; _x2 halves), A from registers or (_x2) shared memory, dQ.\n";
  s += wgmma_ss(s_cols);
  s += wgmma_rs(dv_cols, "wgmma_dv");
  s += wgmma_ss(dv_cols, "wgmma_dv", 0, 1, /*accumulate=*/true);
  s += wgmma_rs(dk_cols, "wgmma_dk");
  s += wgmma_ss(dk_cols, "wgmma_dk", 0, 1, /*accumulate=*/true);
  s += wgmma_ss(dq.n / dq.passes, "wgmma_dq", 1, 1);
  s += "\n// Score modifiers composed for this spec (applied to raw Q.K scores, result in log2 units).\n";
  s += gpu_score_mod_struct(mod, /*with_grad=*/true);
  s += "}  // namespace jitattn_kernel\n\n";
  s += header_text("bwd_order.h");
  s += require_template("attn_bwd_common.cuh");
  s += require_template("attn_bwd_sm90.cuh");
  return out;
}

KernelSource generate_sm90(const KernelSpec& spec, const TileConfig& cfg) {
  if (spec.pass == Pass::backward) return generate_sm90_backward(spec, cfg);
  KernelSource out;
  out.name = gpu_kernel_name(spec, cfg);
  out.threads = cfg.warps * 32;
  out.shared_bytes = shared_memory_bytes(spec, cfg);
  out.arch_specific = true;
  out.tma_params = true;

  // A tileable bias arrives by TMA with K (sm90_bias_tma): apply_pair() adds it from the stage's
  // swizzled shared-memory tile. Any other bias is read per element from global memory in apply().
  const bool bias_tma = sm90_bias_tma(spec);
  KernelSpec mod_spec = spec;
  mod_spec.bias = spec.bias && !bias_tma;
  mod_spec.bias_tiled = false;
  GpuScoreModCode mod = gpu_score_mod_code(mod_spec);
  mod.methods = sm90_score_mod_methods(bias_tma);
  if (bias_tma) {
    mod.fields += "  u32 bias_tile;\n  int bias_m0, bias_n0;\n";
    mod.init += "    bias_m0 = m0_;\n";
  }
  const bool raw = gpu_raw_scores(spec);
  const Sm90Layout l = sm90_layout(spec);
  const int bias_swizzle = sm90_swizzle(cfg.block_n);

  std::string& s = out.source;
  s += sm90_source_head(spec, cfg, fmt::format("#define JITATTN_KERNEL_NAME {}\n", out.name));
  s += sm90_forward_constants(spec, cfg, l, out.shared_bytes, raw);
  s += fmt::format("constexpr bool kBiasTma = {};\n", bias_tma);
  s += "// Bias tile of a stage: block_n / kBiasPanelCols panels of (block_m, kBiasPanelCols).\n";
  s += fmt::format("constexpr int kSwizzleB = {};\n", bias_swizzle);
  s += fmt::format("constexpr int kBiasPanelCols = {};\n", bias_swizzle / 2);
  s += fmt::format("constexpr int kBiasPanelBytes = {};\n", (cfg.block_m * bias_swizzle + 1023) / 1024 * 1024);
  s += sm90_exp_scale_and_close(spec, raw);
  s += "// The two wgmma shapes of this kernel: S (N = block_n) and O (N = padded head_dim_v).\n";
  s += wgmma_ss(cfg.block_n);
  s += wgmma_rs(l.head_dim_v_pad);
  s += "\n// Score modifiers composed for this spec (applied to raw Q.K scores, result in log2 units).\n";
  s += gpu_score_mod_struct(mod);
  s += "}  // namespace jitattn_kernel\n\n";
  s += require_template("attn_fwd_sm90.cuh");
  return out;
}

}  // namespace jitattn::detail
