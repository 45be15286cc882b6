// The problem flags shared by `gen`, `compile`, `check` and `bench`: what they are, their
// defaults, and how they become a harness::ProblemDesc (and back into flags, for reports).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "runtime/harness.h"

namespace CLI {
class App;
}  // namespace CLI

namespace jitattn::cli {

/// Raw flag values as CLI11 parsed them. Sizes of 0 (and empty strings) mean "not given": the
/// defaults that depend on other flags (heads_kv = heads_q, ...) are applied by problem_desc().
struct ProblemFlags {
  std::string dtype = "bf16";
  int batch = 2;
  int heads_q = 8;
  int heads_kv = 0;    ///< 0: heads_q
  int seqlen_q = 512;
  int seqlen_k = 0;    ///< 0: seqlen_q
  int head_dim = 128;
  int head_dim_v = 0;  ///< 0: head_dim
  std::string mask = "none";
  std::string window;  ///< "L,R" (-1 = unbounded on that side); empty = no window
  bool alibi = false;
  std::string bias = "none";
  float softcap = 0.0f;
  std::optional<float> scale;  ///< nullopt: 1/sqrt(head_dim)
  std::string varlen = "none";
  bool lse = false;
  float dropout = 0.0f;  ///< dropout probability (forward and backward)
  bool dbias = false;    ///< backward: also the bias gradient
  uint64_t seed = 0;
  std::string layout = "bshd";
  std::string config;  ///< tile config text; empty = the default for the spec
  std::string device = "auto";  ///< auto, cpu, cuda, cuda:N (or N)
  int tokens = 0;  ///< > 0: batch = max(1, tokens / seqlen_q)   (peers.py's grid convention)
  int width = 0;   ///< > 0: heads = max(1, width / head_dim)
};

/// Adds the problem flags to `app`, storing into `*flags` (which must outlive parsing).
void add_problem_flags(CLI::App* app, ProblemFlags* flags);

/// Resolves the flags into a problem. Throws jitattn::InvalidArgument naming the flag
/// (e.g. "bias", "window") when a value is malformed.
harness::ProblemDesc problem_desc(const ProblemFlags& flags);

/// Why `pattern` is not a bias pattern ("none" or 4 chars over [b|1][h|1][q|1][k|1]); empty if ok.
std::string bias_pattern_error(const std::string& pattern);

/// The flags that reproduce `desc` (sizes always spelled out), e.g.
/// "--dtype bf16 --batch 2 ... --mask causal --lse". Used in reports so a row can be rerun.
std::string to_flags(const harness::ProblemDesc& desc);

/// "bf16" / "fp16": the names peers.py and the flags use.
std::string dtype_flag(DType t);
std::string mask_flag(MaskKind m);
std::string varlen_flag(VarlenKind v);

}  // namespace jitattn::cli
