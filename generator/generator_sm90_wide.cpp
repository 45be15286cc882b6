// Source generation for the Hopper family's column-split kernel (templates/attn_fwd_sm90_wide.cuh,
// configs with split 2): the spec's constants with the split layout (sm90_layout(spec, cfg)), the
// score modifiers, and the wgmma shapes S (N = block_n / 2) and O (N = half of the padded V head
// dim, P from shared memory).
#include <fmt/format.h>

#include <string>

#include "generator/generator.h"

namespace jitattn::detail {

KernelSource generate_sm90_wide(const KernelSpec& spec, const TileConfig& cfg) {
  KernelSource out;
  out.name = gpu_kernel_name(spec, cfg);
  out.threads = cfg.warps * 32;
  out.shared_bytes = shared_memory_bytes(spec, cfg);
  out.arch_specific = true;
  out.tma_params = true;

  // Bias elements are read from global memory in ScoreMod::apply, as in attn_fwd_sm90.cuh.
  KernelSpec mod_spec = spec;
  mod_spec.bias_tiled = false;
  const GpuScoreModCode mod = gpu_score_mod_code(mod_spec);
  const bool raw = gpu_raw_scores(spec);
  const Sm90Layout l = sm90_layout(spec, cfg);

  std::string& s = out.source;
  s += sm90_source_head(spec, cfg, fmt::format("#define JITATTN_KERNEL_NAME {}\n", out.name));
  s += sm90_forward_constants(spec, cfg, l, out.shared_bytes, raw);
  s += sm90_exp_scale_and_close(spec, raw);
  s += "// The wgmma shapes of this kernel: S (N = block_n / 2) and O (N = half the padded head_dim_v).\n";
  s += wgmma_ss(cfg.block_n / 2);
  s += wgmma_ss(l.head_dim_v_pad / 2, "wgmma_pv", 0, 1, /*accumulate=*/true);  // P K-major, V MN-major
  s += "\n// Score modifiers composed for this spec (applied to raw Q.K scores, result in log2 units).\n";
  s += gpu_score_mod_struct(mod);
  s += "}  // namespace jitattn_kernel\n\n";
  s += require_template("attn_fwd_sm90_wide.cuh");
  return out;
}

}  // namespace jitattn::detail
