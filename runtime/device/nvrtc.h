// Device layer: NVRTC, kernel source -> cubin. Needs no GPU and no driver, so CI compiles every
// generated variant on machines without one and checks the ptxas report (registers, spills).
#pragma once

#include <string>
#include <vector>

namespace jitattn::device {

/// A compiled kernel and what ptxas reported for it.
struct CompileResult {
  /// The name to pass to Module::function: the lowered (mangled) name of the requested kernel,
  /// equal to the requested name for an extern "C" kernel.
  std::string kernel_name;
  std::vector<char> cubin;  ///< an ELF image for exactly the requested sm_XX / sm_XXa
  std::string log;          ///< the full NVRTC program log, ptxas info included
  std::string options;      ///< the options used, space-joined (part of the binary cache key)
  int registers = -1;       ///< -1 when the log had no report for the kernel
  int spill_store_bytes = 0;
  int spill_load_bytes = 0;
  int stack_frame_bytes = 0;
  int static_shared_bytes = 0;
  /// ptxas serialised the kernel's wgmma instructions (each waits for the previous to finish):
  /// a Hopper kernel's tensor cores then run a fraction of their rate. Its reason in `wgmma_note`.
  bool wgmma_serialized = false;
  std::string wgmma_note;
  double compile_ms = 0;
};

/// Compiles `source` with NVRTC straight to a cubin for sm_`sm` (sm_`sm`a when `arch_specific`,
/// needed for wgmma / setmaxnreg on sm_90). `kernel_name` is a C++ name expression for the
/// kernel (e.g. "attn_fwd_bf16_d128" or "ns::kernel<64>"); compilation fails if it names nothing.
/// Throws jitattn::CompileError carrying the log and options. Thread-safe: no shared state.
CompileResult compile_to_cubin(const std::string& source, const std::string& kernel_name, int sm,
                               bool arch_specific = false,
                               const std::vector<std::string>& extra_options = {});

/// The NVRTC options compile_to_cubin uses for these arguments (part of binary cache keys).
std::vector<std::string> compile_options(int sm, bool arch_specific = false,
                                         const std::vector<std::string>& extra_options = {});

/// NVRTC's "major.minor", e.g. "13.0".
std::string nvrtc_version();

/// The sm_XX numbers this NVRTC can target, e.g. {75, 80, ..., 121}.
std::vector<int> nvrtc_supported_archs();

/// Parses ptxas' report for `lowered_name` out of an NVRTC log into `result`'s register, spill,
/// stack and shared-memory fields, and its wgmma serialisation warning. Returns false when the
/// log has no report for that kernel.
bool parse_ptxas_info(const std::string& log, const std::string& lowered_name,
                      CompileResult& result);

}  // namespace jitattn::device
