// What the engine, the tuner and the CLI need to know about where kernels run: the target a spec
// is generated for, the limits a config must fit, the tuning cache's device key, provenance, and
// the binary cache key of a compiled source. One place, for CUDA devices and the host CPU alike.
#pragma once

#include <string>

#include "cache/store.h"
#include "generator/kernel_spec.h"

namespace jitattn {

struct BackendInfo {
  Target target;         ///< sm_XX, or cpu
  DeviceLimits limits;   ///< what a config must fit
  cache::DeviceKey key;  ///< tuning rows' device: "sm_90" / SMs / L2, or the host CPU's arch key
  int ordinal = -1;      ///< CUDA device ordinal; -1 for the CPU
  // Provenance of measurements (never part of a key).
  std::string name;      ///< "NVIDIA H200" / "x86-64 (16 threads)"
  int driver_version = 0;
  int clock_mhz = 0;

  bool cpu() const { return target.cpu; }
};

/// CUDA device `ordinal` (needs the driver).
BackendInfo cuda_backend(int ordinal);
/// The host CPU (throws Unsupported when this build has no LLVM).
BackendInfo cpu_backend();

/// The binary cache key of `source` compiled for `backend`: sha256 of the source, the normalised
/// compile options, the compiler version (NVRTC's, or "llvm-X.Y.Z") and the target ("sm_90", or
/// the host CPU's arch key, which covers its feature set); `arch_specific` (the Hopper family's
/// sm_90a binaries) changes both the options and the target ("sm_90a").
cache::BinaryKey binary_key(const std::string& source, const BackendInfo& backend, bool arch_specific = false);

/// "NVRTC" or "clang": what compiles kernels for `backend`.
const char* compiler_name(const BackendInfo& backend);

}  // namespace jitattn
