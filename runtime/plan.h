// From a validated problem to what a launch needs: the KernelSpec, the runtime params and the
// grid. Pure host code, tested without a GPU.
#pragma once

#include <array>

#include "generator/kernel_spec.h"
#include "runtime/problem.h"
#include "templates/attn_params.h"

namespace jitattn {

/// The compile-time facts of `problem` for `target` (a GPU arch or the CPU).
KernelSpec make_spec(const Problem& problem, Target target);
/// make_spec for GPU architecture `sm`.
inline KernelSpec make_spec(const Problem& problem, int sm) { return make_spec(problem, Target{sm, false}); }

/// Runtime params of the forward kernel (pointers, strides, lengths, window).
jitattn_kernel::AttnFwdParams make_params(const AttentionArgs& args, const Problem& problem);

/// The backward spec of `problem` (its dbias flag included). The CPU's backward is deterministic
/// by construction: its spec never sets the flag.
KernelSpec make_backward_spec(const Problem& problem, Target target, bool deterministic);
inline KernelSpec make_backward_spec(const Problem& problem, int sm, bool deterministic) {
  return make_backward_spec(problem, Target{sm, false}, deterministic);
}

/// Work items of the CPU backward's three passes (runtime/device/cpu_jit.h; the dQ pass's
/// collapsing of the dims dbias is broadcast over mirrors templates/attn_bwd_cpu.h, dq_items).
struct CpuBackwardItems {
  long long preprocess = 0, dkdv = 0, dq = 0;
};
CpuBackwardItems cpu_backward_items(const Problem& problem, const TileConfig& config,
                                    const jitattn_kernel::AttnBwdParams& params);

/// How a backward call sums dQ: fp32 atomics or reduce-adds into the workspace (fast mode), in
/// registers by its own kernel (the mma.sync family's deterministic mode, and the CPU's), or by
/// the Hopper family's reduce-adds in a fixed order of the key blocks (its deterministic mode:
/// the workspace's accumulator and a counter per query block).
enum class DqSum { atomic, own_kernel, ordered };
DqSum backward_dq_sum(const TileConfig& config, bool deterministic, bool cpu);

/// Device workspace of a backward call, in this order: delta (fp32 per query row and head), the
/// fp32 dQ accumulator (not for DqSum::own_kernel), the dQ counters (DqSum::ordered: an int per
/// batch, query head and 64 query rows), the fp32 dBias accumulator (dbias only). O(batch *
/// heads * seqlen) besides the dBias accumulator, which is dbias's own size.
struct BackwardWorkspace {
  size_t delta_bytes = 0;
  size_t dq_accum_bytes = 0;
  size_t dq_sem_bytes = 0;
  long long dq_sem_stride = 0;  ///< counters per (batch, query head): 64-row query blocks
  size_t dbias_accum_bytes = 0;
  size_t bytes(DqSum sum) const {
    return delta_bytes + (sum == DqSum::own_kernel ? 0 : dq_accum_bytes) + (sum == DqSum::ordered ? dq_sem_bytes : 0) +
           dbias_accum_bytes;
  }
  /// What a call in this mode may need whichever family runs it (the caller's workspace size).
  size_t total(bool deterministic) const { return bytes(deterministic ? DqSum::ordered : DqSum::atomic); }
};
BackwardWorkspace backward_workspace(const Problem& problem);

/// Runtime params of the backward kernels; `workspace` laid out as backward_workspace() says for `sum`.
jitattn_kernel::AttnBwdParams make_backward_params(const AttentionArgs& args, const BackwardArgs& grads,
                                                   const Problem& problem, void* workspace, DqSum sum);

/// Grids of the backward kernels; {0,0,0} for a kernel that does not run.
struct BackwardGrids {
  std::array<unsigned, 3> preprocess{}, main{}, dq{}, convert{}, dbias{};
};
BackwardGrids make_backward_grids(const Problem& problem, const TileConfig& config, DqSum sum);

/// Grid: (query blocks x mma.sync column slices, heads_q, batch). On the CPU the work items are the same blocks, numbered
/// (b * heads_q + h) * query_blocks + m_block.
std::array<unsigned, 3> make_grid(const Problem& problem, const TileConfig& config);

/// The launch grid on a GPU with `sm_count` SMs: make_grid's, or for a persistent Hopper config
/// (one CTA per SM walking the tiles) (min(tiles, sm_count), 1, 1).
std::array<unsigned, 3> make_launch_grid(const Problem& problem, const TileConfig& config, int sm_count);

/// How many (head, batch) pairs a persistent Hopper kernel walks together: as many as keep their
/// K and V within half of an L2 of `l2_bytes` (at least 1, at most all of them).
unsigned persistent_tile_group(const Problem& problem, long long l2_bytes);

/// A causal grid of one CTA per tile, whose work falls with the tile's index inside each of
/// `pairs` (head, batch) pairs of `tiles` tiles: how many pairs to interleave (tile 0 of each pair
/// of a group, then tile 1, ...) so that each group's heaviest tiles start together and its
/// lightest fill in behind them, rather than one pair's heavy tiles starting behind the previous
/// pair's light ones. The smallest divisor of `pairs` (equal groups: a short last group leaves
/// a tail) whose group spans at least one wave of `sm_count` CTAs, and at most `cap` pairs (what
/// their data in L2 allows) or 8 waves; else the largest such divisor below. 1: the launch order
/// as is.
unsigned causal_pair_group(long long pairs, long long tiles, int sm_count, long long cap);

/// Parses TileConfig::canonical() text ("bm128_bn64_w8_s2[_qr]", "h_bm128_bn128_wg2_s2",
/// "cpu_bm64_bn64"); throws InvalidArgument("config").
TileConfig parse_config(const std::string& text);

}  // namespace jitattn
