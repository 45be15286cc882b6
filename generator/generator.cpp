#include "generator/generator.h"

#include <fmt/format.h>

#include <bit>
#include <cmath>
#include <initializer_list>
#include <string_view>

#include "jitattn/error.h"

namespace jitattn {
namespace detail {
std::string_view embedded_template(std::string_view name);  // generated at build time

std::string_view require_template(std::string_view name) {
  const std::string_view text = embedded_template(name);
  if (text.empty()) throw Error(fmt::format("kernel template {} is not embedded", name));
  return text;
}

std::string float_literal(double v) { return fmt::format("{:a}f", static_cast<float>(v)); }

std::string header_text(std::string_view name) {
  std::string text(require_template(name));
  if (auto at = text.find("#pragma once"); at != std::string::npos) text.erase(at, 12);
  return text;
}

std::string params_header() { return header_text("attn_params.h"); }

namespace {
constexpr double kLog2e = 1.4426950408889634;
}  // namespace

// Score modifiers are one mechanism: each contributes lines to ScoreMod::init/apply, and the
// kernel's main loop only ever calls mod.apply(acc, qi, kj). Without any modifier the kernel keeps
// raw scores and folds the scale into the exp2 FMA (kRawScores), so plain attention pays nothing.
GpuScoreModCode gpu_score_mod_code(const KernelSpec& spec) {
  GpuScoreModCode c;
  const bool softcap = spec.softcap > 0.0f;
  if (softcap) {
    // softcap * tanh(scale * s / softcap), in the log2 domain.
    c.apply += fmt::format("    float s = {} * fast_tanh(acc * {});\n",
                           float_literal(spec.softcap * kLog2e),
                           float_literal(static_cast<double>(spec.scale) / spec.softcap));
  } else {
    c.apply += fmt::format("    float s = acc * {};\n", float_literal(spec.scale * kLog2e));
  }
  if ((spec.bias && !spec.bias_tiled) || spec.alibi) {
    c.fields += "  int len_q, len_k, offset;\n";
    c.init += "    len_q = len_q_; len_k = len_k_; offset = offset_;\n";
  }
  if (spec.bias && spec.bias_tiled) {
    // The kernel streams this CTA's (BLOCK_M, BLOCK_N) bias tile into shared memory with the K/V
    // tiles (zero-filled past the sequence ends, which the mask removes); apply() reads it there.
    c.fields += "  const elem_t* bias_tile;\n  int m0, n0;\n";
    c.init += "    m0 = m0_;\n";
    c.begin_tile += "    bias_tile = tile_; n0 = n0_;\n";
    c.apply +=
        "    s = fmaf(elem_to_float(bias_tile[(qi - m0) * cfg::kBiasStride + (kj - n0)]), kLog2e, s);\n";
  } else if (spec.bias) {
    c.fields += "  const elem_t* bias;\n  long long bias_row_stride;\n  int bias_col_mask;\n";
    c.init +=
        "    bias = static_cast<const elem_t*>(p.bias) + b * p.bias_batch_stride +\n"
        "           h * p.bias_head_stride;\n"
        "    bias_row_stride = p.bias_row_stride;\n"
        "    bias_col_mask = p.bias_col_stride != 0 ? -1 : 0;\n";
    // Rows/columns past the sequence are masked later; never read the bias there. The last dim
    // has stride 1 or is broadcast (validate()), so a column is kj & mask: 32-bit offsets from
    // one row pointer per row, which keeps the hoisted loads' addresses out of the register file.
    c.apply +=
        "    if (qi < len_q && kj < len_k) {\n"
        "      const elem_t* row = bias + qi * bias_row_stride;\n"
        "      s = fmaf(elem_to_float(row[kj & bias_col_mask]), kLog2e, s);\n"
        "    }\n";
  }
  if (spec.alibi) {
    c.fields += "  float alibi_slope_log2;\n";
    c.init += "    alibi_slope_log2 = p.alibi_slopes[h] * kLog2e;\n";
    c.apply += "    s -= alibi_slope_log2 * fabsf(static_cast<float>(qi + offset - kj));\n";
  }
  c.apply += "    return s;\n";
  // d(score) / d(Q.K) in natural units (the backward's chain rule); softcap * tanh(x / softcap)
  // has derivative 1 - tanh^2.
  if (softcap) {
    c.grad_scale = fmt::format("    const float th = fast_tanh(acc * {});\n    return {} * (1.0f - th * th);\n",
                               float_literal(static_cast<double>(spec.scale) / spec.softcap),
                               float_literal(spec.scale));
  } else {
    c.grad_scale = fmt::format("    (void)acc;\n    return {};\n", float_literal(spec.scale));
  }
  return c;
}

bool gpu_raw_scores(const KernelSpec& spec) {
  return !(spec.softcap > 0.0f || spec.bias || spec.alibi);
}

std::string gpu_kernel_name(const KernelSpec& spec, const TileConfig& cfg) {
  // Scale and softcap values are baked in too; the short hash keeps names of different values
  // apart while the readable part spells out the specialisation.
  uint64_t h = spec.hash();
  return fmt::format("attn_{}_sm{}_{}_{}_{:08x}", spec.pass == Pass::backward ? "bwd" : "fwd",
                     spec.target.sm, spec.tag(), cfg.canonical(), static_cast<uint32_t>(h ^ (h >> 32)));
}

std::string gpu_score_mod_struct(const GpuScoreModCode& mod, bool with_grad) {
  std::string s;
  s += "struct ScoreMod {\n" + mod.fields;
  s += "  JITATTN_DEVICE void init(const AttnFwdParams& p, int b, int h, int len_q_, int len_k_,\n"
       "                          int offset_, int m0_) {\n";
  s += "    (void)p; (void)b; (void)h; (void)len_q_; (void)len_k_; (void)offset_; (void)m0_;\n" +
       mod.init;
  s += "  }\n";
  s += "  JITATTN_DEVICE void begin_tile(const elem_t* tile_, int n0_) {\n";
  s += "    (void)tile_; (void)n0_;\n" + mod.begin_tile;
  s += "  }\n";
  s += "  JITATTN_DEVICE float apply(float acc, int qi, int kj) const {\n";
  s += "    (void)qi; (void)kj;\n" + mod.apply;
  s += "  }\n";
  // d(score after modifiers)/d(raw Q.K score), for the backward pass.
  if (with_grad) s += "  JITATTN_DEVICE float grad_scale(float acc) const {\n" + mod.grad_scale + "  }\n";
  s += mod.methods;
  s += "};\n";
  return s;
}

}  // namespace detail

namespace {

using detail::float_literal;
using detail::gpu_kernel_name;
using detail::gpu_raw_scores;
using detail::require_template;
using detail::gpu_score_mod_code;
using detail::GpuScoreModCode;

constexpr double kLog2e = 1.4426950408889634;

}  // namespace

std::string backward_kernel_name(const std::string& name, BackwardKernel which) {
  switch (which) {
    case BackwardKernel::preprocess: return name + "_pre";
    case BackwardKernel::dq: return name + "_dq";
    case BackwardKernel::convert: return name + "_convert";
    case BackwardKernel::dbias: return name + "_dbias";
  }
  return name;
}

KernelSource generate(const KernelSpec& spec, const TileConfig& cfg, const DeviceLimits& limits) {
  if (auto why = why_illegal(spec, cfg, limits)) {
    throw InvalidArgument("config", fmt::format("{} for {}: {}", cfg.canonical(), spec.canonical(), *why));
  }
  if (spec.target.cpu) return detail::generate_cpu(spec, cfg);
  if (cfg.hopper()) {
    // The column-split forward has its own template; the backward's (_x2) is attn_bwd_sm90.cuh's kWide.
    return cfg.split > 1 && spec.pass == Pass::forward ? detail::generate_sm90_wide(spec, cfg)
                                                       : detail::generate_sm90(spec, cfg);
  }
  KernelSource out;
  out.name = gpu_kernel_name(spec, cfg);
  out.threads = cfg.warps * 32;
  out.shared_bytes = shared_memory_bytes(spec, cfg);

  const GpuScoreModCode mod = gpu_score_mod_code(spec);
  const bool raw = gpu_raw_scores(spec);
  std::string& s = out.source;
  s += fmt::format("// Generated by jitattn (generator {}). Do not edit.\n", kGeneratorVersion);
  s += fmt::format("// spec:   {}\n// config: {}\n", spec.canonical(), cfg.canonical());
  s += fmt::format("#define JITATTN_BF16 {}\n", spec.dtype == DType::bf16 ? 1 : 0);
  const bool backward = spec.pass == Pass::backward;
  if (backward) {
    s += fmt::format("#define JITATTN_BWD_MAIN {}\n", out.name);
    s += fmt::format("#define JITATTN_BWD_PRE {}\n", backward_kernel_name(out.name, BackwardKernel::preprocess));
    s += fmt::format("#define JITATTN_BWD_DQ {}\n", backward_kernel_name(out.name, BackwardKernel::dq));
    s += fmt::format("#define JITATTN_BWD_CONVERT {}\n", backward_kernel_name(out.name, BackwardKernel::convert));
    s += fmt::format("#define JITATTN_BWD_DBIAS {}\n", backward_kernel_name(out.name, BackwardKernel::dbias));
    s += fmt::format("#define JITATTN_BWD_HAS_DQ {}\n", spec.deterministic ? 1 : 0);
  } else {
    s += fmt::format("#define JITATTN_KERNEL_NAME {}\n", out.name);
  }
  s += require_template("common.cuh");
  // The params and Philox headers are shared with the host.
  s += detail::header_text("attn_params.h");
  s += detail::header_text("philox.h");
  s += "\nnamespace jitattn_kernel {\nnamespace cfg {\n";
  s += fmt::format("constexpr int kHeadDim = {};\n", spec.head_dim);
  s += fmt::format("constexpr int kHeadDimV = {};\n", spec.head_dim_v);
  s += fmt::format("constexpr int kBlockM = {};\n", cfg.block_m);
  s += fmt::format("constexpr int kBlockN = {};\n", cfg.block_n);
  s += fmt::format("constexpr int kWarps = {};\n", cfg.warps);
  s += fmt::format("constexpr int kStages = {};\n", cfg.stages);
  s += fmt::format("constexpr bool kQInRegs = {};\n", cfg.q_in_regs);
  s += fmt::format("constexpr int kSplit = {};\n", cfg.split);
  s += fmt::format("constexpr bool kDropout = {};\n", spec.dropout);
  s += fmt::format("constexpr bool kDeterministic = {};\n", spec.deterministic);
  s += fmt::format("constexpr bool kDbias = {};\n", spec.dbias);
  s += fmt::format("constexpr bool kCausal = {};\n", spec.mask != MaskKind::none);
  s += fmt::format("constexpr bool kBottomRight = {};\n", spec.mask == MaskKind::causal_bottom_right);
  s += fmt::format("constexpr bool kWindow = {};\n", spec.window);
  s += fmt::format("constexpr bool kPacked = {};\n", spec.varlen == VarlenKind::packed);
  s += fmt::format("constexpr bool kPadded = {};\n", spec.varlen == VarlenKind::padded);
  s += fmt::format("constexpr bool kLse = {};\n", spec.lse);
  s += fmt::format("constexpr bool kRawScores = {};\n", raw);
  s += fmt::format("constexpr bool kBiasTiled = {};\n", spec.bias && spec.bias_tiled);
  // Bias tile rows padded like the K/V rows (odd number of 16-byte chunks).
  s += fmt::format("constexpr int kBiasStride = {};\n",
                   (cfg.block_n / 8) % 2 == 0 ? cfg.block_n + 8 : cfg.block_n);
  s += fmt::format("// exp2 argument scale: softmax scale * log2(e) on raw scores, 1 after modifiers\n");
  s += fmt::format("constexpr float kExpScale = {};\n",
                   raw ? float_literal(spec.scale * kLog2e) : std::string("1.0f"));
  s += "}  // namespace cfg\n\n";
  s += "// Score modifiers composed for this spec (applied to raw Q.K scores, result in log2 units).\n";
  s += detail::gpu_score_mod_struct(mod, backward);
  s += "}  // namespace jitattn_kernel\n\n";
  if (backward) s += require_template("attn_bwd_common.cuh");
  s += require_template(backward ? "attn_bwd_sm80.cuh" : "attn_fwd_sm80.cuh");
  return out;
}

namespace {

uint64_t hash_templates(std::initializer_list<std::string_view> names) {
  uint64_t h = 1469598103934665603ull;
  for (std::string_view name : names) {
    for (unsigned char c : require_template(name)) {
      h ^= c;
      h *= 1099511628211ull;
    }
  }
  return h;
}

}  // namespace

uint64_t template_hash() {
  return hash_templates({"common.cuh", "attn_params.h", "philox.h", "attn_fwd_sm80.cuh", "attn_bwd_sm80.cuh",
                         "attn_bwd_common.cuh", "common_sm90.cuh", "attn_params_sm90.h", "attn_fwd_sm90.cuh",
                         "attn_fwd_sm90_wide.cuh", "attn_bwd_sm90.cuh", "bwd_order.h"});
}

uint64_t cpu_template_hash() {
  return hash_templates({"common_cpu.h", "attn_params.h", "philox.h", "attn_fwd_cpu.h", "attn_bwd_cpu.h"});
}

}  // namespace jitattn
