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

/// Per-call choices of backward().
struct BackwardOptions {
  /// Tile config text, e.g. "bm64_bn64_w4_s2_x2" (see TileConfig); empty: the default.
  std::string config;
  /// false: dQ is summed with fp32 atomics (fastest; the summation order, hence the last bits,
  /// may differ between runs). true: dq, dk and dv are bitwise reproducible: the mma.sync family
  /// sums dQ in registers by its own kernel, the Hopper family (sm_90) adds the key blocks'
  /// shares in one fixed order. (dk/dv are reproducible in both modes; a dbias summed over
  /// broadcast dimensions uses atomics in both.) The CPU backend has no atomics: its gradients,
  /// dbias included, are bitwise reproducible whatever this says.
  bool deterministic = false;
  /// Device memory (host memory on the CPU backend) of at least backward_workspace_bytes() for
  /// the fp32 accumulators. Null: the engine allocates it and synchronises the stream before
  /// returning.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

/// When the engine tunes: never during a call (use what `jitattn tune` stored), or the first
/// time a (spec, shape bucket) without tuned rows is seen.
enum class TunePolicy { off, on_first_use };

/// Engine-wide settings.
struct EngineOptions {
  /// SQLite cache of tuned configs and compiled binaries. Empty: $JITATTN_CACHE, else
  /// $XDG_CACHE_HOME/jitattn/cache.db (~/.cache/jitattn/cache.db). "off" (or JITATTN_CACHE=off):
  /// no cache. A cache that cannot be opened is reported once on stderr and then not used.
  std::string cache_path;
  /// Log shapes that have no tuned config to the cache, for `jitattn tune --pending` later
  /// (PyTorch TunableOp's record-untuned mode). Also set by JITATTN_RECORD_UNTUNED=1.
  bool record_untuned = false;
  /// off (default) or on_first_use; JITATTN_TUNE=on-first-use selects it too. On-first-use
  /// tuning (GPU and CPU alike) runs the candidates on the caller's own buffers (each verified against the default
  /// kernel's output on the same inputs), stores every measurement in the cache and then uses the
  /// winner; the call that tunes takes about tune_budget_seconds longer. Forward calls only:
  /// backward() uses configs stored by `jitattn tune --backward`, else its default.
  TunePolicy tune = TunePolicy::off;
  double tune_budget_seconds = 10.0;
};

/// What ran: the kernel, its specialisation and its compile report.
struct KernelReport {
  std::string name;    ///< kernel symbol, spells out the specialisation
  std::string spec;    ///< canonical KernelSpec text
  std::string config;  ///< canonical TileConfig text
  std::string backend;  ///< "cuda" or "cpu"
  std::string target;   ///< "sm_90", or the host CPU's arch key ("cpu-znver4-1a2b3c4d")
  int sm = 0;          ///< architecture compiled for (0 on the CPU)
  int device = -1;     ///< CUDA device ordinal it ran on (-1 on the CPU)
  int registers = -1;    ///< -1 on the CPU
  int spill_bytes = 0;   ///< spill stores + loads reported by ptxas
  int shared_bytes = 0;  ///< dynamic shared memory per CTA
  double compile_ms = 0.0;
  bool compiled_now = false;  ///< false when the kernel was already loaded in this process
  bool binary_from_cache = false;  ///< the cubin / object came from the cache file (no compile)
  /// Where the config came from: "forced" (ForwardOptions::config), "exact" / "nearest" (tuned
  /// rows in the cache for this device and spec), or "default" (the generator's heuristic).
  std::string config_source;
  std::string config_reason;  ///< why, e.g. the cache's lookup explanation
};

/// Owns the compiled kernels of every device it has run on. Thread-safe: one Engine may be used
/// from many threads and for several GPUs at once.
class Engine {
 public:
  explicit Engine(EngineOptions options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// Runs forward attention where args.device says: by default on the CUDA device that owns
  /// args.q, on args.stream (asynchronous, like a CUDA launch), or on the CPU backend when q is
  /// host memory (synchronous, on all cores). Throws InvalidArgument for bad input (nothing
  /// launched), NoDevice without a driver, Unsupported for the CPU in a build without LLVM,
  /// CompileError with the NVRTC / clang log, CudaError with the CUresult text.
  KernelReport forward(const AttentionArgs& args, const ForwardOptions& options = {});

  /// Gradients of forward attention: reads args.q/k/v, args.o (the forward's output), args.lse
  /// (required: the forward's log-sum-exp) and grads.d_o; writes grads.dq, dk, dv and, when
  /// given, dbias. Same problem arguments as forward() (masks, window, varlen, GQA, bias, ALiBi,
  /// softcap, scale, dropout with the forward's seed and offset). Extra device memory is
  /// O(batch * heads * seqlen) (plus an fp32 copy of dbias when asked for). Runs where forward()
  /// would (the CPU backend for host memory, synchronously). Throws InvalidArgument for bad input
  /// (nothing launched).
  KernelReport backward(const AttentionArgs& args, const BackwardArgs& grads,
                        const BackwardOptions& options = {});

  /// Bytes of workspace backward() needs for this call (validates the arguments).
  static size_t backward_workspace_bytes(const AttentionArgs& args, const BackwardArgs& grads,
                                         const BackwardOptions& options = {});

  /// The process-wide engine used by jitattn::forward().
  static Engine& global();

  /// Kernel compiles (NVRTC or clang) this engine has run (a warm cache gives 0).
  int compile_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// forward() on the process-wide engine.
inline KernelReport forward(const AttentionArgs& args, const ForwardOptions& options = {}) {
  return Engine::global().forward(args, options);
}

/// backward() on the process-wide engine.
inline KernelReport backward(const AttentionArgs& args, const BackwardArgs& grads,
                             const BackwardOptions& options = {}) {
  return Engine::global().backward(args, grads, options);
}

/// forward() that saves what backward() needs: the log-sum-exp into `lse` (fp32, [batch,
/// heads_q, seqlen_q], [heads_q, total_q] when packed). Returns the args to pass to backward().
inline AttentionArgs forward_for_backward(const AttentionArgs& args, float* lse,
                                          const ForwardOptions& options = {}) {
  AttentionArgs a = args;
  a.lse = lse;
  Engine::global().forward(a, options);
  return a;
}

}  // namespace jitattn
