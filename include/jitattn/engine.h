// The runtime API: validate a problem, pick and (on first use) compile its specialised kernel,
// launch it on the caller's stream.
#pragma once

#include <memory>
#include <string>

#include "jitattn/attention.h"

namespace jitattn {

/// Per-call choices that do not change the result.
struct ForwardOptions {
  /// Tile config in its text form, e.g. "bm128_bn64_w8_s2" (suffix "_qr": Q kept in registers).
  /// Empty: the heuristic default for the spec and device.
  std::string config;
};

/// What ran: the kernel, its specialisation and its compile report.
struct KernelReport {
  std::string name;    ///< kernel symbol, spells out the specialisation
  std::string spec;    ///< canonical KernelSpec text
  std::string config;  ///< canonical TileConfig text
  int sm = 0;          ///< architecture compiled for
  int device = -1;     ///< CUDA device ordinal it ran on
  int registers = -1;
  int spill_bytes = 0;   ///< spill stores + loads reported by ptxas
  int shared_bytes = 0;  ///< dynamic shared memory per CTA
  double compile_ms = 0.0;
  bool compiled_now = false;  ///< false when the kernel was already loaded in this process
};

/// Owns the compiled kernels of every device it has run on. Thread-safe: one Engine may be used
/// from many threads and for several GPUs at once.
class Engine {
 public:
  Engine();
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// Runs forward attention on the device that owns args.q, on args.stream (asynchronous, like a
  /// CUDA launch). Throws InvalidArgument for bad input (nothing launched), NoDevice without a
  /// driver, CompileError with the NVRTC log, CudaError with the CUresult text.
  KernelReport forward(const AttentionArgs& args, const ForwardOptions& options = {});

  /// The process-wide engine used by jitattn::forward().
  static Engine& global();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// forward() on the process-wide engine.
inline KernelReport forward(const AttentionArgs& args, const ForwardOptions& options = {}) {
  return Engine::global().forward(args, options);
}

}  // namespace jitattn
