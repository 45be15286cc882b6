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

/// Grid: (query blocks, heads_q, batch). On the CPU the work items are the same blocks, numbered
/// (b * heads_q + h) * query_blocks + m_block.
std::array<unsigned, 3> make_grid(const Problem& problem, const TileConfig& config);

/// Parses TileConfig::canonical() text ("bm128_bn64_w8_s2[_qr]", "h_bm128_bn128_wg2_s2",
/// "cpu_bm64_bn64"); throws InvalidArgument("config").
TileConfig parse_config(const std::string& text);

}  // namespace jitattn
