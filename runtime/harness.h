// Builds a random attention problem on a device (a CUDA GPU, or host memory for the CPU backend),
// runs it, and judges it against the float64 reference. Shared by `jitattn check`, `jitattn
// bench`, the tuner and the tests, so all of them exercise exactly the same setup.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <cstddef>

#include "jitattn/attention.h"
#include "jitattn/engine.h"

namespace jitattn::harness {

/// A problem described by sizes and features (what the CLI's problem flags set).
struct ProblemDesc {
  DType dtype = DType::bf16;
  int batch = 2;
  int heads_q = 8;
  int heads_kv = 8;
  int seqlen_q = 512;
  int seqlen_k = 512;
  int head_dim = 128;
  int head_dim_v = 0;  ///< 0: same as head_dim
  MaskKind mask = MaskKind::none;
  std::optional<Window> window;
  bool alibi = false;
  /// "none" or 4 characters over [b|1][h|1][q|1][k|1], e.g. "bhqk", "1hqk", "b11k".
  std::string bias = "none";
  float softcap = 0.0f;
  std::optional<float> scale;
  VarlenKind varlen = VarlenKind::none;  ///< packed/padded: random per-batch lengths <= seqlen
  bool lse = false;
  float dropout_p = 0.0f;  ///< dropout seed and offset are drawn from `seed`
  bool dbias = false;      ///< backward also computes the bias gradient
  uint64_t seed = 0;  ///< 0: fresh random seed (reported back)
  /// Physical order of q/k/v/o's logical dims [batch, seq, heads, dim]; {0,2,1,3} = BHSD.
  std::array<int, 4> layout = {0, 1, 2, 3};
  /// Where to run: auto (CUDA device 0 when a GPU is present, else the CPU), cpu or cuda:N.
  Device device;

  int dv() const { return head_dim_v > 0 ? head_dim_v : head_dim; }
};

/// Parses "none", "causal", "causal-bottom-right"; throws InvalidArgument("mask").
MaskKind parse_mask(const std::string& s);
/// Parses "none", "packed", "padded" (also "1"/"on" = packed); throws InvalidArgument("varlen").
VarlenKind parse_varlen(const std::string& s);
/// `device` with automatic resolved: cuda:0 when a CUDA device is present, else cpu.
Device resolve_device(Device device);
/// One-line description, e.g. "bf16 b2 hq8 hkv8 sq512 sk512 d128 dv128 causal lse".
std::string describe(const ProblemDesc& d);

struct CheckResult {
  double rel_err = 0;      ///< ||o - ref|| / ||ref|| over every written row
  double max_abs_err = 0;
  double lse_rel_err = 0;  ///< over finite reference LSE values; 0 when no LSE
  bool lse_inf_match = true;  ///< -inf exactly where the reference has -inf
  double tolerance = 0;    ///< fp16 2e-3, bf16 1e-2 relative norm
  bool pass = false;
  uint64_t seed = 0;
  KernelReport kernel;
};

/// Runs `desc` once on its device with fresh random inputs (outputs poisoned with NaN first)
/// and compares with reference::forward. `options.config` selects a tile config.
CheckResult check(Engine& engine, const ProblemDesc& desc, const ForwardOptions& options = {});

struct BenchResult {
  double median_ms = 0, p20_ms = 0, p80_ms = 0;
  int samples = 0;
  double flops = 0;   ///< counted as ../shared/bench/README.md: 4*b*h*sq*sk*d, halved if causal
  double tflops = 0;  ///< flops / median
  KernelReport kernel;
};

/// Times `desc` (no reference): warm-up, then timed repetitions for about `budget_ms`, or exactly
/// `reps` of them when positive (peers.py's protocol: 20, however long they take); median and
/// p20/p80. GPU: CUDA events, each repetition after an L2 flush. CPU: a steady clock around each
/// (synchronous) call.
BenchResult bench(Engine& engine, const ProblemDesc& desc, const ForwardOptions& options = {},
                  double budget_ms = 300.0, int reps = 0);

struct BackwardCheckResult {
  /// Relative norms vs float64; dbias_err of a key-broadcast bias (zero gradient): the absolute
  /// error per sqrt of the score gradients each entry sums.
  double dq_err = 0, dk_err = 0, dv_err = 0, dbias_err = 0;
  /// fp16 5e-3, bf16 2e-2 relative norm (dS and P are 16-bit in the GPU's MMAs), f32 (CPU) 1e-5
  double tolerance = 0;
  bool pass = false;     ///< every gradient and the forward within tolerance
  uint64_t seed = 0;
  CheckResult forward;   ///< the forward (with LSE) whose outputs backward read
  KernelReport kernel;   ///< the backward's
};

/// Forward FLOPs of the peers' convention (useful work only for causal / window masks).
double forward_flops(const ProblemDesc& desc);

/// One problem built once on its device: inputs uploaded once, the float64 reference computed
/// on the first check and reused, so many configs can be verified and timed on the same data
/// (the tuner's measurement path; `jitattn bench` uses the same code).
class Runner {
 public:
  explicit Runner(const ProblemDesc& desc);
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  CheckResult check(Engine& engine, const ForwardOptions& options = {});
  /// One forward call, asynchronous (no synchronisation, no reference): for timing whole runs.
  KernelReport run(Engine& engine, const ForwardOptions& options = {});
  BenchResult bench(Engine& engine, const ForwardOptions& options = {}, double budget_ms = 300.0, int reps = 0);

  /// Forward (with LSE, judged as check() does) then backward on fresh random dO, gradients
  /// poisoned first and compared with reference::backward. Needs desc.lse.
  BackwardCheckResult check_backward(Engine& engine, const BackwardOptions& options = {},
                                     const ForwardOptions& forward_options = {});
  /// The gradients of the last check_backward() / run_backward(), as raw bytes of dq, dk, dv
  /// (for bitwise comparisons across runs).
  std::vector<std::byte> gradient_bytes() const;
  /// The forward's o and lse as raw bytes, after the last run.
  std::vector<std::byte> output_bytes() const;
  /// Times backward alone (`with_forward` false; FLOPs 2.5x forward) or forward + backward
  /// (3.5x), as bench() does.
  BenchResult bench_backward(Engine& engine, bool with_forward, const BackwardOptions& options = {},
                             double budget_ms = 300.0, int reps = 0);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace jitattn::harness
