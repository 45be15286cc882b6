// From a validated problem to what a launch needs: the KernelSpec, the runtime params and the
// grid. Pure host code, tested without a GPU.
#pragma once

#include <array>

#include "generator/kernel_spec.h"
#include "runtime/problem.h"
#include "templates/attn_params.h"

namespace jitattn {

/// The compile-time facts of `problem` for architecture `sm`.
KernelSpec make_spec(const Problem& problem, int sm);

/// Runtime params of the forward kernel (pointers, strides, lengths, window).
jitattn_kernel::AttnFwdParams make_params(const AttentionArgs& args, const Problem& problem);

/// Grid: (query blocks, heads_q, batch).
std::array<unsigned, 3> make_grid(const Problem& problem, const TileConfig& config);

/// Parses TileConfig::canonical() text ("bm128_bn64_w8_s2[_qr]"); throws InvalidArgument("config").
TileConfig parse_config(const std::string& text);

}  // namespace jitattn
