// The CLI's subcommands. main.cpp declares the flags (CLI11) and maps exceptions to exit codes;
// each run_* here does the work and returns the process exit code:
//   0 ok / pass, 1 failed check or compile error, 2 bad argument or no usable device.
// Errors are thrown as jitattn exceptions, never printed here, so the exit codes live in one place.
#pragma once

#include <string>

#include "cli/problem_flags.h"
#include "runtime/harness.h"
#include "runtime/problem.h"

namespace jitattn::cli {

/// Exit code for a bad argument or a machine without a usable GPU.
inline constexpr int kExitUsage = 2;

struct InfoOptions {
  bool json = false;
};

struct GenOptions {
  ProblemFlags problem;
  std::string arch = "sm_90";
  bool backward = false;       ///< the backward kernel's module instead of the forward's
  bool deterministic = false;  ///< backward: deterministic mode
};

struct CompileOptions {
  ProblemFlags problem;
  std::string arch = "sm_90";
  bool json = false;
  bool backward = false;
  bool deterministic = false;
};

struct CheckOptions {
  ProblemFlags problem;
  bool json = false;
  bool backward = false;       ///< forward with LSE, then every gradient vs the reference
  bool deterministic = false;  ///< backward's deterministic mode
};

struct BenchOptions {
  ProblemFlags problem;
  bool json = false;
  double budget_ms = 300.0;
  int reps = 0;                ///< timed repetitions; 0: as many as budget_ms allows
  bool backward = false;       ///< time backward alone (FLOPs 2.5x forward)
  bool fwd_bwd = false;        ///< time forward + backward (FLOPs 3.5x forward)
  bool deterministic = false;  ///< backward's deterministic mode
  /// --grid: the cross product hdims x seqlens x masks on peers.py's conventions
  /// (tokens default 16384, width 2048; heads = width / head_dim, batch = tokens / seqlen).
  bool grid = false;
  std::string hdims = "64,128,256";
  std::string seqlens = "1024,4096,16384";
  std::string masks = "none,causal,alibi,window";
  int window_size = 512;
};

/// Version, NVRTC, driver and every device. Exit 2 when there is no usable driver or device.
int run_info(const InfoOptions& options);
/// Prints the generated CUDA source; needs no GPU.
int run_gen(const GenOptions& options);
/// Generates and compiles to a cubin with NVRTC, printing the ptxas report; needs no GPU.
int run_compile(const CompileOptions& options);
/// Runs the problem once against the float64 reference; exit 1 when it fails the tolerance.
int run_check(const CheckOptions& options);
/// Times the problem (or the --grid of problems).
int run_bench(const BenchOptions& options);

/// The validated Problem of `desc` built on fake aligned pointers (no device needed): the same
/// validation and error messages as a real call. Used by gen, compile and tune.
Problem problem_without_device(const harness::ProblemDesc& desc);

/// `wanted` resolved (auto: a GPU when present, else the CPU) and checked to exist: NoDevice
/// without a driver or device, Unsupported for the CPU in a build without LLVM.
Device require_device(Device wanted);

}  // namespace jitattn::cli
