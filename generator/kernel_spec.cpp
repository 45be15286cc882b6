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
  if (hopper()) {
    return fmt::format("h_bm{}_bn{}_wg{}_s{}{}{}{}{}{}{}", block_m, block_n, consumer_warpgroups(), stages,
                       q_in_regs ? "_qr" : "", overlap ? "_ov" : "", pingpong ? "_pp" : "",
                       poly_exp ? "_pe" : "", persistent ? "_ps" : "", split > 1 ? fmt::format("_x{}", split) : "");
  }
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

Sm90Layout sm90_layout(const KernelSpec& spec) {
  Sm90Layout l;
  auto pad16 = [](int d) { return (d + 15) / 16 * 16; };
  l.head_dim_pad = pad16(spec.head_dim);
  l.head_dim_v_pad = pad16(spec.head_dim_v);
  l.swizzle_qk = sm90_swizzle(l.head_dim_pad);
  l.swizzle_v = sm90_swizzle(l.head_dim_v_pad);
  return l;
}

Sm90Layout sm90_layout(const KernelSpec& spec, const TileConfig& cfg) {
  Sm90Layout l = sm90_layout(spec);
  if (cfg.hopper() && cfg.split > 1 && spec.pass == Pass::backward) {
    // Each consumer owns half of dK's, dV's and dQ's columns: halves of whole 32-column panels
    // (dQ's fp32 reduce-add boxes are 32 columns wide).
    auto half64 = [](int d) { return (d + 63) / 64 * 32; };
    l.head_dim_pad = 2 * half64(spec.head_dim);
    l.head_dim_v_pad = 2 * half64(spec.head_dim_v);
    l.swizzle_qk = sm90_swizzle(half64(spec.head_dim));
    l.swizzle_v = sm90_swizzle(half64(spec.head_dim_v));
  } else if (cfg.hopper() && cfg.split > 1) {
    // Each consumer owns half of O's columns: halves of whole k16-wide panels.
    const int half = (spec.head_dim_v + 31) / 32 * 16;
    l.head_dim_v_pad = 2 * half;
    l.swizzle_v = sm90_swizzle(half);
  }
  return l;
}

namespace {
// Same rule as templates/attn_fwd_sm90.cuh: each panel of `rows` rows of `swizzle` bytes starts on
// a 1 KiB boundary (the period of the widest swizzle pattern).
int sm90_panel_bytes(int rows, int swizzle) { return (rows * swizzle + 1023) / 1024 * 1024; }
}  // namespace

namespace {
// The score modifiers' share of the Hopper backward's register model (why_illegal's comment).
// Dropout's 36: the keep bits drawn per block (Philox, one call per lane and n8 group) and applied
// to P^T and dP^T; NVRTC 13.0 spilled 4-12 bytes at d96-112, none up to d80 (compile grid).
int sm90_bwd_modifier_registers(const KernelSpec& spec) {
  return 56 * int(spec.softcap > 0.0f) + 24 * int(spec.alibi) + 8 * int(spec.bias) + 36 * int(spec.dropout) +
         (spec.dbias ? 8 + 4 * int(spec.mask != MaskKind::none) : 0) + 4 * int(spec.window) +
         4 * int(spec.varlen != VarlenKind::none);
}

// The default's shape (two consumers, block_m 64, up to two stages, no _pp): where the register
// model's margins below are measured not to be needed.
bool sm90_bwd_default_shape(const TileConfig& cfg) {
  return cfg.consumer_warpgroups() == 2 && cfg.block_m == 64 && cfg.stages <= 2 && !cfg.pingpong;
}

// Deterministic mode: the consumers also wait for their writer warp to hand the dQ tile back.
// NVRTC 13.0 spilled 4 bytes at d128 causal with one consumer and with _pp; the default's shape
// compiled clean throughout the grid.
int sm90_bwd_det_registers(const KernelSpec& spec, const TileConfig& cfg) {
  return spec.deterministic && !sm90_bwd_default_shape(cfg) ? 4 : 0;
}
}  // namespace

int sm90_bwd_registers(const KernelSpec& spec, const TileConfig& cfg) {
  const Sm90Layout l = sm90_layout(spec, cfg);
  const Sm90BwdDq dq = sm90_bwd_dq(spec, cfg);
  const int acc = (l.head_dim_pad / 2 + l.head_dim_v_pad / 2) / cfg.split;
  const int s_cols = cfg.block_m / cfg.split;  // _x2: each consumer's S^T has half the query columns
  const int mods = sm90_bwd_modifier_registers(spec);
  if (cfg.split > 1) {
    // _x2: the modifiers' state lives beside S^T and dP^T only; the dQ half after them, once P^T
    // and dS^T are in shared memory.
    return acc + std::max(s_cols + s_cols / 4 + mods, dq.n / dq.passes / 2) + sm90_bwd_det_registers(spec, cfg);
  }
  const int tiles = std::max(s_cols + s_cols / 4, dq.m_tiles * dq.n / 2);
  return acc + tiles + mods + sm90_bwd_det_registers(spec, cfg);
}

bool sm90_bwd_lse_ahead(const KernelSpec& spec, const TileConfig& cfg) {
  if (cfg.split > 1) {
    // _x2 with both head dims padded to 256 (dK + dV: 128 registers): beside anything but the
    // top-left causal mask the LSE read ahead spilled 4-20 bytes (ALiBi, a bias with a window,
    // bottom-right alignment, varlen beside a mask; NVRTC 13.0, the H200's too); without it they
    // compile clean. Below, every modifier set compiled clean with it.
    const Sm90Layout l = sm90_layout(spec, cfg);
    return l.head_dim_pad + l.head_dim_v_pad < 512 ||
           (sm90_bwd_modifier_registers(spec) == 0 && spec.mask != MaskKind::causal_bottom_right);
  }
  return sm90_bwd_registers(spec, cfg) + cfg.block_m / 4 <= kSm90BwdRegisterBudget;
}

// The dQ accumulators beside P^T's fragments (dQ + block_m / 4 per thread) never exceed the
// S^T phase's block_m + block_m / 4 (dQ is at most block_m: n <= 128 columns per 64-row tile), so
// the model's own bound covers the early order. Beside a mask the order costs more (NVRTC 13.0
// spilled 4-8 bytes at d120/d128 with three stages or _pp, 8-44 at d48 with block_m 128): 12
// registers more, except in the default's shape (two consumers, block_m 64, two stages, no _pp),
// which the compile grid's 265 Hopper-backward variants compile clean in since the CTA's
// coordinates stopped living across the block loop. Not with alternating dQ consumers (d64-d96):
// the stage is freed only once the late dV is done, after the whole block's dQ, and the other
// consumer, running ahead, waits for its reload (H200: fwd+bwd 17% slower at d64 and d96).
bool sm90_bwd_dq_early(const KernelSpec& spec, const TileConfig& cfg) {
  // _x2 has its own order (dQ, then dV and dK from shared memory).
  if (cfg.split > 1 || sm90_bwd_dq(spec, cfg).alternate) return false;
  const int mask = spec.mask != MaskKind::none && !sm90_bwd_default_shape(cfg) ? 12 : 0;
  // Deterministic mode: the consumer waits for its writer warp with the dQ product live; beside
  // the late dV it spilled 12 bytes at d128 without a mask on the H200's NVRTC 13.0 (with a
  // causal mask, a window or varlen the same call compiled clean: 4.5% faster at d128 causal).
  const int det = spec.deterministic && spec.mask == MaskKind::none ? 12 : 0;
  return sm90_bwd_registers(spec, cfg) + mask + det <= kSm90BwdRegisterBudget;
}

// One P^T loop tested each element's mask behind `need_mask &&`: a branch around each test, which
// kept the exponentials from overlapping (H200, d64 causal: a block's P^T took about 1000 clocks
// more than without a mask; backward 290 -> 355 TFLOP/s with the split). Without a causal mask or
// window the tests are only the sequence's ends and compile to predicated selects, so one loop
// stays. The mask's copy evaluates every test unconditionally, which costs registers: NVRTC 13.0
// spilled 4-120 bytes beside dBias or a bias tensor with a mask (d8-112), in deterministic mode at
// padded head dim 128 (the model's 208), and at block_m 128 (d32, 44 bytes); those keep one loop.
bool sm90_bwd_mask_split(const KernelSpec& spec, const TileConfig& cfg) {
  if (spec.mask == MaskKind::none && !spec.window) return false;
  if (spec.dbias || spec.bias || cfg.block_m != 64) return false;
  return !spec.deterministic || sm90_bwd_registers(spec, cfg) < kSm90BwdRegisterBudget;
}

// The dQ writer warps (producer warps 2 and 3) issue the reduce-adds in fast mode too: the consumer
// then waits for its dQ tile's last read just before its next stores, where without them the
// issuing consumer thread waited before the dS^T barrier and held both consumers there (a clock
// trace on the H200 read 300-480 clocks per block at d128). H200, backward: d128 473 -> 487-491
// TFLOP/s, d96 434-460 -> 476-483, d64 causal 356 -> 363. Beside the mask's own P^T loop at the
// model's budget (padded head dim 128 with a mask) NVRTC 13.0 spilled 4 bytes: there the split
// loop is worth more (d128 causal +12-16% against +3-6%), so the consumers issue their own; as
// they do in shapes other than the default's (measured there only; _pp at block_m 128 spilled 4).
bool sm90_bwd_dq_writer(const KernelSpec& spec, const TileConfig& cfg) {
  if (spec.deterministic || cfg.split > 1) return true;
  return sm90_bwd_default_shape(cfg) &&
         !(sm90_bwd_mask_split(spec, cfg) && sm90_bwd_registers(spec, cfg) >= kSm90BwdRegisterBudget);
}

// Lazy rescaling (as FlashAttention 4 does on Blackwell): a row's running max moves only when a
// tile's max exceeds it by more than 2^8 in the exp2 domain, so after the first tiles O is almost
// never rescaled. It pays where O's rescale is a large share of a tile's softmax. H200, forward,
// seqlen 4096, TFLOP/s, every tile rescaled -> lazy, two passes:
// - d256 (128 O registers per thread): none 703-716 -> 735-754, causal 629-666 -> 673-680;
// - the _x2 kernels: d384 533-543 -> 562, d512 none 489-501 -> 517-520, causal 435-436 -> 452-453,
//   d320 541-547 -> 547-552 (causal unchanged).
// Below d256 the warp vote and branch cost more than the multiplies they skip: d64 477 -> 455,
// d128 at 16384 698-706 -> 668-684, d192 688 -> 661-673; those rescale every tile.
bool sm90_fwd_lazy_rescale(const KernelSpec& spec, const TileConfig& cfg) {
  if (!cfg.hopper()) return false;
  return cfg.split > 1 || sm90_layout(spec, cfg).head_dim_v_pad >= 256;
}

// The softmax scale folded into P^T: the LSE the backward reads is offset by log2(scale), so P^T
// comes out as scale * P and dS^T = P^T (dP^T - delta) already carries the scale that dK and dQ
// need (one multiply fewer per score); dV, summed from the scaled P^T, is divided once in the
// epilogue. Not beside softcap (its d(score)/d(Q.K) varies per score) or dBias (dBias is the
// unscaled dS). A scale whose reciprocal is not a normal float keeps the multiply.
// H200, backward, seqlen 4096: d64 causal 369 -> 375, d128 causal 453-460 -> 463-467.
bool sm90_bwd_fold_scale(const KernelSpec& spec, const TileConfig& cfg) {
  // log2(1) = 0 is not a normal float but folds as well as any other finite log2.
  const bool normal = spec.scale > 0.0f && std::isfinite(std::log2(spec.scale)) && std::isnormal(1.0f / spec.scale);
  return normal && spec.softcap == 0.0f && !spec.dbias && cfg.block_m == 64;
}

Sm90BwdDq sm90_bwd_dq(const KernelSpec& spec, const TileConfig& cfg) {
  const Sm90Layout l = sm90_layout(spec, cfg);
  const int consumers = cfg.consumer_warpgroups();
  Sm90BwdDq q;
  q.n = l.head_dim_pad;
  q.m_tiles = std::max(1, cfg.block_m / 64);
  if (cfg.split > 1) {
    // _x2: each consumer its half of the (whole-panel) head-dim columns, over the CTA's 64 keys.
    q.all_keys = q.split_n = true;
    q.n = l.head_dim_pad / 2;
    q.m_tiles = 1;
    // 128 columns in two passes of 64: the whole 64 registers beside dK and dV (128 at d256)
    // spilled 92 bytes (NVRTC 13.0).
    q.passes = q.n > 96 ? 2 : 1;
  } else if (cfg.pingpong) {
    // _pp: the consumers never wait for each other; each adds its own keys' share.
  } else if (consumers == 2 && cfg.block_m == 128) {
    q.all_keys = q.split_m = true;
    q.m_tiles = 1;
  } else if (consumers == 2 && (l.head_dim_pad / 2) % l.panel_cols_qk() == 0) {
    q.all_keys = q.split_n = true;
    q.n = l.head_dim_pad / 2;
  } else if (consumers == 2) {
    q.all_keys = q.alternate = true;  // the whole product, by one consumer per block in turn
  } else if (consumers == 1) {
    q.all_keys = true;  // its own keys are all the CTA's
  }
  return q;
}

int shared_memory_bytes(const KernelSpec& spec, const TileConfig& cfg) {
  if (spec.pass == Pass::backward && cfg.hopper()) {
    // templates/attn_bwd_sm90.cuh: K and V, `stages` x (Q, dO), two dS^T buffers (128-byte
    // swizzled panels of 64 queries), each consumer's fp32 dQ tiles (panels of 64 rows by 32
    // columns), LSE and delta per stage, 1 KiB alignment slack, mbarriers (K/V, then full and
    // empty per stage), with dQ writer warps (deterministic mode, _x2) an mbarrier and a dQ record per
    // consumer (32 bytes);
    // _x2 adds two P^T buffers the size of dS^T's and dO's own full and empty mbarriers per stage.
    const Sm90Layout l = sm90_layout(spec, cfg);
    const int pq = l.head_dim_pad / l.panel_cols_qk(), pv = l.head_dim_v_pad / l.panel_cols_v();
    const int kv = pq * sm90_panel_bytes(cfg.block_n, l.swizzle_qk) + pv * sm90_panel_bytes(cfg.block_n, l.swizzle_v);
    const int qo = pq * sm90_panel_bytes(cfg.block_m, l.swizzle_qk) + pv * sm90_panel_bytes(cfg.block_m, l.swizzle_v);
    const int ds = (cfg.block_m / 64) * sm90_panel_bytes(cfg.block_n, 128);
    const Sm90BwdDq dq = sm90_bwd_dq(spec, cfg);
    const int dq_tiles = cfg.consumer_warpgroups() * dq.m_tiles * ((dq.n + 31) / 32) * 64 * 128;
    return kv + cfg.stages * qo + (cfg.split > 1 ? 4 : 2) * ds + dq_tiles + 8 * cfg.stages * cfg.block_m + 1024 +
           8 * (1 + 2 * cfg.stages) +
           (sm90_bwd_dq_writer(spec, cfg) ? 32 : 0) + (cfg.split > 1 ? 16 * cfg.stages : 0);
  }
  if (spec.pass == Pass::backward) {
    // dK/dV kernel: K and V of the CTA's keys, `stages` x (Q, dO) query tiles, dS^T (fast mode),
    // LSE and delta per query row. The dQ kernel's (Q, dO rows; K, V ring) is never larger.
    const int rows = padded_stride(spec.head_dim) + padded_stride(spec.head_dim_v);
    int elems = cfg.block_n * rows + cfg.stages * cfg.block_m * rows;
    if (!spec.deterministic) elems += cfg.block_n * padded_stride(cfg.block_m);
    return 2 * elems + 8 * cfg.stages * cfg.block_m;
  }
  if (cfg.hopper()) {
    const Sm90Layout l = sm90_layout(spec, cfg);
    const int q = (l.head_dim_pad / l.panel_cols_qk()) * sm90_panel_bytes(cfg.block_m, l.swizzle_qk);
    const int k = (l.head_dim_pad / l.panel_cols_qk()) * sm90_panel_bytes(cfg.block_n, l.swizzle_qk);
    const int v = (l.head_dim_v_pad / l.panel_cols_v()) * sm90_panel_bytes(cfg.block_n, l.swizzle_v);
    // A bias by TMA (the column-split kernel has none): a (block_m, block_n) tile per stage.
    const int sw = sm90_swizzle(cfg.block_n);
    const int bias = sm90_bias_tma(spec) && cfg.split == 1
                         ? (cfg.block_n / (sw / 2)) * sm90_panel_bytes(cfg.block_m, sw)
                         : 0;
    // Column split (templates/attn_fwd_sm90_wide.cuh): + the (block_m, block_n) 16-bit P tile in
    // panels of the widest swizzle its rows allow, + 512 bytes of row maxima / sums exchanged,
    // + a second empty mbarrier per stage (K and V released apart).
    int exchange = 0;
    if (cfg.split > 1) {
      const int swizzle_p = sm90_swizzle(cfg.block_n);
      exchange = (cfg.block_n * 2 / swizzle_p) * sm90_panel_bytes(cfg.block_m, swizzle_p) + 512 + 8 * cfg.stages;
    }
    // + 1 KiB to align the dynamic shared-memory base, + the mbarriers, 8 bytes each: Q full, then
    // full K, full V and empty per stage; outside the column split also a second empty per stage
    // (K and V released apart), Q empty, the tile queue's two full and two empty barriers and its
    // two 4-byte slots (templates/attn_fwd_sm90.cuh).
    const int barriers = 8 * (1 + 3 * cfg.stages) + (cfg.split > 1 ? 0 : 8 * cfg.stages + 8 * 5 + 8);
    return q + cfg.stages * (k + v + bias) + exchange + 1024 + barriers;
  }
  const int q = cfg.block_m * padded_stride(spec.head_dim);
  // Column slices (split) hold V tiles of their slice's columns only.
  const int v_cols = (spec.head_dim_v / 8 + cfg.split - 1) / cfg.split * 8;
  int per_stage = cfg.block_n * (padded_stride(spec.head_dim) + padded_stride(v_cols));
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

// The Hopper-family backward (templates/attn_bwd_sm90.cuh), after the family's target checks.
std::optional<std::string> why_illegal_sm90_backward(const KernelSpec& spec, const TileConfig& cfg,
                                                     const DeviceLimits& limits) {
  if (spec.bias_tiled) return std::string("bias_tiled is a forward layout; backward reads bias per element");
  if (spec.lse) return std::string("lse is a forward flag; backward always reads the LSE");
  if (cfg.q_in_regs || cfg.overlap || cfg.poly_exp || cfg.persistent) {
    return std::string("_qr, _ov, _pe and _ps are not options of the sm90 backward");
  }
  const int consumers = cfg.consumer_warpgroups();
  if (cfg.split != 1 &&
      (cfg.split != 2 || consumers != 2 || cfg.block_m != 64 || cfg.block_n != 64 || cfg.pingpong)) {
    return fmt::format("{}: the sm90 backward's column split is h_bm64_bn64_wg2_s<stages>_x2 (two consumer "
                       "warpgroups sharing 64 keys and 64 query rows, each half of the head dims' columns)",
                       cfg.canonical());
  }
  if (cfg.pingpong && consumers != 2) {
    return std::string("_pp (independent consumer warpgroups) needs 2 consumer warpgroups");
  }
  if (cfg.warps % 4 != 0 || consumers < 1 || consumers > 2) {
    return fmt::format("warps {} unsupported by the sm90 backward: 4 * (1 producer + 1 or 2 consumer warpgroups)",
                       cfg.warps);
  }
  if (cfg.split == 1 && cfg.block_n != 64 * consumers) {
    return fmt::format("block_n {} must be 64 keys per consumer warpgroup ({} warpgroups)", cfg.block_n, consumers);
  }
  if (cfg.block_m != 64 && cfg.block_m != 128) {
    return fmt::format("block_m {} unsupported by the sm90 backward: 64 or 128 query rows per step", cfg.block_m);
  }
  if (cfg.stages < 1 || cfg.stages > 4) return fmt::format("stages {} unsupported: 1 to 4 (Q/dO TMA ring)", cfg.stages);
  // Consumer registers under setmaxnreg 240: dK and dV (d/2 + dv/2 per thread) live throughout,
  // with S^T and dP^T (block_m/2 each) and their packed copies (block_m/4 each), then the dQ
  // tiles; the score modifiers add their state and math (softcap keeps the raw scores, its tanh
  // and dP^T live at once). Fitted to NVRTC 13.0's spill reports over the compile grid
  // (tests/compile_grid_test.cpp): 208 is the most that compiled without spills throughout (d128
  // plain, causal, and causal bottom-right with a window and packed varlen sit on it; d120 with
  // ALiBi, d88 with softcap and d64 at block_m 128 spilled). dBias (the workspace row pointer,
  // stride and bounds at the dS^T loop) counts 8 more (the H200's NVRTC 13.0 spilled 24 bytes at
  // d112 f16 with padded varlen and GQA, which this machine's compiled clean), 4 more beside a
  // mask (8 bytes spilled there at d112 once dQ went through shared memory), and refuses one
  // consumer with block_m 128 (it spilled 32). Head dims above 128 never fit beside both
  // accumulators in that shape.
  // Above 128 the consumers split the head dims' columns (_x2: half of dK and dV each), up to 256
  // (half of d256's dK and dV: 64 + 64 registers, dQ's half 64 more once S^T and dP^T are in
  // shared memory).
  const Sm90Layout l = sm90_layout(spec, cfg);
  if (cfg.split == 1 && (l.head_dim_pad > 128 || l.head_dim_v_pad > 128)) {
    return fmt::format("head dims {}/{} above 128: dK and dV of 64 keys would not fit beside S^T and dP^T in "
                       "registers (h_bm64_bn64_wg2_s<stages>_x2 splits their columns between the consumers)",
                       spec.head_dim, spec.head_dim_v);
  }
  if (l.head_dim_pad > 256 || l.head_dim_v_pad > 256) {
    return fmt::format("head dims {}/{} above 256: half of dK and dV would not fit beside S^T and dP^T in "
                       "registers (the mma.sync backward's column slices take them)", spec.head_dim, spec.head_dim_v);
  }
  if (cfg.split > 1 && l.head_dim_pad + l.head_dim_v_pad == 512 && (spec.dropout || (spec.dbias && spec.mask != MaskKind::none))) {
    // Measured, not modelled: NVRTC 13.0 spilled 16-96 bytes with dropout and 8-28 with dBias
    // beside a causal mask at head dims 200-256, where dK and dV take 128 registers.
    return fmt::format("{} beside dK and dV of head dims {}/{} (128 registers) spills under _x2 (the mma.sync "
                       "backward takes it)", spec.dropout ? "dropout" : "dBias with a causal mask", spec.head_dim,
                       spec.head_dim_v);
  }
  if (spec.dbias && consumers == 1 && cfg.block_m == 128) {
    return std::string("dBias with one consumer warpgroup and block_m 128 spills registers (32 bytes measured)");
  }
  const int regs = sm90_bwd_registers(spec, cfg);
  if (regs > kSm90BwdRegisterBudget) {
    const int acc = (l.head_dim_pad / 2 + l.head_dim_v_pad / 2) / cfg.split;
    const int mods = sm90_bwd_modifier_registers(spec);
    const int det = sm90_bwd_det_registers(spec, cfg);
    const int tiles = regs - acc - mods - det;
    return fmt::format("~{} registers per consumer thread (dK + dV {}, S^T + dP^T and their fragments or dQ {}, "
                       "modifiers {}{}) exceed the {} of this model that compile without spills under setmaxnreg 240",
                       regs, acc, tiles, mods, det ? fmt::format(", deterministic mode's dQ hand-over {}", det) : "",
                       kSm90BwdRegisterBudget);
  }
  if (cfg.warps * 32 > limits.max_threads_per_block) {
    return fmt::format("{} threads exceed the device's {}", cfg.warps * 32, limits.max_threads_per_block);
  }
  const int smem = shared_memory_bytes(spec, cfg);
  if (smem > limits.max_shared_per_block) {
    return fmt::format("needs {} bytes of shared memory, device allows {} per block", smem,
                       limits.max_shared_per_block);
  }
  return std::nullopt;
}

// The Hopper family (templates/attn_fwd_sm90.cuh).
std::optional<std::string> why_illegal_sm90(const KernelSpec& spec, const TileConfig& cfg,
                                            const DeviceLimits& limits) {
  // wgmma and setmaxnreg exist on sm_90a only (not on later archs' plain targets).
  if (spec.target.sm != 90 || limits.sm != 90) {
    return fmt::format("the sm90 family needs an sm_90 device (wgmma, sm_90a); spec targets sm_{}",
                       spec.target.sm);
  }
  if (spec.dtype == DType::f32) return std::string("dtype f32 unsupported on the GPU: f16 or bf16");
  if (spec.pass == Pass::backward) return why_illegal_sm90_backward(spec, cfg, limits);
  const int consumers = cfg.consumer_warpgroups();
  if (spec.dropout && cfg.split != 1) {
    return std::string("the column-split kernel (_x2) has no dropout (the mma.sync family does)");
  }
  if (cfg.warps % 4 != 0 || consumers < 1 || consumers > 3) {
    return fmt::format("warps {} unsupported: 4 * (1 producer + 1..3 consumer warpgroups)", cfg.warps);
  }
  if (cfg.split != 1) {
    // templates/attn_fwd_sm90_wide.cuh: the two consumers share one query block.
    if (cfg.split != 2 || consumers != 2) {
      return fmt::format("split {} with {} consumer warpgroups unsupported: _x2 needs 2 consumers "
                         "(each owns half of O's columns)", cfg.split, consumers);
    }
    if (cfg.overlap || cfg.pingpong || cfg.poly_exp || cfg.persistent) {
      return std::string("the column-split kernel (_x2) runs the serial schedule, one tile per CTA: no _ov, "
                         "_pp, _pe or _ps");
    }
    if (spec.head_dim_v <= 128) {
      return fmt::format("head_dim_v {} fits one warpgroup's O accumulator: split (_x2) is for "
                         "head_dim_v above 128", spec.head_dim_v);
    }
  }
  if (cfg.block_m != 64 * consumers / cfg.split) {
    return cfg.split > 1 ? fmt::format("block_m {} must be 64: both consumers of _x2 share 64 query rows",
                                       cfg.block_m)
                         : fmt::format("block_m {} must be 64 per consumer warpgroup ({} warpgroups)",
                                       cfg.block_m, consumers);
  }
  if (cfg.block_n < 16 || cfg.block_n > 256 || cfg.block_n % 16 != 0) {
    return fmt::format("block_n {} unsupported: a multiple of 16 up to 256 (wgmma N and k16 steps of P V)",
                       cfg.block_n);
  }
  if (cfg.stages < 1 || cfg.stages > 4) {
    return fmt::format("stages {} unsupported: 1 to 4 (K/V TMA ring)", cfg.stages);
  }
  if (cfg.q_in_regs) return std::string("q_in_regs is an sm80-family option (wgmma reads Q from shared memory)");
  if (cfg.persistent && sm90_bias_tma(spec)) {
    // Measured (NVRTC 13.0, H200 run): the tile loop beside a bias tile's reads spills 8-16 bytes
    // in every schedule with LSE and varlen or a window.
    return std::string("persistent (_ps) with a bias tile by TMA spills registers: one tile per CTA there");
  }
  if (cfg.pingpong && (!cfg.overlap || consumers != 2)) {
    return std::string("ping-pong (_pp) needs overlap (_ov) and 2 consumer warpgroups (one issue point "
                       "per tile, two warpgroups taking turns)");
  }
  if (cfg.overlap && cfg.stages < 2) {
    // The next tile's K is waited on while the current tile's stage is still held for P V.
    return std::string("overlap (_ov) needs 2+ stages: tile j+1's K loads while tile j's V is in use");
  }
  // Consumer registers (setmaxnreg 240 with 1-2 consumer warpgroups, 160 with 3): O accumulator
  // dv/2, S block_n/2 and P block_n/4 per thread, plus ~40 for addresses, softmax state and the
  // score modifiers.
  // With split 2 each consumer holds half of O's columns and of S's, and P goes through shared
  // memory.
  const Sm90Layout l = sm90_layout(spec, cfg);
  const int o_regs = l.head_dim_v_pad / cfg.split / 2;
  // Dropout's keep bits and one Philox call's state: 16 more.
  const int regs = o_regs + (cfg.split > 1 ? cfg.block_n / 4 : cfg.block_n / 2 + cfg.block_n / 4) +
                   (spec.dropout ? 16 : 0);
  // Three consumers at block_n 128 (FA3's d64 tile, O + S + P = 128) compiled without spills
  // (NVRTC 13.0) plain, causal, with LSE, varlen or ALiBi; a window spilled 68-92 bytes and
  // softcap 20 and a bias tensor 124-320 there, so those keep 120.
  const int budget = consumers == 3 ? (spec.window || spec.softcap > 0.0f || spec.bias || spec.dropout ? 120 : 128) : 200;
  if (regs > budget) {
    return fmt::format("~{} accumulator registers per consumer thread (O {} + S {} + P {}) exceed "
                       "the {} that fit under setmaxnreg {} without spills{}",
                       regs, o_regs, cfg.block_n / 2 / cfg.split, cfg.split > 1 ? 0 : cfg.block_n / 4, budget,
                       consumers == 3 ? 160 : 240,
                       cfg.split == 1 && l.head_dim_v_pad > 256 ? " (split O's columns: _x2)" : "");
  }
  if (cfg.warps * 32 > limits.max_threads_per_block) {
    return fmt::format("{} threads exceed the device's {}", cfg.warps * 32, limits.max_threads_per_block);
  }
  const int smem = shared_memory_bytes(spec, cfg);
  if (smem > limits.max_shared_per_block) {
    return fmt::format("needs {} bytes of shared memory, device allows {} per block", smem,
                       limits.max_shared_per_block);
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
  if (cfg.hopper()) return why_illegal_sm90(spec, cfg, limits);
  if (cfg.overlap || cfg.pingpong || cfg.poly_exp || cfg.persistent) {
    return std::string("overlap (_ov), ping-pong (_pp), poly exp (_pe) and persistent (_ps) are Hopper-family "
                       "(h_...) options");
  }
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
    if (cfg.split != 1 && cfg.split != 2 && cfg.split != 4 && cfg.split != 8) {
      return fmt::format("split {} unsupported: 1, 2, 4 or 8 column slices", cfg.split);
    }
    if (spec.dbias && !spec.bias) return std::string("dbias needs a bias tensor");
  } else {
    if (cfg.split != 1 && cfg.split != 2 && cfg.split != 4) {
      return fmt::format("split {} unsupported: 1, 2 or 4 column slices of O", cfg.split);
    }
    // Slices take ceil(tiles / split) n8 tiles of O each; the last must not be empty.
    const int tiles = spec.head_dim_v / 8, per_slice = (tiles + cfg.split - 1) / cfg.split;
    if ((cfg.split - 1) * per_slice >= tiles) {
      return fmt::format("split {} leaves a slice of head_dim_v {} without columns", cfg.split,
                         spec.head_dim_v);
    }
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
  // Above 256, 8 slices keep each warp's dK + dV slices at the 64 floats of d256's 4. Dropout beside
  // a window spilled 8-24 bytes in 4 slices at d256 (NVRTC 13.0): 8 there too.
  if (d > 256 || (d > 192 && spec.dropout && spec.window)) c.split = 8;
  // Shrink until K and V of the CTA's keys and the query tiles fit: stages, query rows, then keys
  // (head dim 512 on sm_80: 2 warps).
  while (why_illegal(spec, c, limits)) {
    if (c.stages > 1) {
      --c.stages;
    } else if (c.block_m > 16) {
      c.block_m /= 2;
    } else if (c.warps > 2) {
      c.warps /= 2;
      c.block_n = 16 * c.warps;
    } else {
      break;
    }
  }
  return c;
}

TileConfig default_config_sm90(const KernelSpec& spec, const DeviceLimits& limits, ShapeHint shape = {}) {
  if (spec.head_dim_v > 256) {
    // O of 64 rows x dv > 256 does not fit one warpgroup's registers: the two consumers share
    // the query block and own half of S's and of O's columns each (attn_fwd_sm90_wide.cuh).
    // One stage with the largest block_n (<= 128) that fits: K and V are released apart, so the
    // next K loads during the softmax and P V anyway, and wider tiles feed wgmma better. H200
    // (bench/NOTES.md, "Head dims above 256"): d512 bn64 s1 452 TFLOP/s vs bn32 s2 341; d384
    // bn96 s1 482 vs bn48 s2 390; d320 bn128 s1 492 vs bn64 s2 415.
    for (int bn = 128; bn >= 16; bn -= 16) {
      const TileConfig c = sm90_wide_config(bn, 1);
      if (!why_illegal(spec, c, limits)) return c;
    }
    return sm90_wide_config(16, 1);
  }
  const int dv = sm90_layout(spec).head_dim_v_pad;
  // Two consumer warpgroups (128 query rows). Measured on the H200 (bench/NOTES.md, "Hopper
  // family"), bf16 seqlen 4096: up to head dim 128, overlap + ping-pong with 3 stages wins (d128
  // 594 TFLOP/s vs 548 serial; d64 432 vs 405). Above 128, block_n 80 with 2 stages (616 vs 601
  // with 64 at d256, serial), and overlap without ping-pong since K and V are released apart
  // (d256 seqlen 4096 723 vs 657 serial, 16384 793 vs 675 TFLOP/s, bench/NOTES.md
  // "Session 6"); before that a consumer under overlap held K past its S = Q K^T and 2 stages
  // starved it (522 vs 592).
  // Above head dim 96 a bias tensor (its hoisted global loads), or three or more modifiers (bias,
  // ALiBi, softcap, window, LSE), keep enough live to spill under overlap (NVRTC 13.0: 24-168
  // bytes at d104-128): serial schedule there.
  const int modifiers = int(spec.bias) + int(spec.alibi) + int(spec.softcap > 0.0f) + int(spec.window) +
                        int(spec.lse);
  // Above 208 a window's bounds spill 16-108 bytes under overlap (causal_br_window, d216-256).
  // Dropout's keep bits (a Philox call per lane and n8 group) beside two tiles' S and P spilled
  // 4-48 bytes under overlap at d8-224 (NVRTC 13.0): the serial schedule with dropout.
  bool overlap = !spec.dropout && (dv <= 96 || (!spec.bias && modifiers < 3 && !(spec.window && dv > 208)));
  if (sm90_bias_tma(spec)) {
    // A bias tile by TMA costs registers only for its reads, but masks and varlen add to the
    // pressure; measured with NVRTC 13.0 under overlap + ping-pong at block_n 128 (d8-64 never
    // spilled), spills start at 4 such features for d72-96 (bias, causal, varlen, LSE) or at a
    // window with LSE, and at 3, or a window or LSE, for d112-128.
    const int pressure = modifiers + int(spec.mask != MaskKind::none) + int(spec.varlen != VarlenKind::none);
    // At d112-128 LSE beside the bias also spills 4-8 bytes since the tile planning moved into
    // the consumers (generator 5).
    overlap = !spec.dropout && (dv <= 64 || (dv <= 96 && pressure <= 3 && !(spec.window && spec.lse)) ||
                                (dv <= 128 && pressure <= 2 && !spec.window && !spec.lse));
  }
  TileConfig c = dv > 128 ? sm90_config(80, 2, 2, overlap, /*pingpong=*/false)
                 : overlap ? sm90_config(128, 2, 3, /*overlap=*/true, /*pingpong=*/true)
                           : sm90_config(128, 2, 3);
  // Up to head dim 64 with a causal mask: three consumers (192 query rows, block_n 96) under
  // overlap, persistent (the tile queue balances the causal rows' unequal work). H200, seqlen
  // 1024 / 4096 / 16384: 286 / 424 / 517 TFLOP/s vs 263 / 384 / 449 for the two-consumer
  // ping-pong (bench/NOTES.md, "d64: configs that beat the default"). Not beside a window,
  // varlen or a bias (it spilled 4-48 bytes with padded varlen + window + LSE at d64-96).
  if (dv <= 64 && spec.mask != MaskKind::none && !spec.window && !spec.bias && spec.varlen == VarlenKind::none &&
      !spec.dropout) {
    TileConfig p = sm90_config(96, 3, 3, /*overlap=*/true);
    p.persistent = true;
    if (!why_illegal(spec, p, limits)) return p;
  }
  // Up to head dim 64 without a mask: three consumers with block_n 128 (FA3's d64 tile) under
  // overlap, persistent up to 2048 keys, where a tile's prologue and epilogue weigh most. H200,
  // seqlen 1024 / 4096 / 16384: 358 / 468 / 540 TFLOP/s, persistent 391 / 461 / 487, against
  // 372 / 444 / 473 for the two-consumer ping-pong and cudnn's 393 / 469 / 495 (bench/NOTES.md,
  // "Session 8"). Not beside a window, softcap or bias tensor (the register model's 120).
  if (dv <= 64 && spec.head_dim <= 64 && spec.mask == MaskKind::none && !spec.window && !spec.bias &&
      spec.softcap <= 0.0f && !spec.dropout) {
    TileConfig p = sm90_config(128, 3, 3, /*overlap=*/true);
    p.persistent = shape.seqlen_k > 0 && shape.seqlen_k <= 2048;
    if (!why_illegal(spec, p, limits)) return p;
  }
  // Head dims 120-128 beside a causal mask, up to 2048 keys: the default's overlap + ping-pong,
  // persistent (the tile queue balances the causal rows' unequal work, and a short tile's prologue
  // and epilogue overlap the next one's loads). H200, d128 causal, two passes: seqlen 1024 358 ->
  // 400-401 TFLOP/s, 2048 483-484 -> 502-510 (cudnn 373 / 461 in the same call; bench/NOTES.md,
  // "Session 13"). Not beside a window, varlen, a score modifier or dropout (not measured there).
  if (overlap && dv == 128 && spec.head_dim > 112 && spec.mask != MaskKind::none && !spec.window && !spec.bias &&
      !spec.alibi && spec.softcap <= 0.0f && spec.varlen == VarlenKind::none && !spec.dropout &&
      shape.seqlen_k > 0 && shape.seqlen_k <= 2048) {
    TileConfig p = c;
    p.persistent = true;
    if (!why_illegal(spec, p, limits)) return p;
  }
  // Head dims 120-128 without a mask or score modifier, beyond 2048 keys: block_n 176 with two
  // stages (FA3's d128 tile; fewer, longer softmax steps). H200, d128, two passes: 592-602 /
  // 627-633 TFLOP/s at seqlen 4096 / 16384 against 586-594 / 611 for block_n 128 with three
  // stages, but 482-492 against 487-501 at 1024 (bench/NOTES.md, "Session 8").
  if (dv == 128 && spec.head_dim > 112 && spec.head_dim <= 128 && spec.mask == MaskKind::none && !spec.window &&
      !spec.bias && !spec.alibi && spec.softcap <= 0.0f && shape.seqlen_k > 2048 && !spec.dropout) {
    const TileConfig w = sm90_config(176, 2, 2, /*overlap=*/true, /*pingpong=*/true);
    if (!why_illegal(spec, w, limits)) return w;
  }
  // Shrink until it fits: stages, then block_n.
  while (why_illegal(spec, c, limits)) {
    if (c.stages > 2) {
      --c.stages;
    } else if (c.block_n > 16) {
      c.block_n -= 16;
    } else {
      break;
    }
  }
  return c;
}

// The Hopper-family backward's default: two consumer warpgroups (128 keys per CTA, FA3's shape),
// 64 query rows per step (128 spilled 44-48 bytes at d64 with NVRTC 13.0), two Q/dO stages (three
// read 1.03x at d128 in jitattn tune's fast mode but 0.99-1.01x in fwd+bwd A/B, H200, session 7).
// Above head dim 128, or where the registers refuse that shape (dropout above head dim 80, the
// heavier modifier sets at d96-128), the column split (_x2: half of dK and dV per consumer) with
// two stages where they fit (up to d192), else one. May be illegal for the spec (head dims above
// 256, the heaviest modifier sets): check why_illegal.
TileConfig default_backward_config_sm90(const KernelSpec& spec, const DeviceLimits& limits) {
  const Sm90Layout l = sm90_layout(spec);
  const TileConfig narrow = sm90_backward_config(64, 2, 2);
  const bool fits = l.head_dim_pad <= 128 && l.head_dim_v_pad <= 128;
  if (fits && !why_illegal(spec, narrow, limits)) return narrow;
  const TileConfig two = sm90_backward_wide_config(2);
  if (!why_illegal(spec, two, limits)) return two;
  const TileConfig one = sm90_backward_wide_config(1);
  // Neither: the narrow shape's reason is the one to report up to head dim 128.
  return fits && why_illegal(spec, one, limits) ? narrow : one;
}

}  // namespace

bool sm90_family_default(const KernelSpec& spec, const DeviceLimits& limits) {
  if (spec.target.cpu || spec.target.sm != 90 || limits.sm != 90) return false;
  if (spec.pass == Pass::backward) {
    // A bias tensor without its gradient stays on the mma.sync backward (per-element global
    // loads inside the score loop; not measured on the sm90 backward yet). With dBias the
    // Hopper backward is the default where it is legal (its registers allow it).
    if (spec.bias && !spec.dbias) return false;
    return !why_illegal(spec, default_backward_config_sm90(spec, limits), limits).has_value();
  }
  // Bias tensors that cannot be tiled (key or query broadcast, unaligned rows) are read per
  // element from global memory inside the softmax: 99-140 TFLOP/s on the H200 at d64-96
  // (bench/NOTES.md), under the mma.sync family's (168-217), so they stay there. Tileable ones
  // arrive by TMA with K (sm90_bias_tma).
  if (spec.bias && !spec.bias_tiled) return false;
  return !why_illegal(spec, default_config_sm90(spec, limits), limits).has_value();
}

TileConfig default_config(const KernelSpec& spec, const DeviceLimits& limits, ShapeHint shape) {
  if (spec.target.cpu) return default_config_cpu(spec);
  if (spec.pass == Pass::backward) {
    return sm90_family_default(spec, limits) ? default_backward_config_sm90(spec, limits)
                                             : default_backward_config(spec, limits);
  }
  if (sm90_family_default(spec, limits)) return default_config_sm90(spec, limits, shape);
  return family_default_config(spec, limits, Family::sm80);
}

TileConfig family_default_config(const KernelSpec& spec, const DeviceLimits& limits, Family family,
                                 ShapeHint shape) {
  if (spec.target.cpu) return default_config_cpu(spec);
  if (spec.pass == Pass::backward) {
    return family == Family::sm90 ? default_backward_config_sm90(spec, limits) : default_backward_config(spec, limits);
  }
  if (family == Family::sm90) return default_config_sm90(spec, limits, shape);
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
  if (d > 256) {
    // Above 256: 64 query rows (a Q tile of head dim 512 is 65 KB at 64 rows), 16 per warp, and
    // O's columns in slices on 2 or 4 CTAs per query block: up to 192 columns each (NVRTC 13.0:
    // d512 in 2 slices of 256 spills 44 B with every modifier; d384 in 2 of 192 does not).
    c.block_m = 64;
    c.warps = 4;
    c.block_n = std::min(c.block_n, 32);  // 64 spills beside the long S = Q K^T loop
    c.split = spec.head_dim_v > 384 ? 4 : spec.head_dim_v > 256 ? 2 : 1;
  }
  // Shrink until it fits the device: stages first, then block_n, then block_m (above head dim
  // 256 a single buffer before fewer keys).
  while (why_illegal(spec, c, limits)) {
    if (c.stages > 2 || (d > 256 && c.stages > 1)) {
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
