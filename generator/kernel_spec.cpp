#include "generator/kernel_spec.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <initializer_list>

#include "jitattn/error.h"

namespace jitattn {
namespace {

std::string_view mask_name(MaskKind m) {
  switch (m) {
    case MaskKind::none: return "none";
    case MaskKind::causal: return "causal";
    case MaskKind::causal_bottom_right: return "causal_br";
  }
  return "?";
}

std::string_view varlen_name(VarlenKind v) {
  switch (v) {
    case VarlenKind::none: return "none";
    case VarlenKind::packed: return "packed";
    case VarlenKind::padded: return "padded";
  }
  return "?";
}

uint32_t float_bits(float f) { return std::bit_cast<uint32_t>(f); }

// Same layout rule as the template's padded_stride(): rows hold an odd number of 16-byte chunks.
int padded_stride(int dim) { return ((dim / 8) % 2 == 0) ? dim + 8 : dim; }

}  // namespace

std::string KernelSpec::canonical() const {
  // The GPU forward text is unchanged since the first cache schema: stored keys stay valid.
  const std::string target_text = target.cpu ? std::string("cpu") : fmt::format("sm{}", target.sm);
  const int bias_kind = !bias ? 0 : (bias_tiled && !target.cpu ? 2 : 1);
  const std::string common = fmt::format(
      "{} {} d{} dv{} mask={} window={} varlen={} bias={} alibi={} scale=0x{:08x} "
      "softcap=0x{:08x}",
      target_text, dtype_name(dtype), head_dim, head_dim_v, mask_name(mask), int(window),
      varlen_name(varlen), bias_kind, int(alibi), float_bits(scale), float_bits(softcap));
  if (pass == Pass::backward) {
    return fmt::format("bwd {} dropout={} det={} dbias={}", common, int(dropout),
                       int(deterministic), int(dbias));
  }
  // Forward specs without dropout keep the text they had before dropout existed (cache keys).
  return fmt::format("fwd {} lse={}{}", common, int(lse), dropout ? " dropout=1" : "");
}

uint64_t KernelSpec::hash() const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  for (unsigned char c : canonical()) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string KernelSpec::tag() const {
  std::string s = fmt::format("{}_d{}", dtype_name(dtype), head_dim);
  if (head_dim_v != head_dim) s += fmt::format("_dv{}", head_dim_v);
  if (mask != MaskKind::none) s += fmt::format("_{}", mask_name(mask));
  if (window) s += "_window";
  if (varlen != VarlenKind::none) s += fmt::format("_{}", varlen_name(varlen));
  if (bias) s += bias_tiled && !target.cpu ? "_biastile" : "_bias";
  if (alibi) s += "_alibi";
  if (softcap > 0.0f) s += "_softcap";
  if (lse && pass == Pass::forward) s += "_lse";
  if (dropout) s += "_dropout";
  if (deterministic) s += "_det";
  if (dbias) s += "_dbias";
  return s;
}

std::string TileConfig::canonical() const {
  if (cpu() && !q_in_regs) return fmt::format("cpu_bm{}_bn{}", block_m, block_n);
  return fmt::format("bm{}_bn{}_w{}_s{}{}{}", block_m, block_n, warps, stages,
                     q_in_regs ? "_qr" : "", split > 1 ? fmt::format("_x{}", split) : "");
}

int cpu_scratch_bytes(const KernelSpec& spec, const TileConfig& cfg) {
  const long long d = spec.head_dim, dv = spec.head_dim_v, m = cfg.block_m, n = cfg.block_n;
  if (spec.pass == Pass::backward) {
    // templates/attn_bwd_cpu.h. dK/dV item: K, V and their gradients, Q and dO both row-major and
    // transposed, S^T and dP^T, LSE and delta. dQ item: Q^T, dO^T and one row-major staging
    // block, K, V, S^T, dP^T, the dQ accumulator, LSE and delta.
    const long long dkdv = 2 * n * (d + dv) + 2 * m * (d + dv) + 2 * n * m + 2 * m;
    const long long dq = m * (d + dv) + m * std::max(d, dv) + n * (d + dv) + 2 * n * m + m * d + 2 * m;
    return static_cast<int>(std::min<long long>(4 * std::max(dkdv, dq), 1ll << 30));
  }
  // Q^T, K block, V block, S^T, O accumulator, then row max / sum / correction (templates/
  // attn_fwd_cpu.h, attn_fwd_item).
  const long long floats = d * m + n * d + n * dv + n * m + m * dv + 3 * m;
  return static_cast<int>(std::min<long long>(4 * floats, 1ll << 30));
}

int shared_memory_bytes(const KernelSpec& spec, const TileConfig& cfg) {
  if (spec.pass == Pass::backward) {
    // dK/dV kernel: K and V of the CTA's keys, `stages` x (Q, dO) query tiles, dS^T (fast mode),
    // LSE and delta per query row. The dQ kernel's (Q, dO rows; K, V ring) is never larger.
    const int rows = padded_stride(spec.head_dim) + padded_stride(spec.head_dim_v);
    int elems = cfg.block_n * rows + cfg.stages * cfg.block_m * rows;
    if (!spec.deterministic) elems += cfg.block_n * padded_stride(cfg.block_m);
    return 2 * elems + 8 * cfg.stages * cfg.block_m;
  }
  const int q = cfg.block_m * padded_stride(spec.head_dim);
  int per_stage = cfg.block_n * (padded_stride(spec.head_dim) + padded_stride(spec.head_dim_v));
  if (spec.bias && spec.bias_tiled) per_stage += cfg.block_m * padded_stride(cfg.block_n);
  return 2 * (q + cfg.stages * per_stage);
}

DeviceLimits limits_for_arch(int sm) {
  DeviceLimits l;
  l.sm = sm;
  // Opt-in dynamic shared memory per block (CUDA programming guide, compute capabilities).
  if (sm >= 90) {
    l.max_shared_per_block = 232448;
  } else if (sm == 80 || sm == 87) {
    l.max_shared_per_block = 166912;
  } else {
    l.max_shared_per_block = 101376;  // sm_86, sm_89
  }
  return l;
}

DeviceLimits limits_for_cpu() {
  DeviceLimits l;
  l.cpu = true;
  l.sm = 0;
  l.max_shared_per_block = 0;
  l.max_threads_per_block = 0;
  return l;
}

namespace {

bool is_in(int v, std::initializer_list<int> menu) {
  return std::find(menu.begin(), menu.end(), v) != menu.end();
}

// The CPU kernel (templates/attn_fwd_cpu.h): query rows are the vector lanes of S^T, so block_m
// is a power of 2 (a whole number of vectors, or one narrower vector below the host's width);
// block_n is a power of 2 of at least 16, a multiple of every micro-kernel's key step.
std::optional<std::string> why_illegal_cpu(const KernelSpec& spec, const TileConfig& cfg) {
  if (cfg.warps != 0 || cfg.stages != 0 || cfg.q_in_regs || cfg.split != 1) {
    return fmt::format("{} is a GPU config: CPU configs have warps 0, stages 0 (cpu_bm<M>_bn<N>)",
                       cfg.canonical());
  }
  if (spec.pass == Pass::backward) {
    // templates/attn_bwd_cpu.h: block_m query rows are the vector lanes of S^T and dP^T (at
    // least 16, a whole AVX-512 vector), block_n keys per dK/dV item and per dQ step.
    if (spec.bias_tiled) return std::string("bias_tiled is a GPU forward layout");
    if (spec.lse) return std::string("lse is a forward flag; backward always reads the LSE");
    if (spec.dbias && !spec.bias) return std::string("dbias needs a bias tensor");
    if (spec.deterministic) {
      return std::string("deterministic is a GPU backward flag: the CPU backward is always deterministic");
    }
    if (!is_in(cfg.block_m, {16, 32, 64})) {
      return fmt::format("block_m {} unsupported by the CPU backward: 16, 32 or 64", cfg.block_m);
    }
    if (!is_in(cfg.block_n, {16, 32, 64, 128})) {
      return fmt::format("block_n {} unsupported by the CPU backward: 16, 32, 64 or 128", cfg.block_n);
    }
  } else if (spec.deterministic || spec.dbias) {
    return std::string("deterministic and dbias are backward flags");
  }
  if (!is_in(cfg.block_m, {4, 8, 16, 32, 64})) {
    return fmt::format("block_m {} unsupported on the CPU: 4, 8, 16, 32 or 64", cfg.block_m);
  }
  if (!is_in(cfg.block_n, {16, 32, 64, 128, 256})) {
    return fmt::format("block_n {} unsupported on the CPU: 16, 32, 64, 128 or 256", cfg.block_n);
  }
  const int scratch = cpu_scratch_bytes(spec, cfg);
  if (scratch > kCpuScratchBudget) {
    return fmt::format("needs {} bytes of scratch per work item, the CPU stack budget is {}",
                       scratch, kCpuScratchBudget);
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> why_illegal(const KernelSpec& spec, const TileConfig& cfg,
                                       const DeviceLimits& limits) {
  auto dim_ok = [](int d) { return d >= 8 && d <= kMaxHeadDim && d % 8 == 0; };
  if (!dim_ok(spec.head_dim)) {
    return fmt::format("head_dim {} unsupported: multiples of 8 from 8 to {}", spec.head_dim,
                       kMaxHeadDim);
  }
  if (!dim_ok(spec.head_dim_v)) {
    return fmt::format("head_dim_v {} unsupported: multiples of 8 from 8 to {}", spec.head_dim_v,
                       kMaxHeadDim);
  }
  if (spec.target.cpu != limits.cpu) {
    return spec.target.cpu
               ? std::string("spec targets the CPU but the device limits are a GPU's")
               : fmt::format("spec targets sm_{} but the device limits are the CPU's", spec.target.sm);
  }
  if (spec.target.cpu) return why_illegal_cpu(spec, cfg);
  if (spec.target.sm < 80) return fmt::format("sm_{} unsupported: mma.sync family needs sm_80+", spec.target.sm);
  if (spec.dtype == DType::f32) return std::string("dtype f32 unsupported on the GPU: f16 or bf16");
  if (cfg.warps != 2 && cfg.warps != 4 && cfg.warps != 8) {
    return fmt::format("warps {} unsupported: 2, 4 or 8", cfg.warps);
  }
  if (spec.pass == Pass::backward) {
    if (spec.bias_tiled) return std::string("bias_tiled is a forward layout; backward reads bias per element");
    if (spec.lse) return std::string("lse is a forward flag; backward always reads the LSE");
    if (cfg.block_n != cfg.warps * 16) {
      return fmt::format("block_n {} must be 16 keys per warp ({} for {} warps)", cfg.block_n,
                         cfg.warps * 16, cfg.warps);
    }
    if (cfg.block_m != 16 && cfg.block_m != 32 && cfg.block_m != 64 && cfg.block_m != 128) {
      return fmt::format("block_m {} unsupported: 16, 32, 64 or 128 query rows per step", cfg.block_m);
    }
    if (cfg.stages != 1 && cfg.stages != 2) {
      return fmt::format("stages {} unsupported: 1 or 2 for backward", cfg.stages);
    }
    if (cfg.q_in_regs) return std::string("q_in_regs is a forward option");
    if (cfg.split != 1 && cfg.split != 2 && cfg.split != 4) {
      return fmt::format("split {} unsupported: 1, 2 or 4 column slices", cfg.split);
    }
    if (spec.dbias && !spec.bias) return std::string("dbias needs a bias tensor");
  } else {
    if (cfg.split != 1) return fmt::format("split {} is a backward option", cfg.split);
    if (spec.deterministic || spec.dbias) return std::string("deterministic and dbias are backward flags");
  }
  if (spec.pass == Pass::forward && (cfg.block_m % cfg.warps != 0 ||
      (cfg.block_m / cfg.warps != 16 && cfg.block_m / cfg.warps != 32))) {
    return fmt::format("block_m {} / warps {} must be 16 or 32 rows per warp (m16 MMA tiles)",
                       cfg.block_m, cfg.warps);
  }
  if (spec.pass == Pass::forward && cfg.block_n != 16 && cfg.block_n != 32 && cfg.block_n != 64 &&
      cfg.block_n != 128) {
    return fmt::format("block_n {} unsupported: 16, 32, 64 or 128 (P V steps over 16 keys)",
                       cfg.block_n);
  }
  if (spec.pass == Pass::forward && (cfg.stages < 1 || cfg.stages > 4)) {
    return fmt::format("stages {} unsupported: 1 (single buffer) to 4", cfg.stages);
  }
  if (cfg.q_in_regs && spec.head_dim > 128) {
    return fmt::format("q_in_regs with head_dim {} > 128 needs more than 32 registers of Q per "
                       "m-tile beside the O accumulators", spec.head_dim);
  }
  const int threads = cfg.warps * 32;
  if (threads > limits.max_threads_per_block) {
    return fmt::format("{} threads exceed the device's {}", threads, limits.max_threads_per_block);
  }
  const int smem = shared_memory_bytes(spec, cfg);
  if (smem > limits.max_shared_per_block) {
    return fmt::format("needs {} bytes of shared memory, device allows {} per block", smem,
                       limits.max_shared_per_block);
  }
  return std::nullopt;
}

namespace {

TileConfig default_config_cpu(const KernelSpec& spec) {
  // Measured on the 2-core AVX-512 machine (bench/NOTES.md, "CPU backend"; fp32, seqlen 2048,
  // 8 heads, GFLOP/s per busy core): block_m 64 beats 32 at every head dim (d64 183 vs 164,
  // d128 200 vs 166, d256 149-161 vs 135-150; d32 157 vs 133 at seqlen 1024): each K/V element
  // converted into the block serves twice the rows. block_n 64 is best up to d128 (by 2-8%);
  // above, 16/32/64 are within noise of each other (d256 at seqlen 1024: 174 / 172 / 174) and 32
  // halves the K/V blocks' scratch.
  const int d = std::max(spec.head_dim, spec.head_dim_v);
  // Backward: 64 x 64 up to head dim 128; above, the scratch shrinks it (block_n first).
  TileConfig c = cpu_config(64, d <= 128 || spec.pass == Pass::backward ? 64 : 32);
  // Shrink until the scratch fits (it always does at these sizes; kept for other budgets):
  // block_n first (it only sets how many keys share one softmax step), then block_m.
  while (why_illegal_cpu(spec, c)) {
    if (c.block_n > 16) {
      c.block_n /= 2;
    } else if (c.block_m > (spec.pass == Pass::backward ? 16 : 4)) {
      c.block_m /= 2;
    } else {
      break;
    }
  }
  return c;
}

// Backward: the dK and dV accumulators of a warp's 16 keys hold (d + dv) / 2 / split floats per
// thread, and S^T and dP^T block_m / 2 each. Defaults keep that sum near the forward's densest
// (144) so ptxas needs no spills (tests/compile_grid_test.cpp, NVRTC 13.0).
TileConfig default_backward_config(const KernelSpec& spec, const DeviceLimits& limits) {
  const int d = std::max(spec.head_dim, spec.head_dim_v);
  // Every modifier, mask window, varlen and dropout adds live registers beside S^T and dP^T:
  // those specs step 32 query rows (NVRTC 13.0 spill reports at block_m 64).
  const bool light = !spec.window && !spec.alibi && spec.softcap == 0.0f && !spec.dropout &&
                     spec.varlen == VarlenKind::none && !spec.bias;
  // 8 warps (128 keys per CTA) up to head dim 128: each query tile in shared memory serves twice
  // the keys, and dQ takes half the fp32 atomics of 64-key blocks. Above, K and V of 128 keys
  // would not leave room for the query tiles on sm_80: 4 warps.
  TileConfig c{32, 128, 8, 2, false, 1};
  // H200, d64 causal, seqlen 1024, bf16 backward: bm64_bn128_w8_s2 0.076 ms vs bm32 0.085 ms
  // (jitattn tune --backward, bench/NOTES.md).
  if (d <= 64 && light) c.block_m = 64;
  if (d > 64) c.split = 2;
  if (d > 128) c = {light ? 32 : 16, 64, 4, 2, false, 4};
  while (why_illegal(spec, c, limits)) {
    if (c.stages > 1) {
      --c.stages;
    } else if (c.block_m > 16) {
      c.block_m /= 2;
    } else {
      break;
    }
  }
  return c;
}

}  // namespace

TileConfig default_config(const KernelSpec& spec, const DeviceLimits& limits) {
  if (spec.target.cpu) return default_config_cpu(spec);
  if (spec.pass == Pass::backward) return default_backward_config(spec, limits);
  // Register budget per thread decides (255 max, no spills; measured with NVRTC 13.0, see
  // bench/NOTES.md): the O accumulator holds rows_per_warp * head_dim_v / 32 floats and S
  // rows_per_warp * block_n / 32. 32 rows per warp (fewer K/V shared-memory reads per FLOP) fits
  // up to head dim 64; beyond, 16 rows per warp. A bias tensor adds one hoisted global load per
  // S element, so its S tile is smaller: block_n 32, and 16 on sm_80 above head dim 128, where
  // ptxas keeps more live than on sm_90.
  const int d = std::max(spec.head_dim, spec.head_dim_v);
  // Only a mask on top of plain attention counts as light: LSE, window, ALiBi, softcap and
  // varlen each add live registers (NVRTC 13.0 spill reports, tests/compile_grid_test.cpp).
  const bool light = !spec.window && !spec.alibi && spec.softcap == 0.0f && !spec.lse &&
                     spec.varlen == VarlenKind::none && !spec.bias;
  TileConfig c;
  if (spec.dropout) {
    // The Philox keep bits add live registers beside each S tile: 16 rows per warp, and block_n
    // 32 above head dim 128 or with a per-element bias (NVRTC 13.0 spill reports).
    c = {128, d <= 128 && !(spec.bias && !spec.bias_tiled) ? 64 : 32, 8, 2, false};
  } else if (spec.bias && !spec.bias_tiled) {
    c = {128, (limits.sm < 90 && d > 128) ? 16 : 32, 8, 2, false};
  } else if (spec.bias) {
    // A staged bias tile keeps 16 rows per warp: with 32 (d64) it spills once LSE is on.
    c = {128, d <= 192 ? 64 : 32, 8, 2, false};
  } else if (d <= 64) {
    c = {128, 64, 4, 3, false};  // H200: 307 TFLOP/s at d64 (FA2 299)
  } else if (d <= 80 && light) {
    c = {128, 64, 4, 2, false};  // H200: 293 at d80 (FA2 261); spills with modifiers
  } else if (d <= 112) {
    c = {128, 32, 4, 2, false};  // H200 d96: 284 (causal 261); 32 rows per warp fit with block_n 32
  } else if (d <= 128) {
    c = {128, 128, 8, 2, false};  // H200 d128: 275; 32 rows per warp spill here even at block_n 32
  } else if (d <= 192) {
    c = {128, 64, 8, 2, false};
  } else {
    // d256: 270 TFLOP/s; block_n 32 keeps masks and modifiers unspilled (d248 causal spills at 64)
    c = {128, light && spec.mask == MaskKind::none ? 64 : 32, 8, 2, false};
  }
  // Shrink until it fits the device: stages first, then block_n, then block_m.
  while (why_illegal(spec, c, limits)) {
    if (c.stages > 2) {
      --c.stages;
    } else if (c.block_n > 16) {
      c.block_n /= 2;
    } else if (c.block_m > 64) {
      c.block_m /= 2;
      c.warps = std::max(2, c.warps / 2);
    } else {
      break;
    }
  }
  return c;
}

}  // namespace jitattn
