// KernelSpec: every fact baked into a generated kernel at compile time. TileConfig: how the spec
// is computed. Pure C++ (no CUDA headers, no I/O), so it is tested anywhere.
//
// What must change with these structs: canonical() (the text form that keys caches), the
// generator's emitted constants, and kGeneratorVersion in generator.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "jitattn/attention.h"
#include "jitattn/tensor.h"

namespace jitattn {

/// Target: a GPU architecture as compute capability major*10+minor (80 = sm_80, 90 = sm_90), or
/// the host CPU (`cpu`; sm is then ignored). The CPU's ISA is not part of the spec: the same
/// source is compiled for whichever host runs it, and the binary cache keys on the host features.
struct Target {
  int sm = 80;
  bool cpu = false;
  bool operator==(const Target&) const = default;
};

/// Which kernels a spec generates: the forward pass, or the backward pass's kernels
/// (templates/attn_bwd_sm80.cuh or, Hopper configs, attn_bwd_sm90.cuh, with attn_bwd_common.cuh:
/// preprocess, dK/dV(/dQ) main kernel, dQ or its conversion, dBias).
enum class Pass { forward, backward };

struct KernelSpec {
  Target target;
  Pass pass = Pass::forward;
  DType dtype = DType::bf16;
  int head_dim = 128;    ///< QK head dim
  int head_dim_v = 128;  ///< V/O head dim
  MaskKind mask = MaskKind::none;
  bool window = false;  ///< sliding-window bounds (sizes are runtime params)
  VarlenKind varlen = VarlenKind::none;
  bool bias = false;       ///< additive bias tensor (strides are runtime params)
  /// The bias rows are 16-byte aligned with a contiguous key dim, so bias tiles stream through
  /// shared memory with cp.async; otherwise each score reads its bias element from global memory.
  bool bias_tiled = false;
  bool alibi = false;      ///< ALiBi from per-head slopes
  float scale = 0.0f;      ///< softmax scale, baked in
  float softcap = 0.0f;    ///< 0 = off; baked in
  bool lse = false;        ///< writes the log-sum-exp (forward; backward always reads it)
  bool dropout = false;    ///< dropout on the probabilities (p, seed, offset are runtime params)
  /// Backward only: dQ summed in registers by its own kernel instead of fp32 atomics, so it is
  /// bitwise reproducible.
  bool deterministic = false;
  bool dbias = false;      ///< backward only: writes the bias gradient

  bool operator==(const KernelSpec&) const = default;

  /// Canonical text form, e.g. "fwd sm80 bf16 d128 dv128 mask=causal window=0 varlen=none
  /// bias=0 alibi=0 scale=0x3db504f3 softcap=0x00000000 lse=1" (" dropout=1" appended when on).
  /// Backward: "bwd sm80 ... softcap=0x00000000 dropout=0 det=0 dbias=0". Floats as exact bit
  /// patterns. CPU specs read "fwd cpu f32 d64 ..." and ignore bias_tiled (bias=1 whenever bias
  /// is set).
  std::string canonical() const;
  /// 64-bit FNV-1a of canonical(); stable across builds and hosts.
  uint64_t hash() const;
  /// Short readable tag used in kernel names, e.g. "bf16_d128_causal_lse".
  std::string tag() const;
};

/// Which GPU kernel family computes a config: the mma.sync family (templates/attn_fwd_sm80.cuh,
/// sm_80+) or the Hopper family (templates/attn_fwd_sm90.cuh: wgmma, TMA, warp specialisation;
/// compiled for sm_90a only).
enum class Family { sm80, sm90 };

/// How a spec is computed. GPU (mma.sync, sm_80+): all fields. CPU: block_m query rows per work
/// item and block_n keys per step, with warps = 0, stages = 0 and q_in_regs = false.
/// Hopper family (family sm90): warps = 4 * (consumer warpgroups + 1), the first warpgroup being
/// the TMA producer; each consumer warpgroup owns 64 query rows, so block_m = 64 * consumers, or
/// with split 2 both consumers own the same 64 rows (block_m 64) and half of O's columns each.
struct TileConfig {
  int block_m = 128;   ///< query rows per CTA (CPU: per work item)
  int block_n = 64;    ///< keys per main-loop step
  int warps = 4;       ///< warps per CTA; each owns block_m / warps query rows (16 or 32); CPU: 0
  int stages = 2;      ///< K/V shared-memory pipeline depth (cp.async); CPU: 0
  bool q_in_regs = false;  ///< keep Q fragments in registers instead of re-reading shared memory
  /// Column slices, so large head dims fit in registers. Backward: each CTA accumulates 1/split
  /// of the dK, dV (and dQ) columns and recomputes S and dP in full. mma.sync forward: split CTAs
  /// per query block, each computing S in full and 1/split of O's columns (ceil(dv / 8 / split)
  /// n8 tiles; the last slice may be shorter). Hopper forward (split 2 = consumer warpgroups):
  /// the two consumers share one 64-row query block, each computing half of S's columns and
  /// owning half of O's, P exchanged through shared memory (templates/attn_fwd_sm90_wide.cuh),
  /// for V head dims whose O accumulator does not fit one warpgroup's registers (above 128).
  /// Hopper backward (split 2): the two consumers share 64 keys, each owning half of dK's, dV's
  /// and dQ's head-dim columns (templates/attn_bwd_sm90.cuh kWide).
  int split = 1;
  Family family = Family::sm80;
  /// Hopper family only: intra-warpgroup overlap, i.e. each consumer issues S = Q K^T of the next
  /// tile and O += P V of the current one back to back, and runs the softmax while P V computes.
  bool overlap = false;
  /// Hopper family only, with overlap and 2 consumer warpgroups: the consumers take turns issuing
  /// their wgmma batches (named barriers), so one's softmax runs while the other's wgmma does.
  /// Backward (2 consumer warpgroups): the consumers run independently, each adding its own 64
  /// keys' share of dQ (no barrier between them; twice the dQ atomics).
  bool pingpong = false;
  /// Hopper family only: one in four exponentials of the softmax by a polynomial on the FMA pipe
  /// instead of the MUFU unit (16 per clock per SM), which bounds the softmax at small head dims.
  bool poly_exp = false;
  /// Hopper forward only (not the column split): one CTA per SM walks the tiles (query blocks of
  /// every head and batch) in turn, loading the next tile's Q and K/V during this tile's last
  /// P V and epilogue (templates/attn_fwd_sm90.cuh, kPersistent).
  bool persistent = false;

  bool operator==(const TileConfig&) const = default;
  /// A CPU config: warps and stages 0.
  bool cpu() const { return warps == 0 && stages == 0; }
  bool hopper() const { return family == Family::sm90; }
  /// Consumer warpgroups of a Hopper config (warps / 4 - 1).
  int consumer_warpgroups() const { return warps / 4 - 1; }
  /// "bm128_bn64_w8_s2", suffix "_qr" = Q in registers, "_x2" = 2 column slices;
  /// CPU configs "cpu_bm32_bn128"; Hopper configs "h_bm128_bn128_wg2_s2" (wg = consumer
  /// warpgroups), suffix "_ov" = overlap, "_pp" = ping-pong, "_pe" = polynomial exp2, "_ps" =
  /// persistent, "_x2" =
  /// the consumers split O's columns ("h_bm64_bn32_wg2_s2_x2").
  std::string canonical() const;
};
// Backward configs read the fields as: block_m = query rows per step of the dK/dV kernel (and
// keys per step of the deterministic dQ kernel), block_n = keys per CTA = 16 per warp (and
// query rows per CTA of the dQ kernel), stages = 1 or 2 buffers of the streamed tiles.
// Hopper-family backward configs (h_bm<M>_bn<N>_wg<C>_s<S>[_pp][_x2]): block_m = query rows per step,
// block_n = keys per CTA = 64 per consumer warpgroup, stages = depth of the Q/dO TMA ring, _pp =
// independent consumer warpgroups (see pingpong); _x2 = the two consumers share 64 keys and 64
// query rows and split the head dims' columns (h_bm64_bn64_wg2_s<S>_x2: head dims above 128).
// CPU backward configs (cpu_bm<M>_bn<N>): block_m = query rows per step of a dK/dV item and rows
// per dQ item, block_n = keys per dK/dV item and keys per step of a dQ item.

/// A Hopper-family config with `consumers` consumer warpgroups (block_m = 64 * consumers).
inline TileConfig sm90_config(int block_n, int consumers, int stages, bool overlap = false,
                              bool pingpong = false, bool poly_exp = false) {
  return {64 * consumers, block_n, 4 * (consumers + 1), stages, false, 1, Family::sm90, overlap, pingpong,
          poly_exp};
}
/// A Hopper-family config whose two consumer warpgroups share 64 query rows and split S's and
/// O's columns (split 2, block_m 64; templates/attn_fwd_sm90_wide.cuh). `overlap` only to build
/// configs that why_illegal refuses.
inline TileConfig sm90_wide_config(int block_n, int stages, bool overlap = false) {
  TileConfig c = sm90_config(block_n, 2, stages, overlap);
  c.block_m = 64;
  c.split = 2;
  return c;
}

/// Shared-memory layout facts of the Hopper family that the host needs to build TMA tensor maps:
/// head dims padded to wgmma's k16 granularity in shared memory (never in the user's tensors), and
/// the swizzle width (bytes) of the Q/K and V tiles: tiles are stored as panels of
/// swizzle_bytes / 2 columns, each loaded by one TMA box.
struct Sm90Layout {
  int head_dim_pad = 0;
  int head_dim_v_pad = 0;
  int swizzle_qk = 128;  ///< 32, 64 or 128
  int swizzle_v = 128;
  int panel_cols_qk() const { return swizzle_qk / 2; }
  int panel_cols_v() const { return swizzle_v / 2; }
};
Sm90Layout sm90_layout(const KernelSpec& spec);
/// The swizzle width (bytes) of a Hopper tile of 16-bit elements `cols` wide: the widest whose
/// panel (swizzle / 2 columns) divides `cols`, so the tile is whole panels (cols a multiple of 16).
/// 128-byte rows read conflict-free; 64/32-byte panels keep widths like 96 or 80 unpadded.
inline int sm90_swizzle(int cols) { return cols % 64 == 0 ? 128 : cols % 32 == 0 ? 64 : 32; }
/// Hopper family with a tileable bias (spec.bias_tiled): the (block_m, block_n) bias tile of each
/// stage arrives by TMA with K, as panels of sm90_swizzle(block_n) / 2 columns.
inline bool sm90_bias_tma(const KernelSpec& spec) { return spec.bias && spec.bias_tiled; }
/// The layout a Hopper config uses: sm90_layout(spec), except that a split config (the consumers
/// own halves of O's columns) pads the V head dim to a multiple of 32 and picks the V swizzle so
/// that each half is whole panels (half = head_dim_v_pad / 2 columns); a split backward config
/// pads both head dims to multiples of 64 (halves of whole 32-column fp32 dQ panels) the same way.
Sm90Layout sm90_layout(const KernelSpec& spec, const TileConfig& cfg);

/// How the Hopper-family backward (templates/attn_bwd_sm90.cuh) shares the dQ = dS K product
/// among its consumer warpgroups. all_keys: each consumer sums over every key of the CTA (a named
/// barrier over the consumers after dS^T is written) and takes either one 64-row tile of the
/// query block (split_m, block_m 128) or n head-dim columns (split_n: the padded head dim is two
/// whole swizzled panels) or, neither fitting, the whole product on alternate query blocks
/// (alternate: consumer it % 2 takes block it); with independent consumers (_pp) each adds its
/// own 64 keys' share (twice the reduce-adds). Each consumer stages its dQ tiles in shared memory
/// (fp32 panels of 32 columns).
struct Sm90BwdDq {
  bool all_keys = false;
  bool split_m = false;
  bool split_n = false;
  bool alternate = false;
  int n = 0;        ///< dQ columns per consumer (wgmma N)
  int m_tiles = 1;  ///< 64-row dQ tiles per consumer
  int passes = 1;   ///< products over n / passes columns each, one after the other (_x2 at 128)
};
Sm90BwdDq sm90_bwd_dq(const KernelSpec& spec, const TileConfig& cfg);

/// The Hopper backward's register model (why_illegal): estimated registers per consumer thread,
/// legal up to kSm90BwdRegisterBudget (what compiled without spills under setmaxnreg 240).
inline constexpr int kSm90BwdRegisterBudget = 208;
int sm90_bwd_registers(const KernelSpec& spec, const TileConfig& cfg);
/// Whether the Hopper backward reads a block's LSE into registers while S^T runs (block_m / 4
/// more registers: where the model has room for them).
bool sm90_bwd_lse_ahead(const KernelSpec& spec, const TileConfig& cfg);
/// Whether the Hopper backward's dQ consumer issues dQ before dV and writes the dQ product out
/// while dV runs (P^T's fragments stay live beside the dQ accumulators: where the model has room).
bool sm90_bwd_dq_early(const KernelSpec& spec, const TileConfig& cfg);
/// Whether the Hopper backward's P^T loop has a copy without the mask test for blocks wholly inside
/// a causal mask or window (else one loop tests each element where the block needs it).
bool sm90_bwd_mask_split(const KernelSpec& spec, const TileConfig& cfg);
/// Whether the Hopper backward's dQ reduce-adds are the writer warps' (always in deterministic mode
/// and under _x2; in fast mode unless the mask's P^T loop leaves no registers for the hand-over).
bool sm90_bwd_dq_writer(const KernelSpec& spec, const TileConfig& cfg);
/// Whether the Hopper forward keeps a row's running max until a new one exceeds it by more than
/// 2^8 in the exp2 domain, skipping O's rescale on tiles where no row of a warp moved it.
bool sm90_fwd_lazy_rescale(const KernelSpec& spec, const TileConfig& cfg);
/// Whether the Hopper backward forms P^T times the softmax scale (an offset on the LSE it reads), so
/// that dS^T = P^T (dP^T - delta) needs no multiply per element; dV is divided by it once.
bool sm90_bwd_fold_scale(const KernelSpec& spec, const TileConfig& cfg);

/// A Hopper-family backward config: block_m query rows per step, 64 keys per consumer warpgroup.
inline TileConfig sm90_backward_config(int block_m, int consumers, int stages, bool independent = false) {
  return {block_m, 64 * consumers, 4 * (consumers + 1), stages, false, 1, Family::sm90, false, independent};
}

/// The Hopper backward's column split (_x2, templates/attn_bwd_sm90.cuh kWide): two consumer
/// warpgroups on 64 keys and 64 query rows, each owning half of dK's, dV's and dQ's columns.
inline TileConfig sm90_backward_wide_config(int stages) {
  TileConfig c = sm90_backward_config(64, 2, stages);
  c.block_n = 64;
  c.split = 2;
  return c;
}

/// A CPU config (warps and stages 0).
inline TileConfig cpu_config(int block_m, int block_n) { return {block_m, block_n, 0, 0, false}; }

/// Largest head dim (QK or V) a spec may have; multiples of 8 from 8 up to it. Above 256 the
/// GPU kernels slice O's columns (TileConfig::split); FlashAttention and cuDNN stop at 256.
inline constexpr int kMaxHeadDim = 512;

/// Shared memory in bytes the tile config needs for the spec (dynamic shared memory; Hopper
/// configs include 1 KiB of alignment slack and the mbarriers).
int shared_memory_bytes(const KernelSpec& spec, const TileConfig& cfg);

/// Scratch (stack) bytes one CPU work item uses: Q^T, K and V blocks, S^T and the O accumulator
/// in fp32, plus per-row state; for a backward spec the larger of its dK/dV and dQ items.
int cpu_scratch_bytes(const KernelSpec& spec, const TileConfig& cfg);

/// Stack budget of one CPU work item. The kernel keeps its blocks on the calling thread's stack
/// (no allocation inside a kernel), so every thread running kernels needs a stack of at least
/// twice this (glibc's default for new threads is 8 MiB); it is also half the 1 MiB L2 per core
/// of the machine the CPU defaults were measured on, where the blocks must stay.
inline constexpr int kCpuScratchBudget = 512 * 1024;

/// Limits of the device a config must fit.
struct DeviceLimits {
  int sm = 80;
  int max_shared_per_block = 166912;  ///< opt-in maximum (sm_80: 163 KB; sm_90: 227 KB)
  int max_threads_per_block = 1024;
  bool cpu = false;  ///< the host CPU (sm and the GPU limits are ignored)
};

/// Limits of a known architecture (used when compiling without a device).
DeviceLimits limits_for_arch(int sm);
/// Limits of the host CPU.
DeviceLimits limits_for_cpu();

/// Why a config is illegal for a spec on a device; nullopt when it is legal.
std::optional<std::string> why_illegal(const KernelSpec& spec, const TileConfig& cfg,
                                       const DeviceLimits& limits);

/// What the default may know of the problem beyond its spec (the spec holds what the kernel's
/// source depends on; the shape is a runtime parameter). Zero: unknown. The runtime passes the
/// problem's, and picks one config per spec and tuning bucket (tuner::shape_bucket: power-of-two
/// ceilings of the sequence lengths), so the thresholds below sit on powers of two.
struct ShapeHint {
  int64_t seqlen_k = 0;  ///< keys per sequence (varlen: the longest)
};

/// The heuristic default config for a spec on a device (always legal): the Hopper family's on
/// sm_90 where it supports the spec (sm90_family_default), else the mma.sync family's.
TileConfig default_config(const KernelSpec& spec, const DeviceLimits& limits, ShapeHint shape = {});

/// The default config of one family (GPU specs; the CPU default for CPU specs). The sm90 family's
/// may be illegal for the spec: check why_illegal.
TileConfig family_default_config(const KernelSpec& spec, const DeviceLimits& limits, Family family,
                                 ShapeHint shape = {});

/// Whether default_config picks the Hopper family for this spec on this device: sm_90, where the
/// family's default is legal for the spec (why_illegal), and no bias tensor that cannot be tiled
/// (forward) or bias tensor without dBias (backward).
bool sm90_family_default(const KernelSpec& spec, const DeviceLimits& limits);

}  // namespace jitattn
