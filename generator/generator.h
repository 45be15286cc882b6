// Source generation: KernelSpec + TileConfig -> CUDA source text for NVRTC. Deterministic: equal
// inputs give byte-identical output.
#pragma once

#include <string>

#include "generator/kernel_spec.h"

namespace jitattn {

/// Bumped whenever emitted code changes meaning; part of every cache key.
inline constexpr int kGeneratorVersion = 2;  // 2: dropout params, backward kernels

struct KernelSource {
  /// extern "C" kernel symbol, spells out the specialisation. Backward: the dK/dV kernel; the
  /// others of the same module are backward_kernel_name(name, ...).
  std::string name;
  std::string source;  ///< full translation unit, no #include of host headers
  int threads = 128;
  int shared_bytes = 0;  ///< dynamic shared memory to launch with
};

/// The kernels of a backward module besides the dK/dV kernel `name`.
enum class BackwardKernel { preprocess, dq, convert, dbias };
std::string backward_kernel_name(const std::string& name, BackwardKernel which);

/// Generates the kernel. Throws InvalidArgument if why_illegal(spec, cfg, limits) says so.
KernelSource generate(const KernelSpec& spec, const TileConfig& cfg, const DeviceLimits& limits);

/// Hash of the embedded template text (FNV-1a), part of cache keys.
uint64_t template_hash();

}  // namespace jitattn
