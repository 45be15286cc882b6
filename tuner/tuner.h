// Autotuner core: the search space of a spec on a device (with the reason for every pruned
// candidate), shape buckets, parallel compilation, and search strategies over a measurement
// interface. Uses the generator and the device layer's NVRTC wrapper; never the engine, so the
// engine can call the tuner (on-first-use tuning) without a loop. Measures nothing itself: the
// caller supplies a Measurer (the GPU one lives with the CLI's bench; tests use a test double).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "generator/kernel_spec.h"
#include "runtime/problem.h"

namespace jitattn::tuner {

/// One point of the search space and, if it will not be measured, why.
struct Candidate {
  TileConfig config;
  std::optional<std::string> pruned;  ///< why_illegal's reason, the static model's, or ptxas'
  int registers = -1;                 ///< from the compile (ptxas), -1 before
  int spill_bytes = 0;
  double compile_ms = 0;
  std::vector<char> cubin;            ///< filled by compile_all for unpruned candidates (CPU: object code)
  std::string kernel_name;
  std::string source;                 ///< the generated source compile_all compiled
};

/// Every TileConfig the generator could take for `spec` (block_m {32,64,128} x block_n
/// {16,32,64,128} x warps {2,4,8} x stages {1,2,3,4} x q_in_regs), in a deterministic order, each
/// pruned with a reason when why_illegal refuses it or the static register model says it cannot
/// fit (O and S accumulators alone over the 255-register budget). Backward specs: block_m
/// {16,32,64,128} x warps {2,4,8} (block_n = 16 per warp) x stages {1,2} x split {1,2,4}. CPU
/// specs: block_m {4,...,128} x block_n {16,...,512}, pruned by why_illegal (menu, stack budget).
std::vector<Candidate> search_space(const KernelSpec& spec, const DeviceLimits& limits);

/// Compiles the unpruned candidates in parallel (`threads` 0 = hardware concurrency) with NVRTC,
/// or in-process clang for CPU specs, and prunes those that fail to compile or (GPU) spill
/// (reason names the bytes). Both compilers are thread-safe.
void compile_all(const KernelSpec& spec, const DeviceLimits& limits, std::vector<Candidate>& cands,
                 int threads = 0);

/// Shape bucket of a problem: power-of-two ceilings of seqlen_q, seqlen_k and batch*heads_q, as
/// "sq=4096,sk=4096,bh=64" (one tuning serves the shapes that round to the same bucket).
std::string shape_bucket(const Problem& problem);

/// What one measurement of one config gave.
struct Measurement {
  bool ok = false;  ///< false: failed verification or launch (error says why); never chosen
  double median_ms = 0, p20_ms = 0, p80_ms = 0;
  int samples = 0;
  std::string error;
};

/// Measures configs of one problem; the GPU implementation verifies against the reference first.
class Measurer {
 public:
  virtual ~Measurer() = default;
  /// Measures `config` for about `budget_ms` of timed work.
  virtual Measurement measure(const Candidate& candidate, double budget_ms) = 0;
};

/// Progress of long work: called after each step; the default sink draws a bar on stderr when
/// it is a terminal and prints plain lines otherwise.
struct Progress {
  int compiled = 0, verified = 0, measured = 0, total = 0;
  std::string best_config;
  double best_ms = 0;
};
using ProgressSink = std::function<void(const Progress&)>;
ProgressSink stderr_progress();

struct TuneOptions {
  double budget_seconds = 30;  ///< whole-spec budget (measurement time)
  int exhaustive_limit = 24;   ///< candidates up to this many: measure all; above: successive halving
  int final_top = 3;           ///< re-measured interleaved before choosing
  ProgressSink progress;       ///< may be empty
  /// Called as each measurement completes (so a caller can commit it at once).
  std::function<void(const Candidate&, const Measurement&)> on_measured;
};

struct TuneOutcome {
  std::vector<std::pair<TileConfig, Measurement>> measured;  ///< every measurement, in order
  std::optional<TileConfig> best;  ///< fastest ok config after the interleaved re-measure
  std::string strategy;            ///< "exhaustive" or "successive-halving"
};

/// Runs the strategy over the unpruned candidates.
TuneOutcome tune(const std::vector<Candidate>& candidates, Measurer& measurer,
                 const TuneOptions& options);

}  // namespace jitattn::tuner
