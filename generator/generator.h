// Source generation: KernelSpec + TileConfig -> source text. GPU specs give CUDA for NVRTC, CPU
// specs C++17 for the in-process clang (generator_cpu.cpp). Deterministic: equal inputs give
// byte-identical output.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "generator/kernel_spec.h"

namespace jitattn {

/// Bumped whenever emitted code changes meaning; part of every cache key.
inline constexpr int kGeneratorVersion = 5;  // 2: dropout params, backward kernels; 3: CPU backward and dropout;
                                             // 4: sm90 bias tiles by TMA (AttnFwdTmaParams::tma_bias), sm90 backward

struct KernelSource {
  /// extern "C" kernel symbol, spells out the specialisation. Backward: the dK/dV kernel; the
  /// others of the same module are backward_kernel_name(name, ...).
  std::string name;
  std::string source;  ///< full translation unit, no #include of host headers
  int threads = 128;     ///< GPU: threads per CTA; CPU: 0
  int shared_bytes = 0;  ///< GPU: dynamic shared memory to launch with; CPU: 0
  /// GPU: compile for the arch-specific target (sm_90a: wgmma, setmaxnreg), whose binaries run on
  /// that arch only; the Hopper family sets it.
  bool arch_specific = false;
  /// GPU: the kernel takes AttnFwdTmaParams (TMA tensor maps + params) instead of AttnFwdParams.
  bool tma_params = false;
};

/// The kernels of a backward module besides the dK/dV kernel `name`.
enum class BackwardKernel { preprocess, dq, convert, dbias };
std::string backward_kernel_name(const std::string& name, BackwardKernel which);

/// Generates the kernel. Throws InvalidArgument if why_illegal(spec, cfg, limits) says so.
/// CPU kernels follow the ABI of runtime/device/cpu_jit.h:
///   extern "C" void NAME(const jitattn_kernel::AttnFwdParams* p, long long begin, long long end)
/// over work items (b * heads_q + h) * ceil(seqlen_q / block_m) + m_block. A CPU backward spec
/// gives three entries taking an AttnBwdParams*: NAME (dK/dV), NAME_pre and NAME_dq
/// (backward_kernel_name), run as passes pre, NAME, dq.
KernelSource generate(const KernelSpec& spec, const TileConfig& cfg, const DeviceLimits& limits);

/// Hash of the embedded GPU template text (FNV-1a), part of GPU cache keys.
uint64_t template_hash();
/// Hash of the embedded CPU template text (FNV-1a), part of CPU cache keys. Kept apart from
/// template_hash() so that CPU template changes leave GPU tuning results valid.
uint64_t cpu_template_hash();

namespace detail {
/// An embedded template's text; throws Error when it is not embedded.
std::string_view require_template(std::string_view name);
/// A float literal that round-trips exactly (hex float), so baked constants are bit-exact.
std::string float_literal(double v);
/// An embedded shared header's text with its include guard removed (one TU, nothing to guard).
std::string header_text(std::string_view name);
/// header_text("attn_params.h").
std::string params_header();
/// generate() for a CPU spec, after why_illegal (generator_cpu.cpp).
KernelSource generate_cpu(const KernelSpec& spec, const TileConfig& cfg);
/// generate() for a Hopper-family config, after why_illegal (generator_sm90.cpp).
KernelSource generate_sm90(const KernelSpec& spec, const TileConfig& cfg);
/// generate() for a Hopper-family config with split 2 (consumers own halves of O's columns;
/// generator_sm90_wide.cpp, templates/attn_fwd_sm90_wide.cuh).
KernelSource generate_sm90_wide(const KernelSpec& spec, const TileConfig& cfg);
/// The Hopper kernels' wgmma wrappers, written out for their exact N (generator_sm90.cpp): both
/// operands from shared memory (wgmma_s for S = Q K^T; the transposes and names of the other
/// products as arguments), or A from registers (wgmma_o for O += P V).
std::string wgmma_ss(int n, const char* name = "wgmma_s", int trans_a = 0, int trans_b = 0,
                     bool accumulate = false);
std::string wgmma_rs(int n, const char* name = "wgmma_o");  // backward: wgmma_dv, wgmma_dk
/// attn_params_sm90.h's text without its include guard.
std::string params_sm90_header();
/// Pieces every Hopper-family source shares (generator_sm90.cpp): the head (provenance, dtype,
/// `defines`, the device headers, opening namespace cfg), the head-dim/layout/tile constants, the
/// mask and varlen flags, and kExpScale closing namespace cfg.
std::string sm90_source_head(const KernelSpec& spec, const TileConfig& cfg, const std::string& defines);
std::string sm90_tile_constants(const KernelSpec& spec, const TileConfig& cfg, const Sm90Layout& l);
std::string sm90_mask_constants(const KernelSpec& spec);
std::string sm90_exp_scale_and_close(const KernelSpec& spec, bool raw);
/// The forward kernels' (attn_fwd_sm90.cuh, the column-split kernel) shared cfg constants.
std::string sm90_forward_constants(const KernelSpec& spec, const TileConfig& cfg, const Sm90Layout& l,
                                   int shared_bytes, bool raw);

/// Score modifiers of a GPU spec, as the lines of struct ScoreMod's members.
struct GpuScoreModCode {
  std::string fields;
  std::string init;
  std::string begin_tile;  // per key tile: where this tile's staged inputs are
  std::string apply;
  std::string grad_scale;  // backward: d(modified score) / d(raw score)
  std::string methods;     // further member functions, appended as written
};
GpuScoreModCode gpu_score_mod_code(const KernelSpec& spec);
/// The emitted `struct ScoreMod { ... };` for these modifiers (with grad_scale() for backward).
std::string gpu_score_mod_struct(const GpuScoreModCode& mod, bool with_grad = false);
/// No modifier: the kernel keeps raw scores and folds the scale into the exp2 FMA.
bool gpu_raw_scores(const KernelSpec& spec);
/// The extern "C" symbol of a GPU kernel; spells out the specialisation.
std::string gpu_kernel_name(const KernelSpec& spec, const TileConfig& cfg);
}  // namespace detail

}  // namespace jitattn
